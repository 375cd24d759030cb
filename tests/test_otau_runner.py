"""The installer runner: time limit on the whole process group, bounded output, no leftovers."""
from __future__ import annotations

import os
import sys
import time

import psutil
import pytest

from harness import wait_for

from otau import contain
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


def require_cgroup():
    group = contain.Cgroup.create()
    if group is None:
        pytest.fail("this machine has no writable cgroup v2 (the suite runs as root on one)")
    group.remove()


def sleepers(*marks):
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] in [["sleep", m] for m in marks]]


@pytest.mark.parametrize("use_cgroup", [True, False], ids=["cgroup", "sweep"])
def test_setsid_and_double_forked_daemons_do_not_survive(tmp_path, use_cgroup):
    """A daemon that leaves the installer's session (setsid) or is re-parented to init (a double fork)
    is killed once the installer exits, and the result says what was killed."""
    if use_cgroup:
        require_cgroup()
    marks = ["81.5", "82.5", "83.5"] if use_cgroup else ["81.25", "82.25", "83.25"]  # each case its own
    script = ("setsid sleep %s >/dev/null 2>&1 &\n"
              "( ( exec sleep %s >/dev/null 2>&1 & ) & )\n"
              "(cd / && setsid sleep %s </dev/null >/dev/null 2>&1 &)\n"
              "sleep 0.3; echo done\n") % tuple(marks)
    (tmp_path / "install.sh").write_text("#!/bin/sh\n" + script)
    result = run_installer(["/bin/sh", "install.sh"], str(tmp_path), install_environment("a", "1", str(tmp_path), "/h"),
                           10, 1024, use_cgroup=use_cgroup)
    assert result.exit_code == 0 and result.output == "done\n"
    assert result.contained_by == ("cgroup" if use_cgroup else "sweep")
    wait_for(lambda: not sleepers(*marks), 5, message="leftovers gone")
    assert sorted(k.split(": ", 1)[1] for k in result.killed) == ["sleep " + m for m in marks]


def test_a_cgroup_catches_what_no_sweep_can(tmp_path):
    """setsid, cwd outside the package, no inherited environment, nothing open in the package."""
    require_cgroup()
    (tmp_path / "install.sh").write_text("#!/bin/sh\ncd / && setsid env -i sleep 84.5 </dev/null >/dev/null 2>&1 &\n"
                                         "sleep 0.3\n")
    result = run_installer(["/bin/sh", "install.sh"], str(tmp_path), install_environment("a", "1", str(tmp_path), "/h"),
                           10, 1024)
    assert [k.split(": ", 1)[1] for k in result.killed] == ["sleep 84.5"]
    wait_for(lambda: not sleepers("84.5"), 5, message="leftover gone")


def test_gwe_install_reports_the_daemon_it_killed(gwe_home, tmp_path):
    """``gwe -I`` used to report installed while a setsid daemon of install.sh ran on with PPID 1."""
    import json
    import subprocess

    from otau_helpers import make_app

    package = make_app(str(tmp_path), "leaky", "1", command=None,
                       install_sh="#!/bin/sh\nsetsid sleep 85.5 </dev/null >/dev/null 2>&1 &\necho started\n")
    done = subprocess.run([sys.executable, "-m", "gwe", "-I", package, "--json"], capture_output=True, text=True,
                          timeout=60)
    status = json.loads(done.stdout)
    assert done.returncode == 0 and status["status"] == "installed", done
    assert [k.split(": ", 1)[1] for k in status["killed"]] == ["sleep 85.5"]
    assert not sleepers("85.5")
