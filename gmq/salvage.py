"""Start-up integrity check of the queue database, and salvage of a damaged one.

The check reads the WAL first, frame by frame, before sqlite opens the database (``wal``):
sqlite drops, silently, every frame after a damaged one, committed or not, and quick_check
cannot see what is gone. A database that fails its check is never deleted: every row that can still be read is
copied, table by table, into a fresh database beside it, together with a ``db_corrupt``
alarm; only when that copy is complete and fsynced are the damaged files (with the WAL,
which may hold committed rows) renamed aside and the copy put in their place. A start that
finds a salvage interrupted at any step finishes or redoes it (``finish_interrupted``).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from atomic_config import atomic_write, fsync_dir

from . import wal

log = logging.getLogger(__name__)

SIDE_FILES = ("", "-wal", "-shm")
COPY_SUFFIX = ".salvage"         # the salvaged copy being built
DONE_SUFFIX = ".salvage-done"    # the copy is complete: finish by moving the damaged files aside
IMAGE_SUFFIX = ".salvage-src"    # a damaged WAL's intact commits applied to the database: what salvage reads
CRASH_ENV = "GWE_GMQ_CRASH_AT"   # test hook: kill gmq at a named step of a salvage
MAX_SKIPS = 1024  # damaged stretches skipped per table before giving up
MAX_GAP_LOOKUPS = 65536  # rowids of a damaged stretch tried one by one


@dataclass
class SalvageReport:
    moved_to: str
    reason: str
    salvaged: Dict[str, int]
    time: float


def check(path: str) -> Optional[str]:
    """None if ``path`` is absent or passes ``PRAGMA quick_check`` with a WAL sqlite reads whole;
    otherwise why not. The WAL is read before sqlite opens the database."""
    scan = wal.inspect(path)
    if scan is not None and scan.damaged:
        return scan.describe()
    if not os.path.exists(path):
        return None
    try:
        conn = _open_source(path)
        if conn is None:
            return "not a database"
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise StorageError("cannot check %s: %s" % (path, exc)) from None
        return str(exc)
    if rows != [("ok",)]:
        return "; ".join(str(r[0]) for r in rows[:5])
    return None


def corrupt_name(path: str) -> str:
    """A free ``<path>.corrupt-<time>[-n]`` for the damaged files."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = "%s.corrupt-%s" % (path, stamp)
    n = 1
    while any(os.path.exists(target + suffix) for suffix in SIDE_FILES):
        n += 1
        target = "%s.corrupt-%s-%d" % (path, stamp, n)
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
            start = _rows_up_to_damage(src, table, start, rows)
            bad = 0 if start is None else start
            start = _resume_after(src, table, bad, 2 ** 62 if top is None else top)
            if start is None:
                return rows
            if start - bad <= MAX_GAP_LOOKUPS:  # rows a scan cannot reach may still answer by rowid
                rows.extend(_rows_by_rowid(src, table, range(bad + 1, start + 1)))
    return rows


def _rows_up_to_damage(src: sqlite3.Connection, table: str, start: Optional[int], rows: List[tuple]) -> Optional[int]:
    """Read on one row at a time from after ``start`` until the damage; returns the last rowid read.

    sqlite3's cursor steps one row ahead, so the row just before a damaged page was read but
    never handed out when the step onto the damage raised; one row a query loses nothing.
    """
    while True:
        try:
            row = src.execute('SELECT rowid, * FROM "%s" WHERE rowid > ? ORDER BY rowid LIMIT 1' % table,
                              (-(2 ** 63) if start is None else start,)).fetchone()
        except sqlite3.DatabaseError:
            return start
        if row is None:
            return start
        rows.append(row[1:])
        start = row[0]


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


def _crash_point(point: str) -> None:
    """Test hook: SIGKILL this process at ``point`` of a salvage (``GWE_GMQ_CRASH_AT``)."""
    if os.environ.get(CRASH_ENV) == point:
        log.warning("test hook %s=%s: killing this process", CRASH_ENV, point)
        os.kill(os.getpid(), signal.SIGKILL)


class StorageError(OSError):
    """The database cannot be read for a reason that is not damage (a full disk, an I/O error)."""


# errors that the file's bytes cause, not the disk's state: a scribbled record can claim a value
# longer than sqlite's limit (TOOBIG) or of the wrong type (MISMATCH) as well as be CORRUPT
DAMAGE_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_MISMATCH,
                sqlite3.SQLITE_RANGE, sqlite3.SQLITE_FORMAT)


