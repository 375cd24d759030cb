"""The one place sqlite connections are opened, so every database gets the same safety settings."""
from __future__ import annotations

import os
import sqlite3
import time
from typing import Callable, Sequence, TypeVar

from .files import PathLike

T = TypeVar("T")


def _until_unlocked(step: Callable[[], T], deadline: float) -> T:
    """Run ``step``, retrying while another connection holds the lock. Switching to WAL and
    creating tables in autocommit mode upgrade a read lock to a write lock, and sqlite answers
    that with SQLITE_BUSY at once (deadlock avoidance) instead of calling the busy handler:
    several processes opening a new database together would otherwise fail at random."""
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def connect_sqlite(path: PathLike, synchronous: str = "FULL", busy_timeout_ms: int = 10000,
                   check_same_thread: bool = True, schema: Sequence[str] = ()) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with a busy timeout, in autocommit mode.

    Transactions are explicit (``BEGIN`` / ``COMMIT``), so a commit is exactly where the
    caller says. ``synchronous=FULL`` fsyncs the WAL on every commit: what a commit
    returns is on disk. ``schema`` statements (``CREATE ... IF NOT EXISTS``) run in one
    write transaction, safe against other processes opening the same database at once.
    """
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError("bad synchronous level %r" % synchronous)
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(directory, exist_ok=True)
    deadline = time.monotonic() + busy_timeout_ms / 1000.0
    conn = sqlite3.connect(os.fspath(path), timeout=busy_timeout_ms / 1000.0, isolation_level=None,
                           check_same_thread=check_same_thread)
    try:
        conn.execute("PRAGMA busy_timeout=%d" % int(busy_timeout_ms))
        _until_unlocked(lambda: conn.execute("PRAGMA journal_mode=WAL"), deadline)
        conn.execute("PRAGMA synchronous=%s" % synchronous.upper())
        if schema:
            _until_unlocked(lambda: _apply(conn, schema), deadline)
    except BaseException:
        conn.close()
        raise
    return conn


def _apply(conn: sqlite3.Connection, statements: Sequence[str]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in statements:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
