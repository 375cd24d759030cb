"""When to write engine_report between the periodic reports: after every install, rollback or removal
(the daemon writes it then), and when an app's supervisord state changes (crash, FATAL, restart).

A :class:`~gwe.state_watch.StateWatch` thread asks for a report when any program's state or pid differs
from its last look at supervisord (it looks when a process exits, not on a timer). Reports on change draw on a bucket of
:data:`BURST` that refills one every :data:`REFILL_S` (60 s), at least :data:`MIN_GAP_S` apart: the
few changes around an install and a crash go out within seconds, while an app crash-looping under
``autorestart`` costs the uplink about one report a minute once the burst is spent.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, List, Optional

from .state_watch import StateWatch

log = logging.getLogger(__name__)

MIN_GAP_S = 1.0
BURST = 4
REFILL_S = 60.0


class ReportTrigger:
    """``want()`` (or a state change seen by the watcher) asks for a report; the daemon asks ``take()``
    whether one is due now and ``due_in()`` how long it may sleep; ``sent()`` records any report."""

    def __init__(self, processes: Callable[[], List[dict]], wake: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._processes = processes
        self._wake = wake
        self._clock = clock
        self._lock = threading.Lock()
        self._wanted = False
        self._tokens = float(BURST)
        self._filled_at = clock()
        self._last_any = float("-inf")      # the last report of any kind
        self._watch = StateWatch(processes, self._changed)

    def start(self) -> None:
        self._watch.start()

    def stop(self) -> None:
        self._watch.stop()

    def look(self) -> None:
        """Have the watch look at supervisord now (after gwe changed what runs)."""
        self._watch.look()

    def _changed(self, names: List[str]) -> None:
        log.info("supervisord states changed (%s): engine_report due", ", ".join(names))
        self.want()

    def want(self) -> None:
        with self._lock:
            self._wanted = True
        self._wake()

    def _refill(self, now: float) -> None:
        self._tokens = min(float(BURST), self._tokens + (now - self._filled_at) / REFILL_S)
        self._filled_at = now

    def _due(self, now: float) -> float:
        self._refill(now)
        token_at = now if self._tokens >= 1.0 else now + (1.0 - self._tokens) * REFILL_S
        return max(token_at, self._last_any + MIN_GAP_S)

    def due_in(self) -> Optional[float]:
        """Seconds until a wanted report is due (0: now), None when none is wanted."""
        with self._lock:
            if not self._wanted:
                return None
            now = self._clock()
            return max(0.0, self._due(now) - now)

    def take(self) -> bool:
        """True (and the ask is cleared) when a wanted report is due now."""
        with self._lock:
            now = self._clock()
            if not self._wanted or now < self._due(now):
                return False
            self._tokens -= 1.0
            self._wanted = False
            self._last_any = now
            return True

    def sent(self) -> None:
        """A report has just gone out (periodic or after an install): it shows everything so far."""
        with self._lock:
            self._wanted = False
            self._last_any = self._clock()
