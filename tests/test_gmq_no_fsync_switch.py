"""GWE_GMQ_BENCH_NO_FSYNC: the ingest bench's fsync-off gmq, refused under supervisord and loud elsewhere."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gmq.queue import DurableQueue
from gmq.server import BENCH_NO_FSYNC_ENV
from gmq_harness import GmqProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("fsync, level, pragma", [(True, "FULL", 2), (False, "OFF", 0)])
def test_the_queue_fsyncs_its_commits_unless_told_not_to(tmp_path, fsync, level, pragma):
    queue = DurableQueue(str(tmp_path / "gmq.db"), fsync=fsync)
    try:
        assert queue._conn.execute("PRAGMA synchronous").fetchone()[0] == pragma
        assert queue.stats()["synchronous"] == level
    finally:
        queue.close()


def test_gmq_is_durable_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(BENCH_NO_FSYNC_ENV, raising=False)
    gmq = GmqProcess(tmp_path).start()
    try:
        assert gmq.status()["queue"]["synchronous"] == "FULL"
    finally:
        gmq.stop()
    assert "WITHOUT FSYNC" not in gmq.log_text()


def test_outside_supervisord_it_runs_without_fsync_and_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("SUPERVISOR_ENABLED", raising=False)
    monkeypatch.setenv(BENCH_NO_FSYNC_ENV, "1")
    gmq = GmqProcess(tmp_path).start()
    try:
        assert gmq.status()["queue"]["synchronous"] == "OFF"
        assert gmq.post("/onep:v1/stack/alias", "temp=42").status_code == 204
        assert [(alias, value) for _, alias, _, value in gmq.queued()] == [("temp", "42")]
    finally:
        gmq.stop()
    warnings = [line for line in gmq.log_text().splitlines() if "WITHOUT FSYNC" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "power cut" in warnings[0]


@pytest.mark.parametrize("env, says", [
    ({BENCH_NO_FSYNC_ENV: "1", "SUPERVISOR_ENABLED": "1"}, "refused under supervisord"),
    ({BENCH_NO_FSYNC_ENV: "yes"}, "bench/gmq_ceiling_bench.py only"),
])
def test_refused_under_supervisord_or_with_another_value(tmp_path, env, says):
    gmq = GmqProcess(tmp_path)  # writes gmq.cfg
    full = dict(os.environ, GWE_HOME=str(tmp_path), **env)
    if "SUPERVISOR_ENABLED" not in env:
        full.pop("SUPERVISOR_ENABLED", None)
    done = subprocess.run([sys.executable, "-m", "gmq", "serve"], env=full, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gmq: %s=" % BENCH_NO_FSYNC_ENV) and says in lines[0]
    assert not os.path.exists(gmq.paths.gmq_db)  # refused before the queue was opened


def test_no_product_path_sets_the_variable():
    """Only the bench sets it: outside bench/ and docs/ it is named by gmq/server.py (which reads it) and here."""
    named = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        for name in files:
            path = os.path.join(top, name)
            with open(path, "rb") as f:
                if BENCH_NO_FSYNC_ENV.encode() in f.read():
                    named.append(os.path.relpath(path, ROOT))
    assert os.path.join("bench", "gmq_ceiling_bench.py") in named
    allowed = {os.path.join("gmq", "server.py"), os.path.join("tests", os.path.basename(__file__))}
    assert [p for p in named if p not in allowed and not p.startswith(("bench" + os.sep, "docs" + os.sep))] == []
