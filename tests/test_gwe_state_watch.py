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
