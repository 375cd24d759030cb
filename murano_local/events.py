"""Change notification: wakes long polls and tells subscribers (a future MQTT front end) about changes.

Waiters block on one condition variable and hold no CPU while idle; a per-device version
counter makes wake-ups race-free (take the version, check the store, wait for the
version to move).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

log = logging.getLogger(__name__)

DeviceKey = Tuple[str, str]


@dataclass(frozen=True)
class Change:
    """One committed change: ``kind`` is ``set`` (operator), ``write`` or ``record`` (device)."""
    kind: str
    pid: str
    identity: str
    values: Tuple[Tuple[str, str], ...]
    timestamp: int


class ChangeHub:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._versions: Dict[DeviceKey, int] = {}
        self._subscribers: List[Callable[[Change], None]] = []
        self._closed = False
        self._waiting = 0

    def subscribe(self, callback: Callable[[Change], None]) -> None:
        """Call ``callback(change)`` after every committed change (from the changing thread)."""
        self._subscribers.append(callback)

    def version(self, key: DeviceKey) -> int:
        with self._cond:
            return self._versions.get(key, 0)

    def publish(self, change: Change) -> None:
        key = (change.pid, change.identity)
        if change.kind == "set":
            with self._cond:
                self._versions[key] = self._versions.get(key, 0) + 1
                self._cond.notify_all()
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                log.exception("change subscriber %r failed", callback)

    def wait_change(self, key: DeviceKey, seen: int, timeout: float) -> bool:
        """Block until the cloud sets something on ``key`` after version ``seen``, or ``timeout``."""
        with self._cond:
            self._waiting += 1
            try:
                return self._cond.wait_for(lambda: self._closed or self._versions.get(key, 0) != seen, timeout)
            finally:
                self._waiting -= 1

    @property
    def waiting(self) -> int:
        """How many long polls are blocked right now."""
        return self._waiting

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release every waiter for shutdown."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
