"""Self-update: a package named gwe goes through the same path, behind the boot guard.

The installing gwe dies when its own program is replaced (simulated by SIGKILL at ``applied``,
as the daemon's install would be killed by supervisord). A new gwe that crash-loops is then
reverted by the boot guard on its next starts, with no installer alive; the old gwe's
``recover()`` on start reports ``rolled_back``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest
from harness import wait_for
from otau_helpers import make_app

import otau
from atomic_config import gwe_paths, set_option
from otau.selfupdate import marker_path

CRASH = "/bin/sh -c 'exit 1'"


def gwe_cli(*args, crash_at=None):
    env = dict(os.environ)
    env.pop("GWE_OTAU_CRASH_AT", None)
    if crash_at:
        env["GWE_OTAU_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "gwe", *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def gwe_v1(supervisord, gwe_home, tmp_path):
    paths = gwe_paths(str(gwe_home)).ensure()
    engine = os.path.join(paths.etc, "Engine.config")
    set_option(engine, "otau", "settle_seconds", "0.3")
    set_option(engine, "otau", "boot_attempts", "2")
    assert gwe_cli("-I", make_app(str(tmp_path), "gwe", "1")).returncode == 0
    return paths, supervisord, tmp_path


def running_dir(sup, name="gwe"):
    info = sup.rpc().supervisor.getProcessInfo(name)
    return info["statename"] == "RUNNING" and psutil.Process(info["pid"]).cwd()


def app_version(sup, name="gwe"):
    return psutil.Process(sup.rpc().supervisor.getProcessInfo(name)["pid"]).environ().get("GWE_APP_VERSION")


def test_crash_looping_gwe_is_reverted_by_the_boot_guard(gwe_v1):
    paths, sup, tmp = gwe_v1
    root = os.path.join(paths.apps, "gwe")
    conf_path = os.path.join(paths.supervisor_include, "gwe.conf")
    with open(conf_path) as f:
        v1_conf = f.read()
    assert "boot_guard.py" in v1_conf and "startretries = 3" in v1_conf

    killed = gwe_cli("-I", make_app(str(tmp), "gwe", "2", command=CRASH), crash_at="applied")
    assert killed.returncode == -signal.SIGKILL

    # No installer is alive: supervisord restarts gwe 2, the guard counts, then reverts to 1.
    wait_for(lambda: running_dir(sup) == os.path.join(root, "1"), 30, message="gwe 1 running again")
    with open(marker_path(paths, "gwe")) as f:
        marker = json.load(f)
    assert marker["state"] == "reverted" and marker["attempts"] == 3
    assert os.readlink(os.path.join(root, "current")) == "1"
    assert app_version(sup) == "1"  # the guard exec'd the previous command with its environment
    with open(conf_path) as f:
        assert f.read() == v1_conf

    # The old gwe, starting, calls recover(): supervisord gets the restored program, status is rolled_back.
    statuses = otau.recover(paths)
    assert [(s.version, s.status) for s in statuses] == [("2", "rolled_back")]
    assert "boot guard" in statuses[0].error
    assert not os.path.exists(marker_path(paths, "gwe"))
    assert not os.path.exists(os.path.join(root, "2"))
    wait_for(lambda: running_dir(sup) == os.path.join(root, "1"), 15, message="gwe 1 under its own config")
    assert app_version(sup) == "1"
    assert otau.recover(paths) == []


def test_healthy_gwe_update_is_confirmed_by_recover(gwe_v1):
    """The daemon case that works: killed at ``applied``, the new gwe's recover() confirms itself."""
    paths, sup, tmp = gwe_v1
    killed = gwe_cli("-I", make_app(str(tmp), "gwe", "2"), crash_at="applied")
    assert killed.returncode == -signal.SIGKILL
    statuses = otau.recover(paths)
    assert [(s.version, s.status) for s in statuses] == [("2", "installed")]
    assert not os.path.exists(marker_path(paths, "gwe"))
    assert running_dir(sup) == os.path.join(paths.apps, "gwe", "2")


