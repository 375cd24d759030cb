"""Taking a value the cloud set (``engine_fetch``, ``update_interval``, ``upload_request``) without
wiping a newer one.

gwe clears such an alias (``""``) once it has taken what it held. A plain write lands whenever it
arrives and sets ``set`` too, so an operator's newer value that reached the cloud first would be
wiped and never seen. The clear is therefore a *record* dated to the value taken: the long poll's
``Last-Modified`` over HTTP (murano_local dates it to the second after the set and stamps every
later change after that second), the push's µs timestamp over MQTT. A store that keeps the newest
point as the state (murano_local; One Platform's "latest value") keeps a newer set pending, and
gwe's next poll returns it. A read then checks the clear. If the cloud still holds the taken value,
either the operator set it again (a push, or a poll from the clear's time, shows it newer) or the
server did not let the record date its state: then a plain write clears it as the original did
(with the original's race). A value without a known time (``gwe --once`` reads) is cleared by a write.
"""
from __future__ import annotations

import email.utils
import logging
import threading
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

log = logging.getLogger(__name__)

PUSH_WAIT_S = 1.0  # the push listener runs just after the long poll is woken: wait this long for it


class CloudSets:
    """When the cloud set each value a poll returned (µs), and the clear dated to it.

    Over MQTT every push carries its timestamp (:meth:`heard` is the Device's ``on_set``
    listener); over HTTP the answer's ``Last-Modified`` dates all its values.
    """

    def __init__(self, aliases: Sequence[str]) -> None:
        self._aliases = frozenset(aliases)
        self._cond = threading.Condition()
        self._pushed: Dict[str, Tuple[str, int]] = {}
        self.pushes = False

    def listen(self, device) -> None:
        """Take push timestamps from ``device`` when its transport pushes (MQTT)."""
        try:
            device.on_set(self.heard)
        except ValueError:  # HTTP: Last-Modified dates the answers
            return
        self.pushes = True

    def heard(self, alias: str, value: str, timestamp_us: int) -> None:
        if alias in self._aliases:
            with self._cond:
                self._pushed[alias] = (value, timestamp_us)
                self._cond.notify_all()

    def _push_of(self, alias: str, match: Callable[[Tuple[str, int]], bool], pop: bool) -> Optional[Tuple[str, int]]:
        """The push heard for ``alias`` once ``match`` accepts it (waiting up to PUSH_WAIT_S)."""
        with self._cond:
            self._cond.wait_for(lambda: alias in self._pushed and match(self._pushed[alias]), PUSH_WAIT_S)
            pushed = self._pushed.get(alias)
            if pushed is None or not match(pushed):
                return None
            if pop:
                del self._pushed[alias]
            return pushed

    def of(self, values: Dict[str, str], last_modified: Optional[str]) -> Dict[str, int]:
        """``{alias: set time in µs}`` for the values of one poll answer (those it can date)."""
        if not self.pushes:
            at = http_date_us(last_modified)
            return {alias: at for alias, value in values.items() if value.strip()} if at is not None else {}
        found: Dict[str, int] = {}
        for alias, value in values.items():
            if value.strip():  # nothing to take, nothing to clear
                pushed = self._push_of(alias, lambda p, v=value: p[0] == v, pop=True)
                if pushed is not None:
                    found[alias] = pushed[1]
        return found

    def clear(self, device, alias: str, taken: str, set_at_us: Optional[int]) -> None:
        """Clear ``alias``, which held ``taken`` as of ``set_at_us``, unless the cloud has a newer value.

        Network errors, 5xx and 401 propagate (the cycle retries and the value is polled again); a
        server that refuses the dated clear (4xx) gets the plain write.
        """
        from device_client import errors

        if set_at_us is not None:
            try:
                device.record({alias: [(_seconds(set_at_us), "")]})
            except (errors.NetworkError, errors.ServerError, errors.NotActivated):
                raise
            except errors.DeviceAPIError as exc:
                log.warning("the cloud refused a dated clear of %s (%s): clearing it with a write", alias, exc)
            else:
                if device.read(alias).get(alias, "") != taken or self._set_again(device, alias, set_at_us):
                    return  # cleared, or a newer value is pending: the next poll brings it
                log.warning("the cloud kept %s after a dated clear: clearing it with a write", alias)
        device.write({alias: ""})

    def _set_again(self, device, alias: str, set_at_us: int) -> bool:
        """Whether the cloud holds a value of ``alias`` set after ``set_at_us`` (peeking, not taking it)."""
        if self.pushes:
            return self._push_of(alias, lambda p: p[1] > set_at_us, pop=False) is not None
        values, last_modified = device.long_poll([alias], timeout_ms=1, since=_seconds(set_at_us))
        newer = http_date_us(last_modified)
        return bool(values.get(alias, "").strip()) and newer is not None and newer > set_at_us


def _seconds(us: int) -> Union[int, float]:
    """µs as Unix seconds for a record key or If-Modified-Since (floats are sent to the µs)."""
    return us // 1_000_000 if us % 1_000_000 == 0 else us / 1e6


def http_date_us(text: Optional[str]) -> Optional[int]:
    """An HTTP-date or Unix seconds as µs; None when absent or unreadable."""
    if not text:
        return None
    try:
        return int(round(float(text) * 1_000_000))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(text)
    return email.utils.mktime_tz(parsed) * 1_000_000 if parsed is not None else None
