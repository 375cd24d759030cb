import configparser
import multiprocessing
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import pytest
from config_rewriter import expected_payload

from atomic_config import (
    AtomicConfigParser,
    RecoveryError,
    atomic_write,
    edit_config,
    previous_path,
    read_config,
    read_recovering,
    set_option,
)


def _temps(directory):
    return [n for n in os.listdir(directory) if ".atomic-" in n]


@pytest.mark.slow
def test_sigkill_during_rewrites_leaves_a_written_version(tmp_path):
    path = tmp_path / "Gateway.cfg"
    seen, start = 0, 1
    cfg = AtomicConfigParser()
    cfg["device"] = {"generation": "0", "payload": expected_payload(0)}
    cfg.write(str(path))
    rng = random.Random(1234)
    kills = advanced = 0
    # writers forked from one process that has imported atomic_config (tests/config_rewriter.py)
    forker = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "config_rewriter.py"),
                               str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(line):
        forker.stdin.write(line + "\n")
        forker.stdin.flush()
        return forker.stdout.readline().split()

    # 200 kills, at least 100 of them after a rewrite got through (on a loaded machine a writer
    # killed early may not have written yet: kill on, up to a bound, rather than count on speed)
    pid = None
    try:
        while kills < 200 or (advanced < 100 and kills < 1000):
            word, pid = ask("start %d" % start)
            assert word == "ready"
            time.sleep(rng.uniform(0.0, 0.03))
            os.kill(int(pid), signal.SIGKILL)
            assert ask("reap " + pid) == ["reaped", pid, str(signal.SIGKILL)]
            pid = None
            kills += 1
            parsed = configparser.RawConfigParser()
            parsed.read_string(path.read_text())
            got = int(parsed.get("device", "generation"))
            assert got == seen or got >= start  # the old version, or one this writer wrote
            advanced += got != seen
            assert parsed.get("device", "payload") == expected_payload(got)
            assert len(_temps(tmp_path)) <= 1, _temps(tmp_path)
            seen, start = got, max(got, start) + 1000000  # so each writer's versions are distinguishable
    finally:
        if pid is not None:  # a writer still running when an assertion failed
            os.kill(int(pid), signal.SIGKILL)
        forker.kill()
        forker.wait()
    assert advanced >= 100  # the writers really were rewriting when killed
    # the next write (by a live process) clears what the last killed writer left
    set_option(path, "device", "done", "yes")
    assert _temps(tmp_path) == []


def _setter(path, worker, count):
    for i in range(count):
        set_option(path, "w%d" % worker, "opt%d" % i, "v%d-%d" % (worker, i))


def test_concurrent_set_option_loses_no_update(tmp_path):
    path = str(tmp_path / "gmq.cfg")
    workers, count = 6, 40
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_setter, args=(path, w, count)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cfg = read_config(path)
    for w in range(workers):
        for i in range(count):
            assert cfg.get("w%d" % w, "opt%d" % i) == "v%d-%d" % (w, i)


def test_truncated_config_is_recovered_from_previous_generation(tmp_path, caplog):
    path = tmp_path / "Gateway.cfg"
    set_option(path, "device", "cik", "a" * 40)
    set_option(path, "device", "uuid", "00:11:22:33:44:55")
    path.write_bytes(b"")  # what a power cut on jffs2/ubifs can leave
    cfg = read_config(path)
    assert cfg.get("device", "cik") == "a" * 40  # the generation before the last write
    assert "recovered" in caplog.text
    assert "cik" in path.read_text()  # the recovered content is put back on disk


def test_garbage_config_is_recovered(tmp_path):
    path = tmp_path / "x.cfg"
    set_option(path, "s", "k", "1")
    set_option(path, "s", "k", "2")
    path.write_bytes(b"\x00\x00\x00garbage without section\n")
    assert read_config(path).get("s", "k") == "1"


def test_damaged_without_previous_generation_raises(tmp_path):
    path = tmp_path / "x.cfg"
    path.write_bytes(b"")
    with pytest.raises(RecoveryError):
        read_config(path)


