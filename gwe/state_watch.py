"""Watch supervisord's programs for state changes without polling while nothing happens.

Every change of a program's state starts or ends with a process: an exit (crash, stop, FATAL after
retries, the exit before a restart) or a spawn that follows one, or one that gwe itself asked for
(an install: the daemon calls :meth:`StateWatch.look`). So the watch asks supervisord
(``getAllProcessInfo``) once, opens a pidfd (``os.pidfd_open``, Linux >= 5.3) for each running
pid, and sleeps in ``select`` until one of them exits; then it asks again. While a program is in
a passing state (STARTING, BACKOFF, STOPPING), or stopped less than :data:`SETTLE_S` ago, or an
exit is not in supervisord's answer yet, it asks every :data:`PASSING_POLL_S`; otherwise only every
:data:`STABLE_POLL_S`, which catches what no exit announces (an operator's ``supervisorctl start``
long after a stop). Without pidfds it asks every :data:`FALLBACK_POLL_S`.

A program just stopped counts as passing because the next spawn is announced by no exit:
supervisord answers an XML-RPC call between reaping a process (EXITED) and its ``autorestart``
spawn, up to a second later; ``supervisorctl restart`` stops, then starts.
"""
from __future__ import annotations

import logging
import os
import select
import threading
from typing import Callable, Dict, List, Optional, Tuple

from .wake_pipe import WakePipe

log = logging.getLogger(__name__)

STABLE_POLL_S = 120.0
PASSING_POLL_S = 1.0
EXIT_UNSEEN_POLL_S = 0.2  # a pid has exited but supervisord has not reaped it yet: that takes ms
FALLBACK_POLL_S = 2.0
SETTLE_S = 5.0
PASSING = frozenset(("STARTING", "BACKOFF", "STOPPING"))
STOPPED_STATES = frozenset(("EXITED", "STOPPED"))

Seen = Dict[str, Tuple[str, int]]


def pidfds_supported() -> bool:
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
        return True
    except OSError:  # ENOSYS: a kernel before 5.3
        return False


def _state(proc: dict) -> str:
    return proc.get("statename", proc.get("state"))


def _passing(proc: dict) -> bool:
    state = _state(proc)
    if state in STOPPED_STATES:  # by supervisord's clock, in whole seconds
        return "stop" in proc and proc.get("now", 0) - proc["stop"] < SETTLE_S
    return state in PASSING


class StateWatch(threading.Thread):
    """Calls ``on_change(names)`` when a program's state or pid differs from the last look."""

    def __init__(self, processes: Callable[[], List[dict]], on_change: Callable[[List[str]], None],
                 use_pidfds: Optional[bool] = None) -> None:
        super().__init__(name="gwe-state-watch", daemon=True)
        self._processes = processes
        self._on_change = on_change
        self._pidfds = pidfds_supported() if use_pidfds is None else use_pidfds
        self._wake = WakePipe()
        self._stopping = False
        self._fds: Dict[int, int] = {}  # pid -> pidfd
        self._exited: set = set()        # pidfds of pids that exited, not to be waited on again
        self._seen: Optional[Seen] = None

    def look(self) -> None:
        """Ask supervisord now (gwe has just installed or removed something)."""
        self._nudge()

    def stop(self) -> None:
        self._stopping = True
        self._nudge()

    def _nudge(self) -> None:
        self._wake.wake()

    def run(self) -> None:
        try:
            while not self._stopping:
                try:
                    timeout = self._look()
                except Exception as exc:  # supervisord restarting or gone: look again soon
                    log.debug("state watch: %s", exc)
                    timeout = FALLBACK_POLL_S
                self._sleep(timeout)
        finally:  # the wake pipe stays open: look() and stop() may still write to it
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def _look(self) -> float:
        procs = self._processes()
        seen = {p["name"]: (_state(p), p.get("pid", 0)) for p in procs}
        if self._seen is not None and seen != self._seen:
            self._on_change(sorted(n for n in set(seen) | set(self._seen) if seen.get(n) != self._seen.get(n)))
        self._seen = seen
        if not self._pidfds:
            return FALLBACK_POLL_S
        unseen_exit = self._watch_pids({pid for _, pid in seen.values() if pid})
        if unseen_exit:
            return EXIT_UNSEEN_POLL_S
        if any(_passing(p) for p in procs):
            return PASSING_POLL_S
        return STABLE_POLL_S

    def _watch_pids(self, pids: set) -> bool:
        """Hold a pidfd for each of ``pids`` (and none other); True if one of them has exited already."""
        for pid in set(self._fds) - pids:
            os.close(self._fds.pop(pid))
        gone = False
        for pid in pids - set(self._fds):
            try:
                self._fds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                gone = True  # exited and reaped, while supervisord's answer still names it
        ready, _, _ = select.select(list(self._fds.values()), [], [], 0)
        self._exited = set(ready)
        return gone or bool(ready)

    def _sleep(self, timeout: float) -> None:
        """Until ``timeout``, a nudge, or the exit of a watched pid."""
        live = [fd for fd in self._fds.values() if fd not in self._exited]
        self._wake.wait(timeout, live)
