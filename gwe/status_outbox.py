"""fetch_status values on disk until the cloud has them: in order, each once.

An install can finish while the uplink is down (or gwe be killed right after it): its outcome is
the operator's only news of it. Every status is kept here (one JSON list, rewritten through
``atomic_config``, fsynced) before it is sent, and leaves only once its write succeeded, so the
oldest is always sent first and a link that comes back, a gwe restart or a power cut loses none.

"Once": only the oldest entry can be in doubt (its write was sent but its removal not saved,
or the write failed after the server may have taken it). Before sending such an entry again,
gwe reads ``fetch_status``: the cloud holding exactly that text (every status carries its own
start time) means it arrived, and it is dropped unsent.
"""
from __future__ import annotations

import json
import logging
import os
from typing import List

from atomic_config import RecoveryError, atomic_write, make_dirs, read_recovering

log = logging.getLogger(__name__)

FETCH_STATUS = "fetch_status"
MAX_KEPT = 64  # statuses waiting at most (oldest dropped beyond: ~0.3 MiB on disk)


class StatusOutbox:
    """The ``fetch_status`` values not yet delivered, oldest first, in ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._in_doubt = True  # at start nobody knows whether the last write before a stop arrived
        try:
            kept = read_recovering(path, _parse)
        except (RecoveryError, OSError) as exc:  # both generations damaged, or unreadable: say so
            log.error("undelivered fetch_status lost: %s", exc)
            kept = None
        self._entries: List[str] = list(kept or [])

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, status: str) -> None:
        """Keep ``status`` (durably) behind those still waiting."""
        self._entries.append(status)
        if len(self._entries) > MAX_KEPT:
            dropped = self._entries[:-MAX_KEPT]
            self._entries = self._entries[-MAX_KEPT:]
            self._in_doubt = False  # the entry in doubt may be among the dropped
            log.error("%d undelivered fetch_status dropped (more than %d waiting)", len(dropped), MAX_KEPT)
        self._save()

    def deliver(self, device) -> None:
        """Write the waiting statuses, oldest first; raises (keeping the rest) when one cannot go."""
        from device_client import errors

        while self._entries:
            status = self._entries[0]
            if self._in_doubt and device.read(FETCH_STATUS).get(FETCH_STATUS) == status:
                log.info("fetch_status already delivered before a failure or restart: not sent again")
            else:
                self._in_doubt = True
                try:
                    device.write({FETCH_STATUS: status})
                except (errors.RequestError, errors.Forbidden, errors.NotFound, errors.Conflict) as exc:
                    log.error("fetch_status refused, not sent again: %s", exc)  # sending it again won't help
            self._entries.pop(0)
            self._save()
            self._in_doubt = False

    def _save(self) -> None:
        """Write the list; a full or broken disk is logged, not raised: the list in memory still
        goes out while gwe runs (only a crash meanwhile can lose what was not saved)."""
        try:
            make_dirs(os.path.dirname(self.path))
            atomic_write(self.path, json.dumps(self._entries), mode=0o600, is_valid=_valid)
        except OSError as exc:
            log.error("undelivered fetch_status not saved (%d waiting): %s", len(self._entries), exc)


def _parse(raw: bytes) -> List[str]:
    entries = json.loads(raw)
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ValueError("not a list of fetch_status texts")
    return entries


def _valid(raw: bytes) -> bool:
    try:
        _parse(raw)
    except ValueError:
        return False
    return True
