"""Installing a version that is already installed: the same package is a no-op, different content is
refused with a status that says how to proceed, and a reinstall asked for (``gwe -I --force``, or
``"force": true`` in the engine_fetch entry) goes through the whole pipeline with rollback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest
from gwe_helpers import SERIAL, configure_gateway, start_gwe, upload, wait_fetch_status
from harness import stop_process, wait_for
from otau_helpers import app_files, write_tarball

import otau
from atomic_config import gwe_paths, set_option

APP = ("import os, time\nprint('content', open('CONTENT').read(), flush=True)\ntime.sleep(3600)\n")


def package(directory, content, version="1", command="%(ENV_GWE_PYTHON)s app.py"):
    os.makedirs(str(directory), exist_ok=True)
    files = app_files(version, command=command, extra={"app.py": APP, "CONTENT": content})
    return write_tarball(os.path.join(str(directory), "app.v%s.tar.gz" % version), files)


def gwe(*args, crash_at=None):
    env = dict(os.environ)
    env.pop("GWE_OTAU_CRASH_AT", None)
    if crash_at:
        env["GWE_OTAU_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "gwe", *args], env=env, capture_output=True, text=True, timeout=60)


def running(sup):
    """(pid, the directory it runs in, the CONTENT it runs) of the RUNNING app."""
    info = wait_for(lambda: (lambda i: i["statename"] == "RUNNING" and i)(sup.rpc().supervisor.getProcessInfo("app")),
                    15, message="app RUNNING")
    cwd = psutil.Process(info["pid"]).cwd()
    with open(os.path.join(cwd, "CONTENT")) as f:
        return info["pid"], os.path.basename(cwd), f.read()


def visible(directory):
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def fast(home):
    paths = gwe_paths(str(home))
    set_option(paths.engine_cfg, "otau", "settle_seconds", "0.3")
    return paths


def test_same_package_is_a_no_op_and_different_content_is_refused(supervisord, gwe_home, tmp_path):
    paths = fast(gwe_home)
    first = package(tmp_path / "a", "A")
    assert gwe("-I", first).returncode == 0
    pid, directory, content = running(supervisord)
    assert (directory, content) == ("1", "A")

    again = gwe("-I", first, "--json")
    status = json.loads(again.stdout)
    assert again.returncode == 0 and status["status"] == "installed", again
    assert "already installed from this very package" in status["output"]
    assert running(supervisord)[0] == pid  # not even restarted

    other = gwe("-I", package(tmp_path / "b", "B"), "--json")
    status = json.loads(other.stdout)
    assert other.returncode == 1 and status["status"] == "failed" and status["step"] == "package", other
    assert "different package" in status["error"] and "--force" in status["error"] \
        and '"force": true' in status["error"]
    assert running(supervisord) == (pid, "1", "A")
    assert visible(os.path.join(paths.apps, "app")) == ["1", "current", "state.json"]


@pytest.mark.slow
def test_forced_reinstall_runs_the_pipeline_and_rolls_back_a_bad_one(supervisord, gwe_home, tmp_path):
    paths = fast(gwe_home)
    assert gwe("-I", package(tmp_path / "a", "A")).returncode == 0
    pid_a = running(supervisord)[0]

    forced = gwe("-I", package(tmp_path / "b", "B"), "--force", "--json")
    status = json.loads(forced.stdout)
    assert forced.returncode == 0 and status["status"] == "installed", forced
    pid_b, directory, content = running(supervisord)
    assert (directory, content) == ("1~1", "B") and not psutil.pid_exists(pid_a)
    root = os.path.join(paths.apps, "app")
    assert visible(root) == ["1~1", "current", "state.json"]
    assert otau.installed_versions(paths) == {"app": "1"}

    bad = package(tmp_path / "c", "C", command="/bin/false")
    failed = gwe("-I", bad, "--force", "--json")
    status = json.loads(failed.stdout)
    assert status["status"] == "rolled_back" and status["running_version"] == "1", failed
    assert running(supervisord)[1:] == ("1~1", "B")
    assert visible(root) == ["1~1", "current", "state.json"]

    # a normal upgrade after reinstalls keeps the bookkeeping straight
    assert gwe("-I", package(tmp_path / "d", "D", version="2")).returncode == 0
    assert running(supervisord)[1:] == ("2", "D")
    with open(os.path.join(root, "state.json")) as f:
        state = json.load(f)
    assert state["current"] == "2" and state["dirs"] == {"1": "1~1"}


def test_forced_reinstall_cut_by_a_power_cut_recovers_consistently(supervisord, gwe_home, tmp_path):
    paths = fast(gwe_home)
    assert gwe("-I", package(tmp_path / "a", "A")).returncode == 0
    killed = gwe("-I", package(tmp_path / "b", "B"), "--force", crash_at="applied")
    assert killed.returncode == -signal.SIGKILL
    recovered = gwe("--recover", "--json")
    assert [s["status"] for s in json.loads(recovered.stdout)] == ["installed"], recovered
    root = os.path.join(paths.apps, "app")
    assert running(supervisord)[1:] == ("1~1", "B")
    assert os.readlink(os.path.join(root, "current")) == "1~1"
    assert visible(root) == ["1~1", "current", "state.json"]


def test_engine_fetch_entry_can_ask_for_a_reinstall(gwe_home, supervisord, murano, tmp_path):
    configure_gateway(murano, settle=0.3)
    first, second = package(tmp_path / "a", "A"), package(tmp_path / "b", "B")
    gw = start_gwe(gwe_home)
    try:
        upload(murano, first)
        murano.set(SERIAL, "engine_fetch", json.dumps({"install": [{"name": "app.v1.tar.gz"}]}))
        status = wait_fetch_status(murano, "app.v1.tar.gz")
        assert status["status"] == "installed", status
        upload(murano, second)  # same name, new content
        murano.set(SERIAL, "engine_fetch", json.dumps({"install": [{"name": "app.v1.tar.gz"}]}))
        refused = wait_for(lambda: (lambda s: s if s and s["status"] == "failed" else None)(
            wait_fetch_status(murano, "app.v1.tar.gz")), 60, message="refusal")
        assert "different package" in refused["error"]
        assert running(supervisord)[2] == "A"
        murano.set(SERIAL, "engine_fetch", json.dumps({"install": [{"name": "app.v1.tar.gz", "force": True}]}))
        wait_for(lambda: wait_fetch_status(murano, "app.v1.tar.gz")["status"] == "installed", 60,
                 message="reinstall reported")
        assert running(supervisord)[1:] == ("1~1", "B")
    finally:
        stop_process(gw)
