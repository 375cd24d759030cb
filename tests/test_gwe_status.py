"""gwe status: an install in progress (otau's journal), waiting for an app, running versus base versions."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from harness import stop_process, wait_for
from otau_helpers import make_app


def gwe(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gwe", *args], capture_output=True, text=True, timeout=timeout)


def background(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gwe", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_status_shows_an_install_in_progress_and_wait_returns_once_it_runs(gwe_home, supervisord, tmp_path):
    gate = tmp_path / "go"
    package = make_app(str(tmp_path), "slow", "1", install_sh="#!/bin/sh\nwhile [ ! -e %s ]; do sleep 0.1; done\n"
                                                                % gate)
    install = background("-I", package)
    waiter = background("status", "--wait", "slow", "--timeout", "90")
    try:
        # unpacking comes first and may be seen too: wait for the step install.sh holds
        doc = wait_for(lambda: (lambda d: d if d.get("installing", {}).get("step") == "installing" else None)(
            json.loads(gwe("status", "--json").stdout)), 30, message="install.sh running in the status")
        assert doc["installing"]["name"] == "slow"
        shown = gwe("status").stdout
        assert "installing slow 1 (slow.v1.tar.gz): running install.sh, " in shown, shown
        assert "the health gate alone takes " in shown
        assert waiter.poll() is None  # still waiting: the install holds
        gate.touch()
        out, err = waiter.communicate(timeout=90)
        assert waiter.returncode == 0, err
        assert err == ""
        assert "installing slow" not in out
        assert any(line.split()[:3] == ["slow", "1", "RUNNING"] for line in out.splitlines()), out
        assert install.wait(60) == 0
    finally:
        gate.touch()
        for proc in (install, waiter):
            stop_process(proc)


def test_wait_exits_1_with_the_line_of_a_failed_install(gwe_home, supervisord, tmp_path):
    package = make_app(str(tmp_path), "broken", "1", install_sh="#!/bin/sh\necho no disk for me >&2\nexit 3\n")
    waiter = background("status", "--wait", "broken", "--timeout", "90")
    try:
        assert gwe("-I", package).returncode == 1
        out, err = waiter.communicate(timeout=90)
    finally:
        stop_process(waiter)
    assert waiter.returncode == 1
    assert err.startswith("gwe: the install of broken.v1.tar.gz failed: failed (") and err.count("\n") == 1, err
    timed_out = gwe("status", "--wait", "nothing", "--timeout", "0.5")
    assert timed_out.returncode == 1
    assert timed_out.stderr == ("gwe: waited 0 s for nothing to run: nothing is not installed (has the cloud "
                                "asked for it in engine_fetch?)\n")


def test_status_heads_with_the_running_versions_when_they_are_not_the_base_install(gwe_home):
    """After an over-the-air update of gwe/gmq the command (the base install's) is older than what runs."""
    from gwe.status import gateway_status, render_status

    doc = gateway_status()
    base = "gwe %s  gmq %s  device_client %s  build %s" % (doc["gwe_version"], doc["gmq_version"],
                                                          doc["device_client_version"], doc["build_id"])
    assert render_status(doc).splitlines()[1] == base
    doc["running"] = {"gwe": "9.1", "gmq": "9.2"}
    lines = render_status(doc).splitlines()
    assert lines[1] == "running  gwe 9.1  gmq 9.2 (installed over the air)"
    assert lines[2] == "base install (this command, %s): %s" % (sys.prefix, base)
    assert os.path.isdir(sys.prefix)
