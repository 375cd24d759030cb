"""The state of a link to Murano, as local apps see it: connected, offline or backing off.

One home for what gmq serves at ``GET /connection`` and gwe puts in ``engine_report``.
A link is ``connected`` while its last exchange got an answer the link is not to blame
for (a 2xx, or a 4xx about one request or one client), ``offline`` when the last
attempt got no answer at all (refused, DNS, timeout, TLS), and ``backoff`` when the
server answered "not now" (5xx, 408, 429, a redirect). ``since`` changes only when the
state does. Thread-safe; imports nothing heavy.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from . import errors

CONNECTED = "connected"
OFFLINE = "offline"
BACKOFF = "backoff"
STATES = (CONNECTED, OFFLINE, BACKOFF)
RETRY_LATER_STATUSES = (408, 429)


def state_after(exc: BaseException) -> str:
    """The link state a failed exchange leaves: ``offline`` (no answer), ``backoff`` ("not now"), or
    ``connected`` (the server answered; the request or the client was at fault)."""
    if isinstance(exc, errors.NetworkError) or (isinstance(exc, errors.DeviceAPIError) and exc.status is None):
        return OFFLINE
    if isinstance(exc, errors.DeviceAPIError):
        status = exc.status or 0
        if status >= 500 or status < 400 or status in RETRY_LATER_STATUSES:
            return BACKOFF
        return CONNECTED
    return OFFLINE  # OSError and the like: nothing came back


class LinkState:
    """What is known of one upstream link; ``snapshot()`` is the JSON apps read."""

    def __init__(self, upstream: Optional[str] = None, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.upstream = upstream
        self._state = OFFLINE
        self._since = clock()
        self._checked: Optional[float] = None
        self._last_error: Optional[str] = None
        self._last_error_at: Optional[float] = None
        self._next_retry: Optional[float] = None
        self._transitions = 0

    def _enter(self, state: str, now: float) -> None:
        if state != self._state:
            self._state = state
            self._since = now
            self._transitions += 1

    def succeeded(self) -> None:
        """An exchange got an answer the link is not to blame for."""
        with self._lock:
            now = self._clock()
            self._enter(CONNECTED, now)
            self._checked = now
            self._next_retry = None

    def failed(self, error: str, state: str = OFFLINE, retry_in: Optional[float] = None) -> None:
        """An exchange failed; ``state`` from :func:`state_after`, the next attempt in ``retry_in`` s."""
        if state not in STATES:
            raise ValueError("link state must be one of %s" % ", ".join(STATES))
        with self._lock:
            now = self._clock()
            self._enter(state, now)
            self._checked = now
            self._last_error = error
            self._last_error_at = now
            self._next_retry = None if retry_in is None else now + max(0.0, retry_in)

    def failed_with(self, exc: BaseException, retry_in: Optional[float] = None) -> None:
        """``failed`` for an exception, its state chosen by :func:`state_after`."""
        state = state_after(exc)
        if state == CONNECTED:
            self.succeeded()
        else:
            self.failed("%s: %s" % (type(exc).__name__, exc), state, retry_in)

    @property
    def state(self) -> str:
        return self._state

    def checked_at(self) -> Optional[float]:
        return self._checked

    def next_retry(self) -> Optional[float]:
        return self._next_retry

    def snapshot(self) -> dict:
        """``{"state", "since", "checked", "last_error", "last_error_at", "next_retry", "retry_in",
        "transitions", "upstream"}``; times are Unix seconds."""
        with self._lock:
            now = self._clock()
            return {
                "state": self._state,
                "since": round(self._since, 3),
                "checked": None if self._checked is None else round(self._checked, 3),
                "last_error": self._last_error,
                "last_error_at": None if self._last_error_at is None else round(self._last_error_at, 3),
                "next_retry": None if self._next_retry is None else round(self._next_retry, 3),
                "retry_in": None if self._next_retry is None else round(max(0.0, self._next_retry - now), 3),
                "transitions": self._transitions,
                "upstream": self.upstream,
            }