def test_damaged_file_does_not_evict_good_previous_generation(tmp_path):
    path = tmp_path / "x.cfg"
    set_option(path, "s", "k", "1")
    set_option(path, "s", "k", "2")
    path.write_bytes(b"")
    cfg = AtomicConfigParser()
    cfg["s"] = {"k": "3"}
    cfg.write(str(path))  # overwrites the empty file; .prev must still be generation "1"
    assert "k = 1" in open(previous_path(path)).read()


def test_write_keeps_permissions_and_key_case(tmp_path):
    path = tmp_path / "token"
    atomic_write(path, "[device]\n", mode=0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    set_option(path, "device", "CamelKey", "x")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "CamelKey = x" in path.read_text()


def test_duplicate_keys_and_sections_last_wins(tmp_path):
    path = tmp_path / "supervisor.conf"
    path.write_text("[supervisord]\nenvironment = A=1\ncommand = x\nenvironment = B=2\n"
                    "[supervisord]\ncommand = y\n")
    cfg = read_config(path)
    assert cfg.get("supervisord", "environment") == "B=2"
    assert cfg.get("supervisord", "command") == "y"


def test_stale_temps_removed_from_config_directory_not_cwd(tmp_path, monkeypatch):
    confdir = tmp_path / "etc"
    confdir.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = confdir / (".a.cfg.atomic-%d.deadbeef.tmp" % dead.pid)
    stale.write_text("partial")
    (elsewhere / stale.name).write_text("not ours")
    set_option(confdir / "a.cfg", "s", "k", "v")
    assert not stale.exists()
    assert (elsewhere / stale.name).exists()


def test_live_writers_temp_is_not_removed(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        temp = tmp_path / (".a.cfg.atomic-%d.cafe.tmp" % live.pid)
        temp.write_text("in progress")
        set_option(tmp_path / "a.cfg", "s", "k", "v")
        assert temp.exists()
    finally:
        live.kill()
        live.wait()


def test_failed_edit_writes_nothing(tmp_path):
    path = tmp_path / "a.cfg"
    set_option(path, "s", "k", "v")
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with edit_config(path) as cfg:
            cfg.set("s", "k", "changed")
            raise RuntimeError("boom")
    assert path.read_bytes() == before


def test_atomic_write_bytes_and_read_recovering(tmp_path):
    path = tmp_path / "state.json"
    atomic_write(path, b'{"a": 1}')
    atomic_write(path, b'{"a": 2}')
    import json
    assert read_recovering(path, json.loads) == {"a": 2}
    path.write_bytes(b'{"a": ')
    assert read_recovering(path, json.loads) == {"a": 1}
    assert read_recovering(tmp_path / "missing.json", json.loads) is None


OPENER = """
import os, sys, time
from atomic_config import connect_sqlite
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):  # start together
    time.sleep(0.001)
conn = connect_sqlite(sys.argv[1], busy_timeout_ms=10000, schema=(
    "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, who TEXT)",
    "CREATE TABLE IF NOT EXISTS u (k TEXT PRIMARY KEY)"))
conn.execute("INSERT INTO t (who) VALUES (?)", (sys.argv[3],))
"""


def test_processes_opening_a_new_database_together_all_succeed(tmp_path):
    """Switching to WAL and creating the schema race between processes (sqlite answers the lock
    upgrade with SQLITE_BUSY at once, not after the busy timeout): every opener must still succeed."""
    for attempt in range(3):
        db, go = str(tmp_path / ("race%d.db" % attempt)), str(tmp_path / ("go%d" % attempt))
        procs = [subprocess.Popen([sys.executable, "-c", OPENER, db, go, str(i)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for i in range(8)]
        assert [p.stdout.readline() for p in procs] == [b"ready\n"] * 8
        open(go, "w").close()
        results = [(p.wait(60), p.stderr.read().decode()) for p in procs]
        for p in procs:
            p.stdout.close()
            p.stderr.close()
        assert [code for code, _ in results] == [0] * 8, results
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (8,)
        conn.close()
