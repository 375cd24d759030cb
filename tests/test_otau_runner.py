"""The installer runner: time limit on the whole process group, bounded output, no leftovers."""
from __future__ import annotations

import os
import sys
import time

import psutil

from harness import wait_for

from otau.runner import app_environment, install_environment, run_installer, suite_python


def sh(tmp_path, script, timeout=5.0, limit=1024):
    (tmp_path / "install.sh").write_text("#!/bin/sh\n" + script)
    return run_installer(["/bin/sh", "install.sh"], str(tmp_path), install_environment("a", "1", str(tmp_path), "/h"),
                         timeout, limit)


def test_exit_status_and_output(tmp_path):
    result = sh(tmp_path, "echo out; echo err >&2; exit 7\n")
    assert (result.exit_code, result.timed_out, result.output) == (7, False, "out\nerr\n")


def test_timeout_kills_the_group_and_keeps_late_output(tmp_path):
    marker = "sleep 73.5"
    started = time.monotonic()
    result = sh(tmp_path, "(%s) &\necho before\nsleep 0.3; echo just-in-time\n%s\n" % (marker, marker), timeout=1.5)
    assert result.timed_out and result.exit_code is None
    assert "before" in result.output and "just-in-time" in result.output
    assert time.monotonic() - started < 5
    wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "73.5"]], 5)


def test_leftover_background_process_is_killed(tmp_path):
    result = sh(tmp_path, "sleep 74.5 &\necho started\n")
    assert result.exit_code == 0 and result.output == "started\n"
    wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "74.5"]], 5)


def test_output_tail_is_bounded(tmp_path):
    result = sh(tmp_path, "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done\n", limit=100)
    assert len(result.output) == 100 and result.output.endswith("line1999\n")
    assert result.output_bytes > 10000


def test_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GWE_OTAU_CRASH_AT", "installing")
    env = install_environment("app", "2", "/d", "/h", previous_version="1")
    assert "GWE_OTAU_CRASH_AT" not in env and env["PATH"]
    assert env["GWE_APP_PREVIOUS_VERSION"] == "1"
    assert {k: env[k] for k in app_environment("app", "2", "/d", "/h")} == {
        "GWE_APP_NAME": "app", "GWE_APP_VERSION": "2", "GWE_APP_DIR": "/d", "GWE_HOME": "/h",
        "GWE_PYTHON": sys.executable, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    assert os.environ["GWE_OTAU_CRASH_AT"] == "installing"


def test_suite_python_outlives_an_over_the_air_gwe_version():
    """An app installed by an over-the-air gwe names its interpreter through ``current``: the
    version directory it ran from is pruned by later updates."""
    ota = "/h/var/lib/gwe/apps/gwe/1.2/venv/bin/python"
    assert suite_python("/h", ota) == "/h/var/lib/gwe/apps/gwe/current/venv/bin/python"
    assert suite_python("/h/", "/h/var/lib/gwe/apps/gwe/current/venv/bin/python").endswith("gwe/current/venv/bin/python")
    assert suite_python("/h", "/opt/gateway-engine/venv/bin/python") == "/opt/gateway-engine/venv/bin/python"
