"""gwe's supervisord state watch (gwe/state_watch.py): it looks when a watched process exits, not on a timer."""
import subprocess
import threading
import time

import pytest

from gwe.state_watch import StateWatch, pidfds_supported
from harness import wait_for

pytestmark = pytest.mark.skipif(not pidfds_supported(), reason="needs pidfd_open (Linux >= 5.3)")


def test_the_watch_sleeps_while_nothing_changes_and_looks_at_once_when_a_process_exits():
    app = subprocess.Popen(["sleep", "60"])
    looks, changes = [], []
    changed = threading.Event()

    def processes():  # this test plays supervisord: it owns (and reaps) the program's process
        looks.append(time.monotonic())
        running = app.poll() is None
        return [{"name": "app", "statename": "RUNNING" if running else "EXITED", "pid": app.pid if running else 0}]

    def on_change(names):
        changes.append(names)
        changed.set()

    watch = StateWatch(processes, on_change)
    watch.start()
    try:
        wait_for(lambda: looks, 5, message="the first look")
        time.sleep(1.5)
        assert len(looks) == 1, "the watch polled while nothing changed: %d looks" % len(looks)
        app.kill()
        killed = time.monotonic()
        assert changed.wait(5), "the exit was not seen"
        assert time.monotonic() - killed < 2.0
        assert changes == [["app"]]
        watch.look()  # gwe installed something: it looks now
        wait_for(lambda: len(looks) >= 3, 5, message="a look on request")
    finally:
        watch.stop()
        app.kill()
        app.wait()


def test_a_start_no_exit_announces_is_seen_when_it_follows_a_stop(supervisord, tmp_path):
    """supervisord answers between reaping a process (EXITED) and its autorestart spawn, and
    ``supervisorctl restart`` stops, then starts: a watch that saw the stop with no pid left to
    wait on slept its stable interval (120 s) through the start."""
    trigger = tmp_path / "exit-now"
    supervisord.add_program("app", "/bin/sh -c 'while [ ! -e %s ]; do sleep 0.05; done'" % trigger,
                            startsecs=0, autorestart="false")
    wait_for(lambda: supervisord.state("app") == "RUNNING", 10, message="app running")
    answers, states = [], []

    def processes():
        answers.append(supervisord.rpc().supervisor.getAllProcessInfo())
        return answers[-1]

    watch = StateWatch(processes, lambda names: states.append(answers[-1][0]["statename"]))
    watch.start()
    try:
        wait_for(lambda: answers, 10, message="the first look")
        trigger.touch()
        wait_for(lambda: "EXITED" in states, 10, message="the exit seen")
        trigger.unlink()
        supervisord.rpc().supervisor.startProcess("app", False)
        wait_for(lambda: {"STARTING", "RUNNING"} & set(states[states.index("EXITED"):]), 10,
                 message="the start after the stop seen")
    finally:
        watch.stop()
