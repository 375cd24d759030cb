"""The one place sqlite connections are opened, so every database gets the same safety settings."""
from __future__ import annotations

import os
import sqlite3

from .files import PathLike


def connect_sqlite(path: PathLike, synchronous: str = "FULL", busy_timeout_ms: int = 10000,
                   check_same_thread: bool = True) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with a busy timeout, in autocommit mode.

    Transactions are explicit (``BEGIN`` / ``COMMIT``), so a commit is exactly where the
    caller says. ``synchronous=FULL`` fsyncs the WAL on every commit: what a commit
    returns is on disk.
    """
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError("bad synchronous level %r" % synchronous)
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(directory, exist_ok=True)
    conn = sqlite3.connect(os.fspath(path), timeout=busy_timeout_ms / 1000.0, isolation_level=None,
                           check_same_thread=check_same_thread)
    conn.execute("PRAGMA busy_timeout=%d" % int(busy_timeout_ms))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=%s" % synchronous.upper())
    return conn
