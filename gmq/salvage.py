"""Start-up integrity check of the queue database, and salvage of a damaged one.

A database that fails its check is never deleted: it is renamed aside (with its WAL,
which may hold committed rows) and every row that can still be read is copied into a
fresh database, table by table. What was moved and how much was saved is returned so
that the caller can raise an alarm.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from atomic_config import connect_sqlite, fsync_dir

log = logging.getLogger(__name__)

SIDE_FILES = ("", "-wal", "-shm")
MAX_SKIPS = 1024  # damaged stretches skipped per table before giving up
MAX_GAP_LOOKUPS = 65536  # rowids of a damaged stretch tried one by one


@dataclass
class SalvageReport:
    moved_to: str
    reason: str
    salvaged: Dict[str, int]
    time: float


def check(path: str) -> Optional[str]:
    """None if ``path`` is absent or passes ``PRAGMA quick_check``; otherwise why it failed."""
    if not os.path.exists(path):
        return None
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if rows != [("ok",)]:
        return "; ".join(str(r[0]) for r in rows[:5])
    return None


def move_aside(path: str) -> str:
    """Rename the database and its side files to ``<path>.corrupt-<time>``; returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = "%s.corrupt-%s" % (path, stamp)
    n = 1
    while os.path.exists(target):
        n += 1
        target = "%s.corrupt-%s-%d" % (path, stamp, n)
    for suffix in SIDE_FILES:
        if os.path.exists(path + suffix):
            os.rename(path + suffix, target + suffix)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return target


def _read_rows(src: sqlite3.Connection, table: str) -> List[tuple]:
    """Every readable row of ``table`` in rowid order, skipping past damaged pages (only them)."""
    rows: List[tuple] = []
    start = None  # rows with a rowid above it are still to read (None: from the first)
    try:
        top = src.execute('SELECT max(rowid) FROM "%s"' % table).fetchone()[0]
    except sqlite3.DatabaseError:
        top = None
    for _ in range(MAX_SKIPS + 1):
        sql = 'SELECT rowid, * FROM "%s"' % table
        args: tuple = ()
        if start is not None:
            sql += " WHERE rowid > ?"
            args = (start,)
        sql += " ORDER BY rowid"
        try:
            for row in src.execute(sql, args):
                rows.append(row[1:])
                start = row[0]
            return rows
        except sqlite3.DatabaseError:
            bad = 0 if start is None else start
            start = _resume_after(src, table, bad, 2 ** 62 if top is None else top)
            if start is None:
                return rows
            if start - bad <= MAX_GAP_LOOKUPS:  # rows a scan cannot reach may still answer by rowid
                rows.extend(_rows_by_rowid(src, table, range(bad + 1, start + 1)))
    return rows


def _rows_by_rowid(src: sqlite3.Connection, table: str, rowids: range) -> List[tuple]:
    found = []
    for rowid in rowids:
        try:
            row = src.execute('SELECT * FROM "%s" WHERE rowid = ?' % table, (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None:
            found.append(row)
    return found


def _readable_after(src: sqlite3.Connection, table: str, rowid: int) -> bool:
    try:
        src.execute('SELECT rowid, * FROM "%s" WHERE rowid > ? ORDER BY rowid LIMIT 1' % table, (rowid,)).fetchall()
        return True
    except sqlite3.DatabaseError:
        return False


def _resume_after(src: sqlite3.Connection, table: str, bad: int, top: int) -> Optional[int]:
    """The smallest rowid above ``bad`` after which rows read again; None if none up to ``top``.

    Gallops forward past the damage, then bisects back, so the readable rows just after
    a damaged page are not jumped over.
    """
    step, good = 1, bad + 1
    while not _readable_after(src, table, good):
        if good >= top:
            return None
        bad, step = good, step * 2
        good = min(bad + step, top)
    while good - bad > 1:
        mid = (bad + good) // 2
        if _readable_after(src, table, mid):
            good = mid
        else:
            bad = mid
    return good


def salvage(path: str, reason: str, schema: List[str]) -> SalvageReport:
    """Move the damaged database aside and copy what is readable into a fresh one at ``path``.

    ``schema`` is the list of CREATE statements of the tables to rebuild; rows are copied
    for the tables named there, in column order.
    """
    moved = move_aside(path)
    log.error("queue database %s failed its check (%s); moved to %s", path, reason, moved)
    saved: Dict[str, int] = {}
    dst = connect_sqlite(path, synchronous="FULL")
    try:
        for stmt in schema:
            dst.execute(stmt)
        try:
            src = sqlite3.connect(moved, isolation_level=None)
        except sqlite3.DatabaseError:
            src = None
        if src is not None:
            try:
                for table in _tables(schema):
                    try:
                        rows = _read_rows(src, table)
                    except sqlite3.DatabaseError:
                        rows = []
                    if rows:
                        marks = ",".join("?" * len(rows[0]))
                        dst.execute("BEGIN")
                        saved[table] = 0
                        for row in rows:
                            try:
                                dst.execute('INSERT OR IGNORE INTO "%s" VALUES (%s)' % (table, marks), row)
                                saved[table] += 1
                            except sqlite3.Error:
                                continue
                        dst.execute("COMMIT")
            finally:
                src.close()
    finally:
        dst.close()
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    log.error("salvaged rows from %s: %s", moved, saved or "none")
    return SalvageReport(moved_to=moved, reason=reason, salvaged=saved, time=time.time())


def _tables(schema: List[str]) -> List[str]:
    names = []
    for stmt in schema:
        words = stmt.split()
        if len(words) > 2 and words[0].upper() == "CREATE" and words[1].upper() == "TABLE":
            names.append((words[5] if words[2].upper() == "IF" else words[2]).split("(")[0])
    return names
