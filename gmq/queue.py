"""DurableQueue: values on disk (sqlite, WAL, synchronous=FULL) before anyone is told "stored".

``append_many`` returns only after the values of every request given are committed and
fsynced, in one transaction: group commit is done by the caller, who gathers requests
(gmq's event loop gathers everything that arrived during the previous commit), so no
producer thread ever waits to be woken by another.

The queue is the one owner of gmq.db (queue, dead letters, counters, alarms and the clients
table): nothing else opens a connection to it. Every write (appends, client registrations,
tokens, ack, dead-letter, drops, expiry) takes the writer's turn, a FIFO hand-over between
threads, so the database has exactly one writer and never waits in sqlite's busy handler.
The event loop never blocks for the turn: ``claim_or_notify`` gives it the turn at once or
calls it back when the thread holding it (the forwarder) passes it on.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from collections import deque
from typing import Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from atomic_config import connect_sqlite, free_disk, fsync_dir

from . import salvage
from .clients import identity_id
from .limits import Limits
from .reserve import SUFFIX as RESERVE_SUFFIX, DiskReserve
from .salvage import StorageError

log = logging.getLogger(__name__)

COUNTERS = ("accepted", "rejected", "dropped", "expired", "delivered", "dead_lettered", "retried", "resent")
SCAN = 500
DELETE_CHUNK = 500
ROWS_PER_INSERT = 5000  # 6 parameters a row, under sqlite's 32766
FREE_DISK_TTL_S = 0.05
RESERVE_RETRY_S = 1.0  # while the disk reserve is released: how often to look for room to take it back
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024
RETAKE_HEADROOM = 1024 * 1024  # free beyond the reserve before it is taken (again)
NO_ROOM_FREE = 64 * 1024  # an I/O error with less free than this on the queue's disk is a full disk
WRITER_CACHE_KIB = 512
READER_CACHE_KIB = 256
SYNCHRONOUS_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}  # PRAGMA synchronous, for status
INSERT_HEAD = "INSERT INTO queue (client, alias, ts, value, arrived, size) VALUES "
INSERT_ROW = "(?,?,?,?,?,?)"

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY AUTOINCREMENT, client INTEGER NOT NULL, "
    "alias TEXT NOT NULL, ts REAL NOT NULL, value TEXT NOT NULL, arrived REAL NOT NULL, size INTEGER NOT NULL, "
    "attempts INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS dead_letter (id INTEGER PRIMARY KEY, client INTEGER NOT NULL, alias TEXT NOT NULL, "
    "ts REAL NOT NULL, value TEXT NOT NULL, arrived REAL NOT NULL, status INTEGER, reason TEXT NOT NULL, "
    "moved REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS alarms (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, time REAL NOT NULL, "
    "detail TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS clients (id INTEGER PRIMARY KEY, serial TEXT UNIQUE, vendor TEXT, model TEXT, "
    "local_token TEXT NOT NULL UNIQUE, upstream_token TEXT, created REAL NOT NULL)",
    # the highest id of a client's values handed upstream: one row a client, not one update a value
    "CREATE TABLE IF NOT EXISTS sent (client INTEGER PRIMARY KEY, upto INTEGER NOT NULL)",
]
# 2: a client's id is derived from its identity (clients.identity_id); 3: what was sent is the
# watermark in ``sent`` (queue.attempts, which counted sends per value, is no longer written)
SCHEMA_VERSION = 3
CLIENT_COLUMNS = "id, serial, vendor, model, local_token, upstream_token"
INDEXES = ["CREATE INDEX IF NOT EXISTS queue_by_client ON queue (client, id)"]


Value = Tuple[str, Optional[float], str]  # alias, timestamp (None = arrival), value


class Rejected(Exception):
    """Values not stored; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


IO_FAILURES = (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB,
               sqlite3.SQLITE_CANTOPEN)


def is_io_failure(exc: BaseException) -> bool:
    """Did the disk fail under ``exc`` (an I/O error, a filesystem turned read-only, damage)?"""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in IO_FAILURES
    return any(word in str(exc) for word in ("I/O error", "readonly", "malformed", "not a database", "unable to open"))


def is_full(exc: BaseException, directory: str) -> bool:
    """Did ``exc`` come from a full disk? SQLITE_FULL, or an I/O error (the -shm cannot grow) on a
    filesystem with almost nothing free."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == sqlite3.SQLITE_FULL or "full" in str(exc):
        return True
    if code is not None and code & 0xFF != sqlite3.SQLITE_IOERR:
        return False
    try:
        return free_disk(directory) < NO_ROOM_FREE
    except OSError:
        return False


class _Trouble:
    """A storage condition logged once when it begins and once when it ends, not at every write."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.detail: Optional[str] = None

    def begins(self, detail: str) -> None:
        if self.detail is None:
            log.error("%s: %s", self.what, detail)
        self.detail = detail

    def ends(self) -> None:
        if self.detail is not None:
            self.detail = None
            log.info("%s: no longer (a write succeeded)", self.what)


