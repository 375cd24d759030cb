import os
import shutil
import signal
import subprocess
import sys

import psutil
import pytest

from harness import wait_for


def _demo(tmp_path):
    """The demo's command line and environment, as a user runs it."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("GWE_HOME", None)
    gwe = os.path.join(os.path.dirname(sys.executable), "gwe")
    return ([gwe, "demo"] if os.path.exists(gwe) else [sys.executable, "-m", "gwe", "demo"]), env


@pytest.mark.slow
def test_demo_runs_end_to_end_and_cleans_up(tmp_path):
    tmp_path = tmp_path / "t"  # a long TMPDIR: the demo must still fit supervisord's AF_UNIX socket path
    tmp_path.mkdir()
    argv, env = _demo(tmp_path)
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=120)
    out = done.stdout.decode()
    assert done.returncode == 0, out
    assert "sample_sensor RUNNING under supervisord" in out
    assert "fetch_status: installed" in out
    assert out.count("temperature = ") >= 3
    for report in ("engine_report", "device_info", "usage_report", "fetch_status"):
        assert "--- " + report in out
    assert not os.path.exists(_home(out.splitlines()))  # the temporary GWE_HOME is gone


def _start(argv, env):
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _read_until(demo, marker: str) -> list:
    out = []
    for line in demo.stdout:
        out.append(line.decode())
        if marker in out[-1]:
            return out
    raise AssertionError("the demo ended before %r: %s" % (marker, "".join(out)))


def _home(out: list) -> str:
    return [line for line in out if "GWE_HOME=" in line][0].split("GWE_HOME=")[1].split(",")[0].strip()


def _assert_all_gone(started: list) -> None:
    wait_for(lambda: not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 30,
             message="every process the demo started gone")


def _kill_all(demo, started: list) -> None:
    for proc in started:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    if demo.poll() is None:
        demo.kill()
    demo.wait(30)


@pytest.mark.slow
def test_a_demo_stopped_by_sigterm_midway_stops_everything_it_started(tmp_path):
    """Python's default for SIGTERM exits at once: murano_local and supervisord, with gwe and gmq,
    ran on after the demo was gone."""
    argv, env = _demo(tmp_path)
    hold = tmp_path / "hold"
    hold.mkdir()
    env.update(GWE_TEST_HOLD_AT="activated", GWE_TEST_HOLD_DIR=str(hold))  # gwe holds; the demo waits for it
    demo = _start(argv, env)
    started = []
    try:
        out = _read_until(demo, "starting supervisord")
        wait_for((hold / "activated.reached").exists, 60, message="gwe activated, the demo waiting for its report")
        started = psutil.Process(demo.pid).children(recursive=True)
        running = " | ".join(" ".join(p.cmdline()) for p in started)
        for part in ("murano_local serve", "supervisor.supervisord", "bin/gwe", "bin/gmq"):
            assert part in running, running
        demo.send_signal(signal.SIGTERM)
        (hold / "activated.release").touch()
        rest = demo.communicate(timeout=90)[0].decode()
        assert demo.returncode == 128 + signal.SIGTERM, "".join(out) + rest
        assert "demo stopped (SIGTERM)" in rest and "Traceback" not in rest
        _assert_all_gone(started)
        assert not os.path.exists(_home(out))
    finally:
        _kill_all(demo, started)


@pytest.mark.slow
def test_a_demo_kept_running_stops_everything_on_sighup(tmp_path):
    """A closed terminal (SIGHUP) used to kill the demo and leave what it started running."""
    argv, env = _demo(tmp_path)
    demo = _start(argv + ["--keep-running"], env)
    started, out = [], []
    try:
        out = _read_until(demo, "still running:")
        started = psutil.Process(demo.pid).children(recursive=True)
        assert len(started) >= 5, [p.cmdline() for p in started]  # murano_local, supervisord, gwe, gmq, the app
        demo.send_signal(signal.SIGHUP)
        rest = demo.communicate(timeout=90)[0].decode()
        assert demo.returncode == 0 and "Traceback" not in rest, "".join(out) + rest
        _assert_all_gone(started)
        assert "GWE_HOME=%s is kept" % _home(out) in rest and os.path.isdir(_home(out))  # to read its logs
    finally:
        _kill_all(demo, started)
        if out:
            shutil.rmtree(_home(out), ignore_errors=True)