def is_damage(exc: sqlite3.DatabaseError) -> bool:
    """The file's content is wrong (DAMAGE_CODES), as opposed to the disk's state (I/O, full, locked)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in DAMAGE_CODES
    return "malformed" in str(exc) or "not a database" in str(exc)


def _open_source(path: str) -> Optional[sqlite3.Connection]:
    """The database read-only where sqlite allows it (no checkpoint may rewrite a damaged file on
    close); None if it is damaged beyond opening. Any other failure (a 100 % full disk leaves no
    room for the -shm) is a StorageError: a healthy database must never be taken for a damaged one.

    ``writable_schema`` (nothing is written) lets sqlite read a file shorter than its header says,
    as a truncated one is: its first pages, and every row on them, are still there."""
    last: Optional[sqlite3.DatabaseError] = None
    for uri in ("file:%s?mode=ro" % path, None):
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None) if uri else \
                sqlite3.connect(path, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            last = exc
            continue
        try:
            conn.execute("PRAGMA writable_schema=ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.DatabaseError as exc:
            conn.close()
            if is_damage(exc):
                return None
            last = exc
    raise StorageError("cannot open %s: %s" % (path, last))


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finish_interrupted(path: str) -> Optional[str]:
    """Complete (or discard) a salvage that an earlier start did not finish; returns where the
    damaged files went when one was completed.

    ``<path>.salvage-done`` says the salvaged copy ``<path>.salvage`` is complete and on disk:
    the damaged files still named ``<path>*`` are moved to the name it holds (the WAL first, so
    that the database never meets a WAL not its own), then the copy becomes ``<path>``. Without
    the marker a ``<path>.salvage`` is an unfinished copy: it is removed, and the damaged
    database, still in place, is checked and salvaged again.
    """
    directory = os.path.dirname(os.path.abspath(path))
    marker, copy = path + DONE_SUFFIX, path + COPY_SUFFIX
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            target = json.load(f)["moved_to"]
        if os.path.exists(copy):
            for suffix in ("-wal", "-shm", ""):
                if os.path.exists(path + suffix):
                    os.rename(path + suffix, target + suffix)
                    fsync_dir(directory)
                    _crash_point("salvage_moved" + (suffix or "_db"))
            os.rename(copy, path)
            fsync_dir(directory)
            _crash_point("salvage_renamed")
        os.unlink(marker)
        fsync_dir(directory)
        log.warning("finished the salvage of %s interrupted at its last steps (damaged files in %s)", path, target)
        return target
    for leftover in (copy, copy + "-journal", path + IMAGE_SUFFIX):
        if os.path.exists(leftover):
            os.unlink(leftover)
            fsync_dir(directory)
            log.warning("removed %s, an unfinished salvage: salvaging again", leftover)
    return None


def salvage(path: str, reason: str, schema: List[str]) -> SalvageReport:
    """Copy every readable row of the damaged database at ``path`` into a fresh one, which then
    takes its place; the damaged files are kept as ``<path>.corrupt-<time>``.

    Restartable at every step: the damaged database stays where it is, the source of truth,
    until the copy (which holds the ``db_corrupt`` alarm) is complete and fsynced; then a marker
    makes the rest (moving the damaged files aside, renaming the copy) something the next start
    finishes if this one dies (``finish_interrupted``). ``schema`` is the list of CREATE
    statements of the tables to rebuild; rows are copied for the tables named there. A damaged
    WAL's intact commits, which sqlite would drop, are read too (from an image of the database
    with them applied, ``wal.write_image``).
    """
    directory = os.path.dirname(os.path.abspath(path))
    target = corrupt_name(path)
    copy = path + COPY_SUFFIX
    log.error("queue database %s failed its check (%s); salvaging what is readable", path, reason)
    source = path
    scan = wal.inspect(path)
    if scan is not None and scan.damaged:
        source = path + IMAGE_SUFFIX
        wal.write_image(path, scan, source)
    saved: Dict[str, int] = {}
    when = time.time()
    dst = sqlite3.connect(copy, isolation_level=None)
    try:
        dst.execute("PRAGMA journal_mode=DELETE")  # one file: it is renamed into place as it is
        dst.execute("PRAGMA synchronous=FULL")
        for stmt in schema:
            dst.execute(stmt)
        src = _open_source(source)
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
        dst.execute("INSERT INTO alarms (kind, time, detail) VALUES ('db_corrupt', ?, ?)",
                    (when, "moved to %s (%s); salvaged %s" % (target, reason, saved)))
    finally:
        dst.close()
    _fsync_file(copy)
    if source != path:
        os.unlink(source)
    fsync_dir(directory)
    _crash_point("salvage_copied")
    atomic_write(path + DONE_SUFFIX, json.dumps({"moved_to": target}), mode=0o600)
    _crash_point("salvage_marked")
    finish_interrupted(path)
    log.error("salvaged rows from %s: %s", target, saved or "none")
    return SalvageReport(moved_to=target, reason=reason, salvaged=saved, time=when)


def _tables(schema: List[str]) -> List[str]:
    names = []
    for stmt in schema:
        words = stmt.split()
        if len(words) > 2 and words[0].upper() == "CREATE" and words[1].upper() == "TABLE":
            names.append((words[5] if words[2].upper() == "IF" else words[2]).split("(")[0])
    return names
