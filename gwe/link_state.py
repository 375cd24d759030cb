"""gwe's own link to Murano, kept in ``run/gwe/gwe-link.json`` for ``gwe status`` (another process).

Written on every change the daemon sees (a transition, a failed attempt), never on each
successful poll; the file is small and lives under ``run/`` (tmpfs on most gateways).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

from atomic_config import GwePaths, atomic_write

log = logging.getLogger(__name__)

LINK_FILE = "gwe-link.json"


def link_file(paths: GwePaths) -> str:
    return os.path.join(paths.run, LINK_FILE)


def write_link_state(paths: GwePaths, snapshot: dict) -> None:
    """Best effort: a full or read-only run directory must not stop the daemon."""
    try:
        os.makedirs(paths.run, exist_ok=True)
        atomic_write(link_file(paths), json.dumps(snapshot, sort_keys=True) + "\n", keep_previous=False)
    except OSError as exc:
        log.debug("cannot write %s: %s", link_file(paths), exc)


def read_link_state(paths: GwePaths) -> Optional[dict]:
    """The daemon's last published link state, or None (not running yet, or unreadable)."""
    try:
        with open(link_file(paths)) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
