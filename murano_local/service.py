"""Murano's device-side semantics over the store: products, activation, set/reported, long-poll waits.

Front ends (the HTTP Device API, the admin API, MQTT) call this and nothing below it. What a
request may hold (aliases, identities, values) is the Device API contract's (``device_api``);
its errors (``device_api.ContractError``) carry the status a front end answers.
"""
from __future__ import annotations

import re
import time
from typing import Dict, List, Optional, Sequence, Tuple

from device_api import MAX_LONG_POLL_MS, Invalid, check_alias, check_count, check_identity, check_value

from .content import ContentArea
from .device_uploads import UploadArea
from .events import Change, ChangeHub
from .store import DEFAULT_HISTORY_LIMIT, LimitExceeded, NotFound, Store, database_path

_HOST_PID = re.compile(r"^([a-z0-9]+)\.(?:devmode-)?m2\.", re.IGNORECASE)
_TAG = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_TAGS_PER_DEVICE = 64


class Unauthorized(Exception):
    """Missing or unknown token (401)."""


def check_tag(tag: str) -> str:
    """A device tag (a group for fleet views and rollouts): 1-64 letters, digits and ``_ . : -``."""
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise Invalid("invalid tag %r: 1-64 letters, digits and _ . : -" % str(tag)[:40])
    return tag


class Murano:
    """One local Murano: a default product plus any product named by a request's Host."""

    def __init__(self, data_dir: str, default_pid: str = "localproduct", allow_self_register: bool = False,
                 history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        self.data_dir = data_dir
        self.default_pid = default_pid.lower()
        self.allow_self_register = allow_self_register
        self.store = Store(database_path(data_dir), history_limit)
        self.store.ensure_product(self.default_pid, allow_self_register=allow_self_register)
        self.content = ContentArea(data_dir, self.store)
        self.uploads = UploadArea(data_dir, self.content)
        self.hub = ChangeHub()
        self._last_seen: Dict[Tuple[str, str], int] = {}

    def close(self) -> None:
        self.hub.close()
        self.store.close()

    # -- products ---------------------------------------------------------------------
    def product_for_host(self, host: Optional[str]) -> str:
        """``<pid>.m2.<domain>`` names the product; any other Host means the default one."""
        if host:
            match = _HOST_PID.match(host.strip())
            if match:
                return match.group(1).lower()
        return self.default_pid

    def product(self, pid: str) -> dict:
        info = self.store.product(pid)
        if info is None:
            return {"pid": pid, "allow_self_register": self.allow_self_register, "created_us": None}
        return info

    def set_self_register(self, pid: str, allowed: bool) -> None:
        self.store.ensure_product(pid, allow_self_register=allowed)

    # -- devices ------------------------------------------------------------------------
    def add_device(self, pid: str, identity: str) -> bool:
        check_identity(identity)
        self.store.ensure_product(pid, default_self_register=self.allow_self_register)
        return self.store.add_device(pid, identity)

    def activate(self, pid: str, identity: str) -> str:
        check_identity(identity)
        return self.store.activate(pid, identity, self.product(pid)["allow_self_register"])

    def authenticate(self, pid: str, token: Optional[str]) -> str:
        """The identity owning ``token`` in product ``pid``."""
        if not token:
            raise Unauthorized("missing X-Exosite-CIK")
        owner = self.store.device_by_token(token.strip())
        if owner is None or owner[0] != pid:
            raise Unauthorized("invalid token")
        self._last_seen[owner] = self.store.clock.now_us()
        return owner[1]

    def last_seen(self, pid: str, identity: str) -> Optional[int]:
        """When the device last made an authenticated request (µs; kept in memory only)."""
        return self._last_seen.get((pid, identity))

    def change_tags(self, pid: str, identity: str, add: Sequence[str] = (), remove: Sequence[str] = ()) -> List[str]:
        """Tag and untag a device (its groups for fleet views and rollouts); returns its tags."""
        for tag in (*add, *remove):
            check_tag(tag)
        try:
            tags = self.store.change_tags(pid, identity, add, remove, MAX_TAGS_PER_DEVICE)
        except LimitExceeded as exc:
            raise Invalid(str(exc))
        self.hub.publish(Change("tags", pid, identity, tuple((t, "") for t in tags), self.store.clock.now_us()))
        return tags

    # -- data ---------------------------------------------------------------------------
    def write(self, pid: str, identity: str, values: Sequence[Tuple[str, str]]) -> int:
        check_count(values)
        for alias, value in values:
            check_alias(alias)
            check_value(value, alias)
        ts = self.store.device_write(pid, identity, values)
        self.hub.publish(Change("write", pid, identity, tuple(values), ts))
        return ts

    def record(self, pid: str, identity: str, points: Sequence[Tuple[str, int, str]]) -> None:
        check_count(points)
        for alias, _ts, value in points:
            check_alias(alias)
            check_value(value, alias)
        self.store.device_record(pid, identity, points)
        self.hub.publish(Change("record", pid, identity, tuple((a, v) for a, _t, v in points),
                                max((t for _a, t, _v in points), default=0)))

    def operator_set(self, pid: str, identity: str, values: Sequence[Tuple[str, str]]) -> int:
        check_count(values)
        for alias, value in values:
            check_alias(alias)
            check_value(value, alias)
        ts = self.store.operator_set(pid, identity, values)
        self.hub.publish(Change("set", pid, identity, tuple(values), ts))
        return ts

    def read(self, pid: str, identity: str, aliases: Sequence[str]) -> List[Tuple[str, str]]:
        """What a device read returns: the ``set`` value (the pending one, if any) per alias."""
        state = self.store.state(pid, identity, aliases)
        return [(a, state[a]["set"]) for a in aliases if a in state and state[a]["set"] is not None]

    def long_poll(self, pid: str, identity: str, aliases: Sequence[str], timeout_ms: int,
                  since_us: Optional[int]) -> List[Tuple[str, str, int]]:
        """:meth:`poll`, waiting up to ``timeout_ms`` for an answer in the calling thread (for callers
        that embed the service; the HTTP front end holds its long polls without a thread each).

        Returns ``[(alias, value, timestamp_us)]``, empty on timeout. Holds no CPU while waiting.
        """
        deadline = time.monotonic() + min(timeout_ms, MAX_LONG_POLL_MS) / 1000.0
        key = (pid, identity)
        while True:
            seen = self.hub.version(key)
            found = self.poll(pid, identity, aliases, since_us)
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.hub.closed:
                return []
            self.hub.wait_change(key, seen, remaining)

    def poll(self, pid: str, identity: str, aliases: Sequence[str], since_us: Optional[int]) -> List[Tuple[str, str, int]]:
        """What a long poll answers now: pending cloud-set values newer than ``since_us``, dated to
        the second (see :meth:`Store.pending`); empty if it has to wait."""
        return self.store.pending(pid, identity, aliases, since_us, whole_seconds=True)

    def pending_sets(self, pid: str, identity: str) -> List[Tuple[str, str, int]]:
        """Every cloud-set value the device has not written back yet (MQTT pushes them on connect)."""
        return self.store.pending(pid, identity, list(self.store.state(pid, identity)), None)

    def state(self, pid: str, identity: str, aliases: Optional[Sequence[str]] = None) -> Dict[str, dict]:
        if self.store.device(pid, identity) is None:
            raise NotFound("no such device")
        return self.store.state(pid, identity, aliases)

    def history(self, pid: str, identity: str, alias: str, limit: int) -> List[dict]:
        if self.store.device(pid, identity) is None:
            raise NotFound("no such device")
        return self.store.history(pid, identity, alias, limit)
