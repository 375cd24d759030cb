"""Power cuts mid-install: ``gwe -I`` is SIGKILLed at each step (test hook GWE_OTAU_CRASH_AT, and at
random moments from outside); after ``gwe --recover`` the app is consistently the old or the new
version, and RUNNING under the real supervisord."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest
from harness import Supervisord, wait_for
from otau_helpers import make_app as _make_app

import otau
from atomic_config import gwe_paths, previous_path, set_option
from otau.journal import journal_path


def make_app(*args, **kwargs):
    """Apps that count as started at once (startsecs 0): the settle time alone gates them here."""
    return _make_app(*args, startsecs=0, **kwargs)


@pytest.fixture(scope="module")
def plant(tmp_path_factory):
    """One GWE_HOME and supervisord for the module; each test installs its own app in it."""
    root = tmp_path_factory.mktemp("otau_powercut")
    paths = gwe_paths(str(root / "home")).ensure()
    engine = os.path.join(paths.etc, "Engine.config")
    set_option(engine, "otau", "settle_seconds", "0.3")
    set_option(engine, "otau", "health_timeout", "10")
    sup = Supervisord(paths.home).start()
    yield paths, str(root), sup
    sup.stop()


def gwe(paths, *args, crash_at=None, timeout=60):
    env = dict(os.environ, GWE_HOME=paths.home)
    env.pop("GWE_OTAU_CRASH_AT", None)
    if crash_at:
        env["GWE_OTAU_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "gwe", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def gateway(plant, request):
    """``NAME`` v1 installed and RUNNING; NAME is unique per test."""
    paths, root, sup = plant
    name = "app%d" % (len(os.listdir(paths.apps)) + 1)
    pkgs = os.path.join(root, name)
    os.makedirs(pkgs)
    first = gwe(paths, "-I", make_app(pkgs, name, "1"))
    assert first.returncode == 0, first.stderr
    return paths, pkgs, sup, name


def assert_consistent(paths, sup, allowed, name):
    """One version everywhere: state.json, the current link, the program file, the running process."""
    root = os.path.join(paths.apps, name)
    with open(os.path.join(root, "state.json")) as f:
        state = json.load(f)
    current = state["current"]
    assert current in allowed
    assert os.readlink(os.path.join(root, "current")) == current
    with open(os.path.join(paths.supervisor_include, name + ".conf")) as f:
        assert "directory = %s\n" % os.path.join(root, current) in f.read()
    info = wait_for(lambda: (lambda i: i["statename"] == "RUNNING" and i)(
        sup.rpc().supervisor.getProcessInfo(name)), 15, message="app RUNNING")
    assert psutil.Process(info["pid"]).cwd() == os.path.join(root, current)
    assert not os.path.exists(journal_path(paths))
    on_disk = sorted(n for n in os.listdir(root) if not n.startswith("."))
    assert on_disk == sorted(state["history"] + ["current", "state.json"])
    return current


EXPECTED = {
    "unpacking": ("1", "failed"),
    "installing": ("1", "failed"),
    "installed": ("1", "failed"),
    "registering": ("2", "installed"),
    "conf_written": ("2", "installed"),
    "applied": ("2", "installed"),
    "committed": ("2", "installed"),
}


@pytest.mark.parametrize("point", sorted(EXPECTED))
def test_sigkill_at_each_step(gateway, point):
    paths, pkgs, sup, name = gateway
    killed = gwe(paths, "-I", make_app(pkgs, name, "2"), crash_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert os.path.exists(journal_path(paths))

    recovered = gwe(paths, "--recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    statuses = json.loads(recovered.stdout)
    version, status = EXPECTED[point]
    assert [(s["version"], s["status"]) for s in statuses] == [("2", status)]
    assert statuses[0]["running_version"] == version
    assert assert_consistent(paths, sup, {version}, name) == version


def test_sigkill_during_rollback(gateway):
    paths, pkgs, sup, name = gateway
    # exits at once: a Python one needs longer than the 0.3 s settle time to fail on a loaded machine
    bad = make_app(pkgs, name, "2", command="/bin/false")
    killed = gwe(paths, "-I", bad, crash_at="rolling_back")
    assert killed.returncode == -signal.SIGKILL
    recovered = gwe(paths, "--recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    assert [s["status"] for s in json.loads(recovered.stdout)] == ["rolled_back"]
    assert assert_consistent(paths, sup, {"1"}, name) == "1"


def test_next_install_recovers_first(gateway):
    """gwe -I after a crash finishes the interrupted install before starting the new one."""
    paths, pkgs, sup, name = gateway
    assert gwe(paths, "-I", make_app(pkgs, name, "2"), crash_at="applied").returncode == -signal.SIGKILL
    done = gwe(paths, "-I", make_app(pkgs, name, "3"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["previous_version"] == "2"
    assert assert_consistent(paths, sup, {"3"}, name) == "3"


@pytest.mark.slow
def test_sigkill_at_random_moments(gateway):
    paths, pkgs, sup, name = gateway
    rng = random.Random(20261123)
    current = "1"
    for version in ("2", "3", "4", "5"):
        tarball = make_app(pkgs, name, version, install_sh="#!/bin/sh\nsleep 0.3\necho ok\n")
        proc = subprocess.Popen([sys.executable, "-m", "gwe", "-I", tarball], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=dict(os.environ, GWE_HOME=paths.home))
        time.sleep(rng.uniform(0.2, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        recovered = gwe(paths, "--recover", "--json")
        assert recovered.returncode == 0, recovered.stderr
        current = assert_consistent(paths, sup, {current, version}, name)
    assert otau.load_statuses(paths)


@pytest.mark.parametrize("point", ["conf_written", "applied"])
def test_damaged_journal_after_the_switch_never_deletes_the_running_version(gateway, point):
    """The journal (registering) is damaged, so its previous generation (installing) is read back.
    Recovery of 'installing' used to delete the new version's directory: by then the program file,
    and after 'applied' supervisord too, ran from it."""
    paths, pkgs, sup, name = gateway
    killed = gwe(paths, "-I", make_app(pkgs, name, "2"), crash_at=point)
    assert killed.returncode == -signal.SIGKILL
    with open(previous_path(journal_path(paths))) as f:
        assert json.load(f)["state"] == "installing"
    with open(journal_path(paths), "w") as f:
        f.write("{")  # what a lying disk may leave
    recovered = gwe(paths, "--recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    statuses = json.loads(recovered.stdout)
    assert [(s["version"], s["status"]) for s in statuses] == [("2", "rolled_back")], statuses
    assert assert_consistent(paths, sup, {"1"}, name) == "1"


def test_journal_transitions_are_guarded(tmp_path):
    from otau.journal import (
        COMMITTED,
        INSTALLING,
        REGISTERING,
        ROLLING_BACK,
        Journal,
        JournalError,
        begin_journal,
        write_journal,
    )

    paths = gwe_paths(str(tmp_path / "home")).ensure()
    journal = Journal(name="a", version="2", package="a.v2.tar.gz", state="unpacking", staging="/x")
    begin_journal(paths, journal)
    with pytest.raises(JournalError):
        begin_journal(paths, journal)  # one install at a time: the unfinished one is recovered first
    with pytest.raises(JournalError):
        write_journal(paths, journal, REGISTERING)  # installing comes first
    for state in (INSTALLING, INSTALLING, REGISTERING, COMMITTED):
        write_journal(paths, journal, state)
    with pytest.raises(JournalError):
        write_journal(paths, journal, ROLLING_BACK)  # a committed install is never rolled back
    with open(journal_path(paths)) as f:
        assert json.load(f)["state"] == COMMITTED