def test_failed_gwe_update_rolls_back_while_installer_lives(gwe_v1):
    paths, sup, tmp = gwe_v1
    done = gwe_cli("-I", make_app(str(tmp), "gwe", "2", command=CRASH), "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["status"] == "rolled_back"
    wait_for(lambda: running_dir(sup) == os.path.join(paths.apps, "gwe", "1"), 15)
    assert not os.path.exists(marker_path(paths, "gwe"))


def test_factory_gwe_program_is_restored_by_the_boot_guard(supervisord, gwe_home, tmp_path):
    """The first self-update from a base install (program file not made by otau, no version dir)."""
    paths = gwe_paths(str(gwe_home)).ensure()
    engine = os.path.join(paths.etc, "Engine.config")
    set_option(engine, "otau", "settle_seconds", "0.3")
    set_option(engine, "otau", "boot_attempts", "1")
    supervisord.add_program("gwe", "sleep 600", startsecs=0, directory=str(tmp_path))
    wait_for(lambda: running_dir(supervisord) == str(tmp_path), 10)
    with open(os.path.join(paths.supervisor_include, "gwe.conf")) as f:
        factory_conf = f.read()

    killed = gwe_cli("-I", make_app(str(tmp_path), "gwe", "2", command=CRASH), crash_at="applied")
    assert killed.returncode == -signal.SIGKILL
    wait_for(lambda: running_dir(supervisord) == str(tmp_path), 30, message="the factory gwe running again")
    statuses = otau.recover(paths)
    assert [(s.version, s.status, s.running_version) for s in statuses] == [("2", "rolled_back", None)]
    with open(os.path.join(paths.supervisor_include, "gwe.conf")) as f:
        assert f.read() == factory_conf
    assert not os.path.lexists(os.path.join(paths.apps, "gwe", "current"))
    wait_for(lambda: running_dir(supervisord) == str(tmp_path), 15)


DAEMON = """import os, time
import otau
from atomic_config import gwe_paths
otau.recover()  # what gwe's daemon does on every start
trigger = os.path.join(gwe_paths().var_lib, "install-me")
while True:
    if os.path.exists(trigger):
        with open(trigger) as f:
            tarball = f.read().strip()
        os.unlink(trigger)
        otau.install_package(tarball)  # supervisord stops this very process when gwe's group is replaced
    time.sleep(0.05)
"""


def daemon_package(directory, version, command="%(ENV_GWE_PYTHON)s app.py"):
    return make_app(directory, "gwe", version, command=command, startsecs=0, extra={"app.py": DAEMON})


def last_status(paths, name="gwe"):
    try:
        with open(os.path.join(paths.var_lib, "otau", "status", name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
@pytest.mark.parametrize("broken", [False, True], ids=["healthy", "crash_loop"])
def test_gwe_daemon_updates_itself(gwe_v1, broken):
    """The real thing: the running gwe installs its own update from inside its supervisord group."""
    paths, sup, tmp = gwe_v1
    assert gwe_cli("-I", daemon_package(str(tmp), "1.1")).returncode == 0
    wait_for(lambda: running_dir(sup) == os.path.join(paths.apps, "gwe", "1.1"), 10)
    new = daemon_package(str(tmp), "2", command=CRASH if broken else "%(ENV_GWE_PYTHON)s app.py")
    # handed over by rename: the daemon polls every 50 ms and once read an empty, just-created file
    # (it then asked to install "" and waited for a trigger that never came again)
    with open(os.path.join(paths.var_lib, "install-me.tmp"), "w") as f:
        f.write(new)
    os.rename(os.path.join(paths.var_lib, "install-me.tmp"), os.path.join(paths.var_lib, "install-me"))

    want_version, want_status = ("1.1", "rolled_back") if broken else ("2", "installed")
    wait_for(lambda: last_status(paths).get("version") == "2" and last_status(paths)["status"] == want_status,
             40, message="gwe to report its own update")
    wait_for(lambda: running_dir(sup) == os.path.join(paths.apps, "gwe", want_version), 15)
    assert not os.path.exists(marker_path(paths, "gwe"))
    assert not os.path.exists(os.path.join(paths.var_lib, "otau", "journal.json"))
    assert os.readlink(os.path.join(paths.apps, "gwe", "current")) == want_version
    assert app_version(sup) == want_version
    with open(os.path.join(paths.log, "otau.log")) as f:
        assert "apply gwe: done" in f.read()  # the group was replaced by the detached helper