def _records(method: Callable) -> Callable:
    """A write of gmq's own records (deliveries, dead letters, tokens, alarms) that a full disk
    must not stop: when the disk is full the queue makes room (``_make_room``) and runs it again;
    what still fails raises StorageError, logged once until a write succeeds again."""

    @functools.wraps(method)
    def write(self: "DurableQueue", *args, **kwargs):
        tried: set = set()
        while True:
            try:
                result = method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                if is_full(exc, self.directory):
                    if self._make_room(tried):
                        continue
                elif is_io_failure(exc):
                    self._fail(str(exc))
                self._records_trouble.begins(str(exc))
                raise StorageError("cannot record in %s: %s" % (self.path, exc)) from None
            self._records_trouble.ends()
            return result

    return write


@dataclass
class QueuedValue:
    id: int
    client: int
    alias: str
    ts: float
    value: str
    arrived: float


@dataclass
class _Entry:
    rows: List[tuple]
    size: int
    new_client: Optional[tuple] = None  # a client row to insert with these values (CLIENT_COLUMNS)
    status: int = 0
    reason: str = ""


def _held_lock() -> threading.Lock:
    """A lock already held: another thread's release() is the cheapest wake-up Python has."""
    lock = threading.Lock()
    lock.acquire()
    return lock


class _Claim:
    """A writer waiting for its turn: ``turn.acquire()`` returns when it is given, or ``notify()`` is called."""

    __slots__ = ("turn", "notify")

    def __init__(self, notify: Optional[Callable[[], None]] = None) -> None:
        self.notify = notify
        self.turn = None if notify is not None else _held_lock()


@dataclass
class _State:
    depth: int = 0
    bytes: int = 0
    counters: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    by_client: Dict[int, int] = field(default_factory=dict)
    sent: Dict[int, int] = field(default_factory=dict)  # client -> highest id handed upstream


def value_size(alias: str, value: str) -> int:
    """The bytes a value counts against the queue bound: its alias and value in UTF-8."""
    return len(alias.encode("utf-8")) + len(value.encode("utf-8"))


