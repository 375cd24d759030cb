"""Power cuts during ``gwe -I`` of v(n+1) over a RUNNING v(n): the whole GWE_HOME (apps, journal,
program files, supervisord's config) is on the power-loss filesystem. After each cut supervisord
starts on what survived and ``gwe --recover`` runs: the app is the old or the new version
everywhere and RUNNING, never half."""
import json
import os
import subprocess
import sys
import time

import psutil
import pytest
from harness import Supervisord, wait_for
from lab import count, figure, kill_users, rng
from otau_helpers import make_app

from atomic_config import gwe_paths, set_option

NAME = "labapp"


def gwe(home, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "gwe", *args], env=dict(os.environ, GWE_HOME=home),
                          capture_output=True, text=True, timeout=timeout)


def outcome(paths, sup, old, new):
    """"old", "new", or "half: <what disagrees>" for the app after recovery."""
    root = os.path.join(paths.apps, NAME)
    try:
        with open(os.path.join(root, "state.json")) as f:
            current = json.load(f)["current"]
        link = os.readlink(os.path.join(root, "current"))
        with open(os.path.join(paths.supervisor_include, NAME + ".conf")) as f:
            conf = f.read()
    except (OSError, ValueError, KeyError) as exc:
        return "half: %r" % exc
    if current not in (old, new) or link != current:
        return "half: state.json %s, current -> %s" % (current, link)
    if "directory = %s\n" % os.path.join(root, current) not in conf:
        return "half: program file not for %s" % current
    try:
        info = wait_for(lambda: (lambda i: i["statename"] == "RUNNING" and i)(
            sup.rpc().supervisor.getProcessInfo(NAME)), 20, message="app RUNNING")
    except AssertionError as exc:
        return "half: not RUNNING (%s)" % exc
    if psutil.Process(info["pid"]).cwd() != os.path.join(root, current):
        return "half: the running process is not %s" % current
    if os.path.exists(os.path.join(paths.var_lib, "otau", "journal.json")):
        return "half: journal left after recovery"
    return "old" if current == old else "new"


@pytest.mark.slow
def test_gwe_install_survives_power_cuts(tmp_path, powerloss):
    disk = powerloss()
    r = rng("otau")
    cuts = count(1, 30)
    home = disk.mountpoint
    os.makedirs(str(tmp_path / "run"))
    os.symlink(str(tmp_path / "run"), os.path.join(home, "run"))  # /run is a tmpfs (and FUSE has no unix sockets)
    paths = gwe_paths(home).ensure()
    engine = os.path.join(paths.etc, "Engine.config")
    set_option(engine, "otau", "settle_seconds", "0.3")
    set_option(engine, "otau", "health_timeout", "15")
    pkgs = str(tmp_path / "pkgs")
    os.makedirs(pkgs)
    sup = Supervisord(home).start()
    try:
        first = gwe(home, "-I", make_app(pkgs, NAME, "1", startsecs=0))
        assert first.returncode == 0, first.stderr
        disk.sync()
        current = 1
        results = {"old": 0, "new": 0, "half": 0}
        durations = []
        for _ in range(cuts):
            tarball = make_app(pkgs, NAME, str(current + 1), startsecs=0)
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "gwe", "-I", tarball], cwd=str(tmp_path),
                                    env=dict(os.environ, GWE_HOME=home),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # a cut anywhere from the first step to just after the end of a typical install
            at = r.uniform(0.0, 1.2 * (sorted(durations)[len(durations) // 2] if durations else 1.6))
            while proc.poll() is None and time.monotonic() - started < at:
                time.sleep(0.01)
            if proc.poll() is not None:
                durations.append(time.monotonic() - started)
            keep = r.choice(["none", "prefix"])
            disk.cut(keep=keep, tear=keep == "prefix", seed=r.randrange(1 << 30))
            kill_users(home, proc, sup.proc)
            disk.mount()
            sup.start()
            recovered = gwe(home, "--recover", "--json")
            assert recovered.returncode == 0, recovered.stderr
            got = outcome(paths, sup, str(current), str(current + 1))
            assert not got.startswith("half"), "after a cut: %s" % got
            results[got] += 1
            current += got == "new"
    finally:
        sup.stop()
    figure("otau_install_power_cut", cuts=cuts, installs_old=results["old"], installs_new=results["new"],
           installs_half=results["half"], seed=r.seed_value)
