"""Everything murano_local keeps, in one sqlite database: products, devices, state, history, content.

One connection behind a lock: sqlite serialises writers anyway, and every commit is
``synchronous=FULL`` so what a request acknowledges survives kill -9. Content bytes live
as files beside the database (see :mod:`murano_local.content`); only their metadata is here.
"""
from __future__ import annotations

import os
import secrets
import sqlite3
import string
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

from atomic_config import connect_sqlite, make_dirs

T = TypeVar("T")
TOKEN_ALPHABET = string.ascii_letters + string.digits
PRIVATE_FILE = 0o600  # the database holds every device's token
PRIVATE_DIR = 0o700
TOKEN_LENGTH = 40
DEFAULT_HISTORY_LIMIT = 100000
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    pid TEXT PRIMARY KEY,
    allow_self_register INTEGER NOT NULL DEFAULT 0,
    created_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    pid TEXT NOT NULL,
    identity TEXT NOT NULL,
    token TEXT UNIQUE,
    reprovision INTEGER NOT NULL DEFAULT 0,
    created_us INTEGER NOT NULL,
    activated_us INTEGER,
    PRIMARY KEY (pid, identity)
);
CREATE TABLE IF NOT EXISTS state (
    pid TEXT NOT NULL,
    identity TEXT NOT NULL,
    alias TEXT NOT NULL,
    reported TEXT,
    set_value TEXT,
    timestamp INTEGER NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pid, identity, alias)
);
CREATE TABLE IF NOT EXISTS points (
    pid TEXT NOT NULL,
    identity TEXT NOT NULL,
    alias TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (pid, identity, alias, timestamp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS content (
    pid TEXT NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    meta TEXT NOT NULL DEFAULT '',
    file TEXT NOT NULL,
    PRIMARY KEY (pid, name)
);
CREATE TABLE IF NOT EXISTS device_uploads (
    pid TEXT NOT NULL,
    name TEXT NOT NULL,
    identity TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (pid, name)
);
CREATE INDEX IF NOT EXISTS device_uploads_by_identity ON device_uploads (pid, identity);
"""

# Each step takes the database from the version before it to its own; it runs in one transaction
# together with the new ``user_version``, so a crash leaves the old version or the new, never half.
_MIGRATIONS = {
    2: (  # fleet management: device tags, staged rollouts and their gateways
        """CREATE TABLE device_tags (
            pid TEXT NOT NULL,
            identity TEXT NOT NULL,
            tag TEXT NOT NULL,
            PRIMARY KEY (pid, identity, tag)
        ) WITHOUT ROWID""",
        "CREATE INDEX device_tags_by_tag ON device_tags (pid, tag)",
        """CREATE TABLE rollouts (
            pid TEXT NOT NULL,
            name TEXT NOT NULL,
            spec TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            created_us INTEGER NOT NULL,
            updated_us INTEGER NOT NULL,
            PRIMARY KEY (pid, name)
        )""",
        """CREATE TABLE rollout_targets (
            pid TEXT NOT NULL,
            rollout TEXT NOT NULL,
            identity TEXT NOT NULL,
            batch INTEGER NOT NULL,
            state TEXT NOT NULL,
            requested_us INTEGER,
            answered_us INTEGER,
            finished_us INTEGER,
            detail TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (pid, rollout, identity)
        ) WITHOUT ROWID""",
    ),
}


class StoreError(Exception):
    """Base of the store's refusals; each maps to one HTTP status."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class LimitExceeded(StoreError):
    pass


def new_token() -> str:
    """A 40-character ``[A-Za-z0-9]`` token, as Murano issues (and murano-client checks)."""
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


class Clock:
    """Microsecond timestamps that never repeat or go backwards within this process."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now_us(self) -> int:
        with self._lock:
            now = max(int(time.time() * 1_000_000), self._last + 1)
            self._last = now
            return now

    def advance_to(self, us: int) -> None:
        """Issue only timestamps after ``us`` from now on."""
        with self._lock:
            self._last = max(self._last, us)


class _Job:
    __slots__ = ("work", "result", "error", "done")

    def __init__(self, work) -> None:
        self.work = work
        self.result = None
        self.error: Optional[BaseException] = None
        self.done = False


class Store:
    """The sqlite database under the data directory."""

    def __init__(self, path: str, history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        self.path = path
        make_private(path)
        self._conn = connect_sqlite(path, check_same_thread=False)
        self._lock = threading.RLock()
        self._pending_lock = threading.Lock()
        self._pending: List[_Job] = []
        self.clock = Clock()
        self.history_limit = history_limit
        self._added: Dict[Tuple[str, str, str], int] = {}  # points added per alias since its last trim
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                self._conn.close()
                raise sqlite3.DatabaseError("database schema %d is newer than this murano_local (%d)"
                                            % (version, SCHEMA_VERSION))
            self._conn.executescript(_SCHEMA)
            self._migrate(max(version, 1))
            # A restart must not stamp a change at or before a Last-Modified already handed out
            # (answers are dated to the next whole second after their newest value). Recorded
            # points carry the device's own timestamps: one in the future must not drag the clock.
            newest = self._conn.execute("SELECT max(timestamp) FROM state").fetchone()[0]
            if newest is not None:
                self.clock.advance_to(ceil_second_us(min(newest, int(time.time() * 1_000_000))))

    def _migrate(self, version: int) -> None:
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute("PRAGMA user_version = %d" % target)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- plumbing -------------------------------------------------------------------
    def query(self, sql: str, args: Sequence = ()) -> List[tuple]:
        """Rows of one read (for the modules that keep their own tables here: rollouts)."""
        return self._query(sql, args)

    def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(conn)`` in a committed, fsynced transaction (group commit, see ``_transaction``)."""
        return self._transaction(work)

    def _query(self, sql: str, args: Sequence = ()) -> List[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def _transaction(self, work):
        """Run ``work(conn)`` in a committed transaction and return its result, or raise its error.

        Group commit: a caller that finds the store busy queues its work; whoever takes the
        lock next runs every queued work, each inside its own savepoint (a failing one is
        rolled back alone), and commits them with one fsync. Each caller returns only after
        the commit that holds its work.
        """
        job = _Job(work)
        with self._pending_lock:
            self._pending.append(job)
        with self._lock:
            if not job.done:
                self._run_pending()
        if job.error is not None:
            raise job.error
        return job.result

    def _run_pending(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.work(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    job.error = exc
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in batch:
                if job.error is None:
                    job.result, job.error = None, exc
        finally:
            for job in batch:
                job.done = True

    # -- products -------------------------------------------------------------------
    def ensure_product(self, pid: str, allow_self_register: Optional[bool] = None,
                       default_self_register: bool = False) -> None:
        """Create ``pid`` if absent; set its self-registration flag when one is given."""
        def work(conn: sqlite3.Connection) -> None:
            flag = default_self_register if allow_self_register is None else allow_self_register
            conn.execute("INSERT OR IGNORE INTO products (pid, allow_self_register, created_us) VALUES (?, ?, ?)",
                         (pid, int(flag), self.clock.now_us()))
            if allow_self_register is not None:
                conn.execute("UPDATE products SET allow_self_register = ? WHERE pid = ?",
                             (int(allow_self_register), pid))
        self._transaction(work)

    def product(self, pid: str) -> Optional[dict]:
        rows = self._query("SELECT allow_self_register, created_us FROM products WHERE pid = ?", (pid,))
        if not rows:
            return None
        return {"pid": pid, "allow_self_register": bool(rows[0][0]), "created_us": rows[0][1]}

    # -- devices --------------------------------------------------------------------
    def add_device(self, pid: str, identity: str) -> bool:
        """Whitelist ``identity``; True when it was new."""
        def work(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("INSERT OR IGNORE INTO devices (pid, identity, created_us) VALUES (?, ?, ?)",
                               (pid, identity, self.clock.now_us()))
            return cur.rowcount == 1
        return self._transaction(work)

    def remove_device(self, pid: str, identity: str) -> None:
        """Forget the device with its token, state, and history."""
        def work(conn: sqlite3.Connection) -> None:
            cur = conn.execute("DELETE FROM devices WHERE pid = ? AND identity = ?", (pid, identity))
            if cur.rowcount == 0:
                raise NotFound("no such device")
            conn.execute("DELETE FROM state WHERE pid = ? AND identity = ?", (pid, identity))
            conn.execute("DELETE FROM points WHERE pid = ? AND identity = ?", (pid, identity))
            conn.execute("DELETE FROM device_tags WHERE pid = ? AND identity = ?", (pid, identity))
        self._transaction(work)

    def set_reprovision(self, pid: str, identity: str, reprovision: bool) -> None:
        def work(conn: sqlite3.Connection) -> None:
            cur = conn.execute("UPDATE devices SET reprovision = ? WHERE pid = ? AND identity = ?",
                               (int(reprovision), pid, identity))
            if cur.rowcount == 0:
                raise NotFound("no such device")
        self._transaction(work)

    def device(self, pid: str, identity: str) -> Optional[dict]:
        rows = self._query("SELECT identity, token, reprovision, created_us, activated_us FROM devices "
                           "WHERE pid = ? AND identity = ?", (pid, identity))
        return _device_row(rows[0]) if rows else None

    def devices(self, pid: str) -> List[dict]:
        rows = self._query("SELECT identity, token, reprovision, created_us, activated_us FROM devices "
                           "WHERE pid = ? ORDER BY identity", (pid,))
        return [_device_row(r) for r in rows]

    def activate(self, pid: str, identity: str, self_register: bool) -> str:
        """Issue the device's token: once, or again when reprovisioning was allowed.

        Raises NotFound for an identity that is not whitelisted (unless ``self_register``)
        and Conflict for one that is already activated.
        """
        def work(conn: sqlite3.Connection) -> str:
            now = self.clock.now_us()
            row = conn.execute("SELECT token, reprovision FROM devices WHERE pid = ? AND identity = ?",
                               (pid, identity)).fetchone()
            if row is None:
                if not self_register:
                    raise NotFound("identity not whitelisted")
                conn.execute("INSERT INTO devices (pid, identity, created_us) VALUES (?, ?, ?)",
                             (pid, identity, now))
            elif row[0] is not None and not row[1]:
                raise Conflict("already activated")
            token = new_token()
            conn.execute("UPDATE devices SET token = ?, reprovision = 0, activated_us = ? "
                         "WHERE pid = ? AND identity = ?", (token, now, pid, identity))
            return token
        return self._transaction(work)

    def device_by_token(self, token: str) -> Optional[Tuple[str, str]]:
        rows = self._query("SELECT pid, identity FROM devices WHERE token = ?", (token,))
        return (rows[0][0], rows[0][1]) if rows else None

    # -- state and history --------------------------------------------------------------
    def device_write(self, pid: str, identity: str, values: Sequence[Tuple[str, str]]) -> int:
        """A device write: ``reported`` and ``set`` both take the value; one timestamp for all."""
        def work(conn: sqlite3.Connection) -> int:
            ts = self.clock.now_us()
            for alias, value in values:
                _upsert_reported(conn, pid, identity, alias, value, ts)
                self._add_point(conn, pid, identity, alias, ts, value)
            return ts
        return self._transaction(work)

    def device_record(self, pid: str, identity: str, points: Iterable[Tuple[str, int, str]]) -> None:
        """Historical points ``(alias, timestamp_us, value)``; the newest one also becomes the state
        when it is newer than what the state holds. A repeated (alias, timestamp) replaces the
        earlier value, so a forwarder that retries after a crash leaves no duplicates."""
        def work(conn: sqlite3.Connection) -> None:
            newest: Dict[str, Tuple[int, str]] = {}
            for alias, ts, value in points:
                self._add_point(conn, pid, identity, alias, ts, value)
                if alias not in newest or ts >= newest[alias][0]:
                    newest[alias] = (ts, value)
            for alias, (ts, value) in newest.items():
                row = conn.execute("SELECT timestamp FROM state WHERE pid = ? AND identity = ? AND alias = ?",
                                   (pid, identity, alias)).fetchone()
                if row is None or ts >= row[0]:
                    _upsert_reported(conn, pid, identity, alias, value, ts)
        self._transaction(work)

    def _add_point(self, conn: sqlite3.Connection, pid: str, identity: str, alias: str, ts: int,
                   value: str) -> None:
        """Insert one point; every tenth of the limit, trim the alias to its newest ``history_limit``."""
        conn.execute("INSERT OR REPLACE INTO points (pid, identity, alias, timestamp, value) VALUES (?, ?, ?, ?, ?)",
                     (pid, identity, alias, ts, value))
        key = (pid, identity, alias)
        added = self._added.get(key, 0) + 1
        if added < max(1, self.history_limit // 10):
            self._added[key] = added
            return
        self._added[key] = 0
        conn.execute(
            "DELETE FROM points WHERE pid = ? AND identity = ? AND alias = ? AND timestamp < ("
            "SELECT timestamp FROM points WHERE pid = ? AND identity = ? AND alias = ? "
            "ORDER BY timestamp DESC LIMIT 1 OFFSET ?)", key + key + (self.history_limit - 1,))

    def operator_set(self, pid: str, identity: str, values: Sequence[Tuple[str, str]]) -> int:
        """The cloud side sets values: only ``set`` changes, ``reported`` stays."""
        return self._transaction(lambda conn: self.operator_set_in(conn, pid, identity, values))

    def operator_set_in(self, conn: sqlite3.Connection, pid: str, identity: str,
                        values: Sequence[Tuple[str, str]]) -> int:
        """:meth:`operator_set` inside the caller's transaction (a rollout marks the gateways it
        asks in the same commit as the asking); returns the timestamp."""
        if conn.execute("SELECT 1 FROM devices WHERE pid = ? AND identity = ?",
                        (pid, identity)).fetchone() is None:
            raise NotFound("no such device")
        ts = self.clock.now_us()
        for alias, value in values:
            conn.execute(
                "INSERT INTO state (pid, identity, alias, reported, set_value, timestamp, pending) "
                "VALUES (?, ?, ?, NULL, ?, ?, 1) ON CONFLICT (pid, identity, alias) "
                "DO UPDATE SET set_value = excluded.set_value, timestamp = excluded.timestamp, pending = 1",
                (pid, identity, alias, value, ts))
        return ts

    def state(self, pid: str, identity: str, aliases: Optional[Sequence[str]] = None) -> Dict[str, dict]:
        """``{alias: {"reported", "set", "timestamp"}}``, for all aliases or the given ones."""
        rows = self._query("SELECT alias, reported, set_value, timestamp FROM state "
                           "WHERE pid = ? AND identity = ? ORDER BY alias", (pid, identity))
        wanted = None if aliases is None else set(aliases)
        return {alias: {"reported": reported, "set": set_value, "timestamp": ts}
                for alias, reported, set_value, ts in rows if wanted is None or alias in wanted}

    def pending(self, pid: str, identity: str, aliases: Sequence[str], since_us: Optional[int],
                whole_seconds: bool = False) -> List[Tuple[str, str, int]]:
        """Cloud-set values the device has not written back yet, newer than ``since_us``:
        ``[(alias, set, timestamp)]`` in the order of ``aliases``.

        ``whole_seconds``: the answer is dated to the second (an HTTP-date Last-Modified,
        rounded up); every later change is then stamped after that second, so a poll from
        it neither gets these values again nor misses one set in the same second.
        """
        with self._lock:
            rows = self._query("SELECT alias, set_value, timestamp FROM state WHERE pid = ? AND identity = ? "
                               "AND pending = 1 AND timestamp > ?",
                               (pid, identity, -1 if since_us is None else since_us))
            found = {alias: (alias, value, ts) for alias, value, ts in rows}
            answer = [found[a] for a in aliases if a in found]
            if answer and whole_seconds:
                self.clock.advance_to(ceil_second_us(max(ts for _a, _v, ts in answer)))
        return answer

    def history(self, pid: str, identity: str, alias: str, limit: int) -> List[dict]:
        """The newest ``limit`` points of ``alias``, newest first."""
        rows = self._query("SELECT timestamp, value FROM points WHERE pid = ? AND identity = ? AND alias = ? "
                           "ORDER BY timestamp DESC LIMIT ?", (pid, identity, alias, limit))
        return [{"timestamp": ts, "value": value} for ts, value in rows]

    def history_since(self, pid: str, identity: str, alias: str, since_us: int, limit: int = 100) -> List[dict]:
        """Points of ``alias`` stamped after ``since_us``, oldest first (at most ``limit``)."""
        rows = self._query("SELECT timestamp, value FROM points WHERE pid = ? AND identity = ? AND alias = ? "
                           "AND timestamp > ? ORDER BY timestamp LIMIT ?", (pid, identity, alias, since_us, limit))
        return [{"timestamp": ts, "value": value} for ts, value in rows]

    def reported_values(self, pid: str, aliases: Sequence[str],
                        identities: Optional[Sequence[str]] = None) -> List[Tuple[str, str, Optional[str], int]]:
        """``(identity, alias, reported, timestamp)`` of these aliases for every device of ``pid``
        (or the given ones): the fleet's view in one read."""
        marks = ",".join("?" * len(aliases))
        sql = ("SELECT identity, alias, reported, timestamp FROM state WHERE pid = ? AND alias IN (%s) "
               "AND reported IS NOT NULL" % marks)
        if identities is None:
            return self._query(sql, (pid, *aliases))
        found: List[Tuple[str, str, Optional[str], int]] = []
        wanted = list(identities)
        for start in range(0, len(wanted), 500):  # sqlite's bound-parameter limit
            chunk = wanted[start:start + 500]
            found += self._query(sql + " AND identity IN (%s)" % ",".join("?" * len(chunk)),
                                 (pid, *aliases, *chunk))
        return found

    def reported_timestamps(self, pid: str, aliases: Sequence[str]) -> List[Tuple[str, str, int]]:
        """``(identity, alias, timestamp)`` of these aliases for every device of ``pid`` that wrote them."""
        return self._query("SELECT identity, alias, timestamp FROM state WHERE pid = ? AND alias IN (%s) "
                           "AND reported IS NOT NULL" % ",".join("?" * len(aliases)), (pid, *aliases))

    # -- tags -----------------------------------------------------------------------------
    def change_tags(self, pid: str, identity: str, add: Sequence[str], remove: Sequence[str],
                    max_tags: int) -> List[str]:
        """Add and remove tags of a device (at most ``max_tags`` in the end); returns its tags."""
        def work(conn: sqlite3.Connection) -> List[str]:
            if conn.execute("SELECT 1 FROM devices WHERE pid = ? AND identity = ?",
                            (pid, identity)).fetchone() is None:
                raise NotFound("no such device")
            conn.executemany("INSERT OR IGNORE INTO device_tags (pid, identity, tag) VALUES (?, ?, ?)",
                             [(pid, identity, t) for t in add])
            conn.executemany("DELETE FROM device_tags WHERE pid = ? AND identity = ? AND tag = ?",
                             [(pid, identity, t) for t in remove])
            tags = [r[0] for r in conn.execute("SELECT tag FROM device_tags WHERE pid = ? AND identity = ? "
                                               "ORDER BY tag", (pid, identity))]
            if len(tags) > max_tags:
                raise LimitExceeded("a device has at most %d tags" % max_tags)
            return tags
        return self._transaction(work)

    def tags(self, pid: str) -> Dict[str, List[str]]:
        """``{identity: [tags]}`` for the devices of ``pid`` that have any."""
        tags: Dict[str, List[str]] = {}
        for identity, tag in self._query("SELECT identity, tag FROM device_tags WHERE pid = ? "
                                         "ORDER BY identity, tag", (pid,)):
            tags.setdefault(identity, []).append(tag)
        return tags

    def tagged(self, pid: str, tags: Sequence[str]) -> List[str]:
        """Identities carrying any of ``tags``, sorted."""
        rows = self._query("SELECT DISTINCT identity FROM device_tags WHERE pid = ? AND tag IN (%s) "
                           "ORDER BY identity" % ",".join("?" * len(tags)), (pid, *tags))
        return [r[0] for r in rows]

    # -- content metadata ---------------------------------------------------------------
    def content_put(self, pid: str, name: str, content_type: str, size: int, meta: str,
                    file: str, uploaded_by: Optional[Tuple[str, str]] = None) -> Optional[str]:
        """Record a blob; returns the file name of the blob it replaced, if any.

        ``uploaded_by`` is ``(identity, sha256)`` for a device's upload, recorded in the same
        transaction; an operator's blob (None) under that name is no device's any more.
        """
        def work(conn: sqlite3.Connection) -> Optional[str]:
            row = conn.execute("SELECT file, updated FROM content WHERE pid = ? AND name = ?",
                               (pid, name)).fetchone()
            # A replacement always gets a later update time: clients resume a partial download only
            # while (size, updated) is unchanged, so two versions within one second must differ.
            updated = max(int(time.time()), row[1] + 1) if row else int(time.time())
            conn.execute("INSERT OR REPLACE INTO content (pid, name, content_type, size, updated, meta, file) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (pid, name, content_type, size, updated, meta, file))
            conn.execute("DELETE FROM device_uploads WHERE pid = ? AND name = ?", (pid, name))
            if uploaded_by is not None:
                conn.execute("INSERT INTO device_uploads (pid, name, identity, sha256) VALUES (?, ?, ?, ?)",
                             (pid, name) + tuple(uploaded_by))
            return row[0] if row else None
        return self._transaction(work)

    def content_delete(self, pid: str, name: str) -> str:
        """Forget a blob; returns its file name so the caller can remove it."""
        def work(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT file FROM content WHERE pid = ? AND name = ?", (pid, name)).fetchone()
            if row is None:
                raise NotFound("no such content")
            conn.execute("DELETE FROM content WHERE pid = ? AND name = ?", (pid, name))
            conn.execute("DELETE FROM device_uploads WHERE pid = ? AND name = ?", (pid, name))
            return row[0]
        return self._transaction(work)

    def content_info(self, pid: str, name: str) -> Optional[dict]:
        rows = self._query(_CONTENT_SELECT + "WHERE c.pid = ? AND c.name = ?", (pid, name))
        return _content_row(rows[0]) if rows else None

    def content_list(self, pid: str, device: Optional[str] = None) -> List[dict]:
        """The product's blobs by name; ``device``: only that device's uploads."""
        if device is None:
            rows = self._query(_CONTENT_SELECT + "WHERE c.pid = ? ORDER BY c.name", (pid,))
        else:
            rows = self._query(_CONTENT_SELECT + "WHERE c.pid = ? AND u.identity = ? ORDER BY c.name", (pid, device))
        return [_content_row(r) for r in rows]

    def content_files(self) -> List[str]:
        return [r[0] for r in self._query("SELECT file FROM content")]


def ceil_second_us(timestamp_us: int) -> int:
    """``timestamp_us`` rounded up to a whole second, in microseconds."""
    return -(-timestamp_us // 1_000_000) * 1_000_000


def _upsert_reported(conn: sqlite3.Connection, pid: str, identity: str, alias: str, value: str, ts: int) -> None:
    conn.execute(
        "INSERT INTO state (pid, identity, alias, reported, set_value, timestamp, pending) "
        "VALUES (?, ?, ?, ?, ?, ?, 0) ON CONFLICT (pid, identity, alias) DO UPDATE SET "
        "reported = excluded.reported, set_value = excluded.set_value, timestamp = excluded.timestamp, pending = 0",
        (pid, identity, alias, value, value, ts))


def _device_row(row: tuple) -> dict:
    identity, token, reprovision, created_us, activated_us = row
    return {"identity": identity, "token": token, "reprovision": bool(reprovision),
            "created_us": created_us, "activated_us": activated_us,
            "status": "provisioned" if token else "whitelisted"}


_CONTENT_SELECT = ("SELECT c.name, c.content_type, c.size, c.updated, c.meta, c.file, u.identity, u.sha256 "
                   "FROM content c LEFT JOIN device_uploads u ON u.pid = c.pid AND u.name = c.name ")


def _content_row(row: tuple) -> dict:
    name, content_type, size, updated, meta, file, device, sha256 = row
    return {"name": name, "type": content_type, "size": size, "updated": updated, "meta": meta, "file": file,
            "device": device, "sha256": sha256}


def private_directory(directory: str) -> None:
    """Create ``directory`` (mode 0700), or take group and other access away from an existing one."""
    make_dirs(directory, mode=PRIVATE_DIR)
    if os.stat(directory).st_mode & 0o077:
        os.chmod(directory, PRIVATE_DIR)


def make_private(path: str) -> None:
    """The database and its ``-wal``/``-shm`` files 0600 in a 0700 directory, before sqlite opens them.

    sqlite creates ``-wal`` and ``-shm`` with the mode of the database file, so the database
    is created 0600 first; files left 0644 by an older version are tightened.
    """
    private_directory(os.path.dirname(os.path.abspath(path)))
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
    for suffix in ("", "-wal", "-shm"):
        try:
            if os.stat(path + suffix).st_mode & 0o077:
                os.chmod(path + suffix, PRIVATE_FILE)
        except FileNotFoundError:
            pass


def database_path(data_dir: str) -> str:
    return os.path.join(data_dir, "murano_local.sqlite3")
