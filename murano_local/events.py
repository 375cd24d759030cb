"""Change notification: wakes long polls and tells subscribers (a future MQTT front end) about changes.

Waiters block on a condition variable of their device and hold no CPU while idle; a
per-device version counter makes wake-ups race-free (take the version, check the store,
wait for the version to move).
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
    """One committed change: ``kind`` is ``set`` (operator), ``write`` or ``record`` (device), ``tags``
    (an operator tagged a device; ``values`` holds its tags) or ``rollout`` (a rollout moved)."""
    kind: str
    pid: str
    identity: str
    values: Tuple[Tuple[str, str], ...]
    timestamp: int


class ChangeHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: Dict[DeviceKey, int] = {}
        self._conditions: Dict[DeviceKey, List] = {}  # key -> [Condition, number of waiters]
        self._subscribers: List[Callable[[Change], None]] = []
        self._closed = False
        self._waiting = 0

    def subscribe(self, callback: Callable[[Change], None]) -> None:
        """Call ``callback(change)`` after every committed change (from the changing thread)."""
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[Change], None]) -> None:
        try:
            self._subscribers.remove(callback)
        except ValueError:
            pass

    def version(self, key: DeviceKey) -> int:
        with self._lock:
            return self._versions.get(key, 0)

    def publish(self, change: Change) -> None:
        key = (change.pid, change.identity)
        if change.kind == "set":
            with self._lock:
                self._versions[key] = self._versions.get(key, 0) + 1
                entry = self._conditions.get(key)
                if entry is not None:
                    entry[0].notify_all()  # only this device's waiters: no thundering herd
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                log.exception("change subscriber %r failed", callback)

    def wait_change(self, key: DeviceKey, seen: int, timeout: float) -> bool:
        """Block until the cloud sets something on ``key`` after version ``seen``, or ``timeout``."""
        with self._lock:
            entry = self._conditions.get(key)
            if entry is None:
                entry = self._conditions[key] = [threading.Condition(self._lock), 0]
            entry[1] += 1
            self._waiting += 1
            try:
                return entry[0].wait_for(
                    lambda: self._closed or self._versions.get(key, 0) != seen, timeout)
            finally:
                self._waiting -= 1
                entry[1] -= 1
                if entry[1] == 0:
                    del self._conditions[key]

    @property
    def waiting(self) -> int:
        """How many long polls are blocked right now."""
        return self._waiting

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release every waiter for shutdown."""
        with self._lock:
            self._closed = True
            for condition, _count in self._conditions.values():
                condition.notify_all()