class DurableQueue:
    """The queue database: group-committed appends, ordered takes, acks, dead letters, bounds."""

    def __init__(self, path: str, limits: Optional[Limits] = None, clock: Callable[[], float] = time.time,
                 fsync: bool = True) -> None:
        """Open (checking, and salvaging if damaged) the database at ``path``.

        ``fsync=False`` (synchronous=OFF) breaks the durability contract: only for the ingest
        bench's comparison (server.bench_fsync), never a product setting.
        """
        self.fsync = fsync
        self.path = os.path.abspath(path)
        self.limits = (limits or Limits()).validate()
        self.clock = clock
        self.directory = os.path.dirname(self.path)
        os.makedirs(self.directory, exist_ok=True)
        self.salvage_report: Optional[salvage.SalvageReport] = None
        self.reserve = DiskReserve(self.path + RESERVE_SUFFIX)
        self._records_trouble = _Trouble("gmq cannot record deliveries")
        self._ingest_trouble = _Trouble("new values refused")
        self._reserve_used = False
        self.on_append: Optional[Callable[[], None]] = None  # called after each commit that stored values
        self.on_maintenance_due: Optional[Callable[[], None]] = None  # called when maintain() has new work
        self.failed: Optional[str] = None  # why the database is no longer trusted (see _fail)
        self._open_on_any_disk()
        # kept open (closing an fd of gmq.db drops sqlite's locks); read-write, as glibc's fallback reads
        self._probe = os.open(self.path, os.O_RDWR)
        self._retake_reserve()
        self._rlock = threading.Lock()
        # page caches: the writer touches the tail of the table and index, the reader reads in
        # passing; sqlite's default (2 MiB each) would make RSS grow with the backlog
        for conn, kib in ((self._conn, WRITER_CACHE_KIB), (self._rconn, READER_CACHE_KIB)):
            conn.execute("PRAGMA cache_size=-%d" % kib)
        self._lock = threading.Lock()
        self._busy = False
        self._waiting: Deque[_Claim] = deque()
        self._free, self._free_at, self._free_used = 0, float("-inf"), 0
        self._state = self._load_state()
        self._dirty: set = set()
        last = self._conn.execute("SELECT max(arrived) FROM queue").fetchone()[0]
        self._last_us = int(last * 1e6) if last else 0

    # -- start-up -------------------------------------------------------------------------
    def _open(self) -> None:
        """Check (salvaging if damaged) and open the database: the writer and the reader."""
        salvage.finish_interrupted(self.path)
        problem = salvage.check(self.path)
        if problem is not None:
            self.salvage_report = salvage.salvage(self.path, problem, SCHEMA)
        conns: List[sqlite3.Connection] = []
        try:
            conns.append(connect_sqlite(self.path, synchronous="FULL" if self.fsync else "OFF",
                                       check_same_thread=False))
            conn = conns[0]
            os.chmod(self.path, 0o600)  # it holds upstream tokens (sqlite gives -wal/-shm the same mode)
            conn.execute("PRAGMA journal_size_limit=%d" % JOURNAL_SIZE_LIMIT)
            conn.execute("BEGIN")
            for stmt in SCHEMA + INDEXES:
                conn.execute(stmt)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < 2:
                self._renumber_clients(conn)
            if version < 3:  # values sent before the upgrade count as sent
                conn.execute("INSERT OR REPLACE INTO sent (client, upto) "
                             "SELECT client, max(id) FROM queue WHERE attempts > 0 GROUP BY client")
            if version < SCHEMA_VERSION:
                conn.execute("PRAGMA user_version=%d" % SCHEMA_VERSION)
            conn.execute("COMMIT")
            fsync_dir(self.directory)  # the WAL file's directory entry must survive a power cut too
            conns.append(connect_sqlite(self.path, synchronous="FULL" if self.fsync else "OFF",
                                       check_same_thread=False))
        except BaseException:
            for c in conns:
                c.close()
            raise
        self._conn, self._rconn = conns

    def _open_on_any_disk(self) -> None:
        """``_open``, on a 100 % full disk too: the reserve makes room for the -shm and the WAL.
        A failure that is not damage is a StorageError (gmq exits with one line; nothing is moved)."""
        for attempt in range(2):
            try:
                self._open()
                return
            except (StorageError, sqlite3.Error) as exc:
                if attempt or not (is_full(exc, self.directory) and self._release_reserve()):
                    raise StorageError("cannot open %s: %s" % (self.path, exc)) from None

    # -- a failing disk -------------------------------------------------------------------
    def _journal_refuses(self) -> Optional[str]:
        """After a commit: why the filesystem no longer takes a journal transaction, or None.

        fdatasync can return success for a commit the filesystem failed under: when ext4 aborts its
        journal (an I/O error, ``errors=remount-ro``) while fdatasync waits for the commit's pages,
        the transaction holding the file's growth is dropped, and fdatasync, finding it no longer
        running, reports success; the commit is gone after the reboot. Allocating a byte gmq.db
        already has starts a journal transaction and changes nothing; it fails once the journal is
        aborted, and so tells a commit that may not be on disk. (Filesystems without fallocate:
        glibc reads the byte and, finding it non-zero, writes nothing.)
        """
        if not self.fsync:
            return None  # nothing is durable anyway (the bench's switch)
        try:
            os.posix_fallocate(self._probe, 0, 1)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None  # a full disk, or no such call: no sign of a failed journal
            return "the filesystem failed after the commit (%s): it may not be on disk" % os.strerror(exc.errno)
        return None

    def _fail(self, why: str) -> None:
        """The disk failed under a write: nothing gmq's connection says is on disk can be trusted
        (sqlite's cache and the kernel's may hold what the disk lost), so from now on every write is
        refused, and so is every acknowledgement, until gmq is restarted on a healthy disk."""
        if self.failed is None:
            self.failed = why
            log.error("storage failed: %s; gmq stores and records nothing more (new values get 500) until it is "
                      "restarted on a healthy disk", why)

    # -- a full disk ----------------------------------------------------------------------
    def _release_reserve(self) -> bool:
        if not self.reserve.release():
            return False
        self._reserve_used = True
        if self.on_maintenance_due is not None:
            self.on_maintenance_due()  # maintain() now looks for room every second
        log.warning("disk full: released the %d-byte reserve %s so that deliveries can still be recorded; new "
                    "values get 507 until there is room for it again", self.reserve.size, self.reserve.path)
        return True

    def _retake_reserve(self) -> None:
        """Hold the reserve again once the filesystem has room for it and for new values beside it
        (``min_free_disk``, at least RETAKE_HEADROOM): not the room it just gave back, still free the
        moment after it was released, which the write that released it needs."""
        if self.reserve.held:
            return
        if free_disk(self.directory) < self.reserve.size + max(self.limits.min_free_disk, RETAKE_HEADROOM):
            return
        if not self.reserve.take():
            return
        if self._reserve_used:  # taking it at start-up is routine: said only after it was used
            log.info("disk reserve of %d bytes held again in %s; new values are accepted again",
                     self.reserve.size, self.reserve.path)
        else:
            log.debug("disk reserve of %d bytes held in %s", self.reserve.size, self.reserve.path)
        self._reserve_used = False

    def _make_room(self, tried: set) -> bool:
        """Room for a write of records on a full disk: release the reserve, or else restart the WAL
        (a checkpoint, after which sqlite rewrites the WAL from its start instead of growing it).
        Each at most once per write (``tried``); False if nothing more can be done."""
        if "reserve" not in tried:
            tried.add("reserve")
            if self._release_reserve():
                return True
        if "wal" not in tried:
            tried.add("wal")
            self._claim()
            try:
                busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                return not busy
            except sqlite3.Error as exc:
                log.debug("checkpoint on a full disk failed: %s", exc)
            finally:
                self._release()
        return False

    @staticmethod
    def _renumber_clients(conn: sqlite3.Connection) -> None:
        """Schema 1 numbered clients 1, 2, ...: give each (and its values) the id of its identity."""
        for old, serial, token in conn.execute("SELECT id, serial, local_token FROM clients").fetchall():
            new = identity_id(serial, token)
            if new != old:
                for table, column in (("clients", "id"), ("queue", "client"), ("dead_letter", "client")):
                    conn.execute("UPDATE %s SET %s = ? WHERE %s = ?" % (table, column, column), (new, old))

    def _load_state(self) -> _State:
        st = _State()
        depth, size = self._conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM queue").fetchone()
        st.depth, st.bytes = depth, size
        st.by_client = dict(self._conn.execute("SELECT client, count(*) FROM queue GROUP BY client"))
        st.sent = dict(self._conn.execute("SELECT client, upto FROM sent"))
        for name, value in self._conn.execute("SELECT name, value FROM counters"):
            st.counters[name] = value
        seq = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
        st.counters["accepted"] = seq[0] if seq else 0  # every accepted value took the next id
        return st

    # -- the single-writer turn -----------------------------------------------------------
    def _release(self) -> None:
        """Pass the writer's turn to the next claimant (FIFO), or mark the database idle."""
        with self._lock:
            if not self._waiting:
                self._busy = False
                return
            nxt = self._waiting.popleft()
        if nxt.notify is not None:
            nxt.notify()
        else:
            nxt.turn.release()

    def claim_or_notify(self, notify: Callable[[], None]) -> bool:
        """Take the writer's turn now (True), or queue for it (False): then ``notify()`` is called,
        from the thread that passes the turn on, and the caller holds it from that moment.

        For a thread that must not block (the event loop); it then calls ``append_many(...,
        claimed=True)``, which uses the turn and passes it on.
        """
        with self._lock:
            if not self._busy:
                self._busy = True
                return True
            self._waiting.append(_Claim(notify))
            return False

    def _claim(self) -> None:
        with self._lock:
            if not self._busy:
                self._busy = True
                return
            claim = _Claim()
            self._waiting.append(claim)
        claim.turn.acquire()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN..COMMIT in the writer's turn; in-memory state is restored if it fails."""
        self._claim()
        try:
            if self.failed is not None:
                raise StorageError("storage failed: %s" % self.failed)
            conn = self._conn
            saved = self._save()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                self._flush_counters(conn)
                conn.execute("COMMIT")
                problem = self._journal_refuses()
                if problem is not None:
                    self._fail(problem)
                    raise StorageError("storage failed: %s" % problem)
            except BaseException:
                self._rollback(conn)
                self._restore(saved)
                raise
        finally:
            self._release()

    def _save(self) -> tuple:
        st = self._state
        return st.depth, st.bytes, dict(st.counters), set(self._dirty), dict(st.by_client), dict(st.sent)

    def _restore(self, saved: tuple) -> None:
        st = self._state
        st.depth, st.bytes, st.counters, self._dirty, st.by_client, st.sent = saved

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # sqlite already rolled back (e.g. after SQLITE_FULL)

    def _count(self, name: str, n: int) -> None:
        if n:
            self._state.counters[name] += n
            if name != "accepted":  # derived from the id sequence, see _load_state
                self._dirty.add(name)

    def _flush_counters(self, conn: sqlite3.Connection) -> None:
        if self._dirty:
            conn.executemany("INSERT INTO counters (name, value) VALUES (?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                             [(n, self._state.counters[n]) for n in self._dirty])
            self._dirty = set()

    # -- append -----------------------------------------------------------------------------
    def append(self, client: int, values: Sequence[Value]) -> int:
        """Store one request's ``(alias, ts, value)`` triples durably (ts None = arrival time); all or none.

        Returns how many were stored, once fsynced; raises ``Rejected`` (413, 507, 500).
        """
        rejected = self.append_many([(client, values)])[0]
        if rejected is not None:
            raise rejected
        return len(values)

    def append_many(self, requests: Sequence[tuple], claimed: bool = False) -> List[Optional[Rejected]]:
        """Several requests' values in one commit (for a caller that gathers them itself).

        Each request is ``(client, values)`` or ``(client, values, new_client_row)``: the row
        (``CLIENT_COLUMNS``) of a client not stored yet, inserted in the same transaction. For
        each request: None once it is fsynced, or the ``Rejected`` that says why nothing of it
        was stored. ``claimed``: the caller holds the writer's turn (``claim_or_notify``); it is
        passed on when this returns.
        """
        results: List[Optional[Rejected]] = [None] * len(requests)
        entries: List[Tuple[int, _Entry]] = []
        try:
            for i, request in enumerate(requests):
                try:
                    entry = self._entry(*request)
                except Rejected as exc:
                    results[i] = exc
                    continue
                if entry is not None:
                    entries.append((i, entry))
            if entries:
                if not claimed:
                    self._claim()
                    claimed = True
                self._commit([e for _, e in entries])
        finally:
            if claimed:
                self._release()
        for i, e in entries:
            if e.status:
                results[i] = Rejected(e.status, e.reason)
        return results

    def _entry(self, client: int, values: Sequence[Value], new_client: Optional[tuple] = None) -> Optional[_Entry]:
        """Check sizes before anything waits for the writer: 413 per value, 507 if it can never fit."""
        limits = self.limits
        rows = []
        size = 0
        for alias, ts, value in values:
            n = value_size(alias, value)
            if n > limits.max_value_bytes:
                raise Rejected(413, "value of %r is %d bytes; the limit is %d" % (alias, n, limits.max_value_bytes))
            rows.append((client, alias, ts, value, n))
            size += n
        if not rows and new_client is None:
            return None
        if size > limits.max_bytes:
            raise Rejected(507, "request needs %d bytes; the whole queue holds %d" % (size, limits.max_bytes))
        return _Entry(rows, size, new_client)

    def _commit(self, batch: List[_Entry]) -> None:
        """One transaction for a group of appends; sets each entry's status (0 = stored)."""
        conn = self._conn
        st = self._state
        limits = self.limits
        saved = self._save()
        free = self._free_estimate()
        accepted: List[_Entry] = []
        total = 0
        for e in batch:
            if self.failed is not None:
                e.status, e.reason = 500, "storage failed: %s; nothing is stored until gmq is restarted" % self.failed
            elif free - total - e.size < limits.min_free_disk:
                e.status, e.reason = 507, "free disk below the reserve of %d bytes" % limits.min_free_disk
            elif not self.reserve.held:
                e.status, e.reason = 507, "disk full: gmq needs its reserve for recording deliveries"
            elif limits.policy == "reject_new" and st.bytes + total + e.size > limits.max_bytes:
                e.status, e.reason = 507, "queue full (%d of %d bytes)" % (st.bytes + total, limits.max_bytes)
            else:
                accepted.append(e)
                total += e.size
                continue
            self._count("rejected", len(e.rows))
        if not accepted:
            return
        rows = self._stamp([r for e in accepted for r in e.rows])
        new_clients = [e.new_client for e in accepted if e.new_client is not None]
        overflow = st.bytes + total - limits.max_bytes
        try:
            if overflow <= 0 and len(rows) <= ROWS_PER_INSERT and not new_clients:
                self._insert(conn, rows)  # one statement in autocommit: one GIL release, one fsync
            else:
                conn.execute("BEGIN IMMEDIATE")
                if new_clients:
                    conn.executemany("INSERT OR IGNORE INTO clients (%s, created) VALUES (?, ?, ?, ?, ?, ?, ?)"
                                     % CLIENT_COLUMNS, [c + (self.clock(),) for c in new_clients])
                if overflow > 0:
                    self._drop_oldest(conn, overflow)
                for i in range(0, len(rows), ROWS_PER_INSERT):
                    self._insert(conn, rows[i:i + ROWS_PER_INSERT])
                self._flush_counters(conn)
                conn.execute("COMMIT")
            problem = self._journal_refuses()
        except sqlite3.Error as exc:
            self._rollback(conn)
            self._restore(saved)
            full = is_full(exc, self.directory)
            if not full and is_io_failure(exc):
                self._fail(str(exc))
            self._ingest_trouble.begins("commit failed (507 or 500): %s" % exc)
            for e in accepted:
                e.status, e.reason = (507, "disk full") if full else (500, "storage error: %s" % exc)
            self._count("rejected", len(rows))
            return
        except BaseException as exc:
            self._rollback(conn)
            self._restore(saved)
            for e in accepted:
                e.status, e.reason = 500, "storage error: %s" % exc
            raise
        if problem is not None:  # sqlite says committed, the disk may not have it: no 204 for these values
            self._restore(saved)
            self._fail(problem)
            for e in accepted:
                e.status, e.reason = 500, "storage error: %s" % problem
            self._count("rejected", len(rows))
            return
        st.depth += len(rows)
        st.bytes += total
        for row in rows:
            st.by_client[row[0]] = st.by_client.get(row[0], 0) + 1
        self._free_used += total
        self._count("accepted", len(rows))
        self._ingest_trouble.ends()
        if self.on_append is not None and rows:
            self.on_append()

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: List[tuple]) -> None:
        if not rows:
            return
        sql = INSERT_HEAD + ",".join([INSERT_ROW] * len(rows))
        conn.execute(sql, [x for r in rows for x in r])

    def _free_estimate(self) -> int:
        """Free bytes on the queue's filesystem: statvfs at most every 50 ms, minus what we wrote since."""
        now = time.monotonic()
        if now - self._free_at > FREE_DISK_TTL_S:
            self._free, self._free_at, self._free_used = free_disk(self.directory), now, 0
        return self._free - self._free_used

    def _stamp(self, rows: List[tuple]) -> List[tuple]:
        """Give each row its arrival time; a value without a timestamp takes a unique one.

        Unique to the microsecond and increasing in commit order, so two writes of one
        alias never collide upstream (Murano keys history by alias and timestamp).
        """
        now_us = int(self.clock() * 1e6)
        if now_us <= self._last_us:
            now_us = self._last_us + 1
        out = []
        for client, alias, ts, value, size in rows:
            if ts is None:
                ts = now_us / 1e6
                now_us += 1
            out.append((client, alias, ts, value, now_us / 1e6, size))
        self._last_us = now_us
        return out

    def _free_disk(self) -> int:
        return free_disk(self.directory)

    def _drop_oldest(self, conn: sqlite3.Connection, need: int) -> None:
        freed = 0
        last = None
        dropped = 0
        while freed < need:
            rows = conn.execute("SELECT id, size FROM queue WHERE id > ? ORDER BY id LIMIT ?",
                                (last if last is not None else -1, SCAN)).fetchall()
            if not rows:
                break
            for rid, size in rows:
                last = rid
                freed += size
                dropped += 1
                if freed >= need:
                    break
        if last is not None:
            self._delete_where(conn, "id <= ?", (last,))
            self._count("dropped", dropped)
            log.warning("queue full: dropped the %d oldest values (%d bytes)", dropped, freed)

    # -- forwarding side --------------------------------------------------------------------
    def take(self, client: int, limit: int, after: int = 0) -> List[QueuedValue]:
        """The oldest ``limit`` values of ``client`` with ids above ``after``, in arrival order (they
        stay queued until acked)."""
        with self._rlock:
            rows = self._rconn.execute("SELECT id, client, alias, ts, value, arrived FROM queue "
                                       "WHERE client = ? AND id > ? ORDER BY id LIMIT ?",
                                       (client, after, limit)).fetchall()
        return [QueuedValue(*r) for r in rows]

    def _delete(self, conn: sqlite3.Connection, ids: Sequence[int]) -> Tuple[int, int]:
        """Delete ``ids`` (those still there); returns (rows, bytes) removed."""
        n = size = 0
        for i in range(0, len(ids), DELETE_CHUNK):
            chunk = list(ids[i:i + DELETE_CHUNK])
            rows, nbytes = self._delete_where(conn, "id IN (%s)" % ",".join("?" * len(chunk)), chunk)
            n += rows
            size += nbytes
        return n, size

    def _delete_where(self, conn: sqlite3.Connection, where: str, params: Sequence) -> Tuple[int, int]:
        """Delete the queued values ``where`` selects and take them out of the in-memory totals;
        returns (rows, bytes). Totals per client come from one aggregate row each, not a row per
        value (``RETURNING`` a batch's 500 rows cost more CPU than deleting them)."""
        groups = conn.execute("SELECT client, count(*), total(size) FROM queue WHERE %s GROUP BY client" % where,
                              params).fetchall()
        if not groups:
            return 0, 0
        conn.execute("DELETE FROM queue WHERE %s" % where, params)
        st = self._state
        n = size = 0
        for client, rows, nbytes in groups:
            nbytes = int(nbytes)
            left = st.by_client.get(client, 0) - rows
            if left > 0:
                st.by_client[client] = left
            else:
                st.by_client.pop(client, None)
            n += rows
            size += nbytes
        st.depth -= n
        st.bytes -= size
        return n, size

    def mark_sent(self, client: int, ids: Sequence[int]) -> int:
        """Note (durably) that these values of ``client`` are about to be sent; returns how many were
        sent before.

        Those are the only values upstream can have twice (a crash or a lost answer between
        sending and ``ack``); the ``resent`` counter adds them up, bounding duplicates.
        """
        return self.ack_and_mark((), client, ids)

    @_records
    def ack(self, ids: Sequence[int]) -> int:
        """Upstream has these values: delete them (durably). Returns how many were still queued."""
        if not ids:
            return 0
        with self._transaction() as conn:
            n, _ = self._delete(conn, ids)
            self._count("delivered", len(ids))
        return n

    @_records
    def ack_and_mark(self, acked: Sequence[int], client: int, sending: Sequence[int]) -> int:
        """``ack(acked)`` and ``mark_sent(client, sending)`` in one transaction (one fsync for the
        forwarder's step from one batch to the next); returns how many of ``sending`` were sent before.

        Sent is a watermark per client: the forwarder sends a client's values oldest first, so
        every value at or below the highest id it sent may be upstream already, and none above.
        """
        if not acked and not sending:
            return 0
        with self._transaction() as conn:
            if acked:
                self._delete(conn, acked)
                self._count("delivered", len(acked))
            again = 0
            if sending:
                sent = self._state.sent
                upto = sent.get(client, 0)
                again = sum(1 for i in sending if i <= upto)
                top = max(sending)
                if top > upto:
                    conn.execute("INSERT OR REPLACE INTO sent (client, upto) VALUES (?, ?)", (client, top))
                    sent[client] = top
            self._count("resent", again)
        return again

    @_records
    def dead_letter(self, values: Iterable[QueuedValue], status: Optional[int], reason: str) -> int:
        """Move values that can never be delivered out of the queue, keeping them for inspection."""
        values = list(values)
        if not values:
            return 0
        now = self.clock()
        with self._transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO dead_letter (id, client, alias, ts, value, arrived, status, "
                             "reason, moved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [(v.id, v.client, v.alias, v.ts, v.value, v.arrived, status, reason[:500], now)
                              for v in values])
            self._delete(conn, [v.id for v in values])
            self._count("dead_lettered", len(values))
        log.warning("dead-lettered %d values (status %s): %s", len(values), status, reason)
        return len(values)

    # -- clients (their rows; the registry in clients.py keeps them in memory) ---------------
    def client_rows(self) -> List[tuple]:
        """Every stored client as ``CLIENT_COLUMNS``."""
        with self._rlock:
            return self._rconn.execute("SELECT %s FROM clients ORDER BY created" % CLIENT_COLUMNS).fetchall()

    @_records
    def set_upstream_token(self, client: int, token: Optional[str]) -> None:
        """Persist (fsynced) a client's upstream token; None forgets it."""
        with self._transaction() as conn:
            conn.execute("UPDATE clients SET upstream_token = ? WHERE id = ?", (token, client))

    @_records
    def resolve_clients(self, known: set, damaged: Sequence[object] = ()) -> int:
        """Dead-letter every queued value whose client is not in ``known`` (its record was lost or
        is damaged), so it can never go upstream under another identity; drop ``damaged`` client
        rows (objects with ``id`` and ``serial``). Raises an alarm if anything was set aside;
        returns how many values were."""
        with self._rlock:
            held = [c for (c,) in self._rconn.execute("SELECT DISTINCT client FROM queue")]
        orphans = [c for c in held if c not in known]
        if not orphans and not damaged:
            return 0
        now = self.clock()
        moved = 0
        with self._transaction() as conn:
            for c in damaged:
                conn.execute("DELETE FROM clients WHERE id = ?", (c.id,))
            for client in orphans:
                conn.execute("INSERT OR REPLACE INTO dead_letter (id, client, alias, ts, value, arrived, status, "
                             "reason, moved) SELECT id, client, alias, ts, value, arrived, NULL, ?, ? FROM queue "
                             "WHERE client = ?", ("client unknown: its record was lost or damaged", now, client))
                moved += self._delete_where(conn, "client = ?", (client,))[0]
            self._count("dead_lettered", moved)
            detail = "%d queued values of %d unknown clients dead-lettered, not forwarded" % (moved, len(orphans))
            if damaged:
                detail += "; damaged client records dropped: %s" % ", ".join(str(c.serial)[:40] for c in damaged)
            conn.execute("INSERT INTO alarms (kind, time, detail) VALUES ('client_unresolved', ?, ?)", (now, detail))
        log.error("clients: %s", detail)
        return moved

    @_records
    def note_retry(self, n: int = 1) -> None:
        """Count failed delivery attempts (persisted with the next transaction)."""
        with self._transaction():
            self._count("retried", n)

    # -- housekeeping -------------------------------------------------------------------------
    def expire(self) -> int:
        """Drop values older than the TTL (by arrival time); returns how many."""
        total = 0
        while True:  # a loop, not recursion: a backlog of 500,000 expired values is 1,000 chunks
            n, more = self._expire_chunk()
            total += n
            if not more:
                return total

    @_records
    def _expire_chunk(self) -> Tuple[int, bool]:
        """Expire among the oldest SCAN values; returns (how many, whether to look further)."""
        ttl = self.limits.ttl
        if ttl <= 0:
            return 0, False
        cutoff = self.clock() - ttl
        with self._rlock:
            rows = self._rconn.execute("SELECT id, arrived FROM queue ORDER BY id LIMIT ?", (SCAN,)).fetchall()
        last = None
        for rid, arrived in rows:
            if arrived >= cutoff:
                break
            last = rid
        if last is None:
            return 0, False
        with self._transaction() as conn:
            n, _ = self._delete_where(conn, "id <= ?", (last,))
            self._count("expired", n)
        log.info("expired %d values older than %gs", n, ttl)
        return n, len(rows) == SCAN

    def next_expiry_in(self) -> Optional[float]:
        """Seconds until the oldest queued value expires (0: now); None without a TTL.

        An empty queue answers the TTL itself: a value arriving from now on expires no sooner.
        """
        ttl = self.limits.ttl
        if ttl <= 0:
            return None
        with self._rlock:
            row = self._rconn.execute("SELECT arrived FROM queue ORDER BY id LIMIT 1").fetchone()
        return ttl if row is None else max(0.0, row[0] + ttl - self.clock())

    def maintain(self) -> Optional[float]:
        """What is due: the disk reserve taken back once there is room, expiry. Returns the seconds
        until more is due (None: nothing until the limits change); run it then, from one thread.

        Checkpoints are sqlite's automatic ones, run by the writer right after a commit
        every ~1000 WAL pages: they complete, so the WAL restarts instead of growing (a
        growing file costs a metadata journal commit on every fsync). A checkpointer
        beside the writer was measured worse: its database fsync delays the writer's WAL
        fsync (p99 at one producer 17-175 ms instead of 1-3 ms).
        """
        self._retake_reserve()
        try:
            self.expire()
        except StorageError:
            pass  # logged once, when the trouble began
        due = self.next_expiry_in()
        if not self.reserve.held:  # look for room again in a second
            due = RESERVE_RETRY_S if due is None else min(due, RESERVE_RETRY_S)
        return due

    def set_limits(self, limits: Limits) -> None:
        self.limits = limits.validate()

    # -- observation ------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._state.depth

    @property
    def bytes(self) -> int:
        return self._state.bytes

    def counters(self) -> Dict[str, int]:
        return dict(self._state.counters)

    def stats(self) -> dict:
        """Depth, bytes, oldest age, counters, dead letters and alarms, for status reports."""
        with self._rlock:
            c = self._rconn
            oldest = c.execute("SELECT arrived FROM queue ORDER BY id LIMIT 1").fetchone()
            dead = c.execute("SELECT count(*) FROM dead_letter").fetchone()[0]
            alarms = [{"kind": k, "time": t, "detail": d}
                      for k, t, d in c.execute("SELECT kind, time, detail FROM alarms ORDER BY id")]
            synchronous = SYNCHRONOUS_NAMES.get(c.execute("PRAGMA synchronous").fetchone()[0], "?")
        free = self._free_disk()
        return {
            "depth": self._state.depth,
            "bytes": self._state.bytes,
            "oldest_age": round(self.clock() - oldest[0], 3) if oldest else None,
            "max_bytes": self.limits.max_bytes,
            "policy": self.limits.policy,
            "max_value_bytes": self.limits.max_value_bytes,
            "ttl": self.limits.ttl,
            "free_disk": free,
            "min_free_disk": self.limits.min_free_disk,
            "disk_reserve": {"bytes": self.reserve.size, "held": self.reserve.held},
            "synchronous": synchronous,
            "storage_failed": self.failed,
            "dead_letter": dead,
            "counters": self.counters(),
            "alarms": alarms,
        }

    def depth_by_client(self) -> Dict[int, int]:
        """Queued values per client (kept in memory: status must not scan the queue)."""
        return dict(self._state.by_client)

    def dead_letters(self, limit: int = 100) -> List[dict]:
        with self._rlock:
            rows = self._rconn.execute("SELECT id, client, alias, ts, value, status, reason, moved FROM dead_letter "
                                       "ORDER BY id LIMIT ?", (limit,)).fetchall()
        keys = ("id", "client", "alias", "ts", "value", "status", "reason", "moved")
        return [dict(zip(keys, r)) for r in rows]

    @_records
    def add_alarm(self, kind: str, detail: str) -> None:
        """Raise an alarm (once: the same alarm still standing is not added again)."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM alarms WHERE kind = ? AND detail = ?", (kind, detail)).fetchone() is None:
                conn.execute("INSERT INTO alarms (kind, time, detail) VALUES (?, ?, ?)", (kind, self.clock(), detail))

    @_records
    def clear_alarms(self) -> int:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM alarms").rowcount

    def close(self) -> None:
        self._claim()
        for conn in (self._rconn, self._conn):
            conn.close()
        os.close(self._probe)  # after sqlite's last connection: its locks are gone with it
