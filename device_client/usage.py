"""Network usage of every Device API request, logged to sqlite and summarised as ``usage_report``.

All processes on the gateway (gwe, gmq, apps) log into one database; gwe reports and
flushes it every update interval. The report shape is fixed by DESIGN.md::

    {iface: {identity: {"<kind>:[<aliases>]": {"num", "type", "tot_rx", "max_rx", "tot_tx",
                                                 "max_tx", "rq_time_avg", "rq_time_max"}},
             "top_consumer": identity}}

As in the product's own example (seed 001), the key names the request kind (``read``,
``write``, ``long_poll``, ``record``, ``actvt``...) and its aliases, and ``type`` is the
verb that carried it (``get`` / ``post``). When the size cap dropped rows since the last
flush, a top-level ``"dropped": n`` says how many.

Logging is statistics, not data: it must never fail or slow a request, so every error
is swallowed (counted in ``UsageLog.failures``, logged at debug) and the database runs
with ``synchronous=NORMAL``: no fsync per row, the WAL is fsynced only when sqlite checkpoints
it (every 1000 pages; a row's commit writes about two). A power cut therefore loses the rows
logged since the last checkpoint, however old, typically up to about 500 (the lab: at most 453
in one cut, 4,509 of 9,988 in 30), and never corrupts the file; what survives is a prefix of
what was logged. Rows already reported are flushed anyway, so a cut costs the next report.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from typing import Dict, Iterable, NamedTuple, Optional

from atomic_config import connect_sqlite, gwe_paths

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 50_000   # ~3 MB; a report-and-flush of a full log holds the write lock ~0.1 s
TRIM_EVERY = 16           # the cap is checked when a row id is a multiple of this
REOPEN_AFTER_S = 30.0     # after a failure to open the database, wait this long before trying again
LOG_BUSY_MS = 2000        # a logger gives up (and counts a failure) rather than hold a request longer
REPORT_BUSY_MS = 10000
UNKNOWN_IFACE = "unknown"
TOP_CONSUMER = "top_consumer"
DROPPED = "dropped"

KINDS = ("get", "post", "read", "write", "long_poll", "readwrite", "record", "actvt",
         "list_content", "get_content", "content_info")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS requests ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, iface TEXT NOT NULL, identity TEXT NOT NULL,"
    " kind TEXT NOT NULL, method TEXT NOT NULL, aliases TEXT NOT NULL,"
    " tx INTEGER NOT NULL, rx INTEGER NOT NULL, duration REAL NOT NULL, status INTEGER)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)
_INSERT = ("INSERT INTO requests (ts, iface, identity, kind, method, aliases, tx, rx, duration, status)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_AGGREGATE = (
    "SELECT iface, identity, kind, aliases, max(method), count(*), sum(rx), max(rx), sum(tx), max(tx),"
    " avg(duration), max(duration) FROM requests WHERE id <= ? GROUP BY iface, identity, kind, aliases")


class UsageSnapshot(NamedTuple):
    """A report and the rows it covers, to be flushed once the report has been delivered."""

    report: dict
    upto: int        # the highest row id in the report
    rows: int        # how many rows it counts
    dropped: int     # the dropped figure it carries


def format_aliases(aliases: Iterable[str]) -> str:
    """The ``[...]`` part of a report key, written like the original (a Python list)."""
    return repr([str(a) for a in aliases])


class InterfaceResolver:
    """Local address -> interface name (``eth0``, ``wlan0``, ``ppp0``, ``lo``...), cached.

    The map is rebuilt on a miss (a modem that just came up), at most every few seconds.
    psutil is imported on first use: processes that never log do not pay for it.
    """

    REFRESH_AFTER_S = 5.0

    def __init__(self) -> None:
        self._by_addr: Dict[str, str] = {}
        self._refreshed = float("-inf")

    def resolve(self, address: Optional[str]) -> str:
        if not address:
            return UNKNOWN_IFACE
        name = self._by_addr.get(address)  # the common case: a known address as the socket gives it
        if name is None:
            name = self._by_addr.get(_normalise(address))
        if name is None and time.monotonic() - self._refreshed > self.REFRESH_AFTER_S:
            self._refresh()
            name = self._by_addr.get(_normalise(address))
        return name or UNKNOWN_IFACE

    def _refresh(self) -> None:
        self._refreshed = time.monotonic()
        import psutil

        table: Dict[str, str] = {}
        for iface, addrs in psutil.net_if_addrs().items():
            for snic in addrs:
                if snic.address:
                    table.setdefault(_normalise(snic.address), iface)
        self._by_addr = table


def _normalise(address: str) -> str:
    address = address.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


interfaces = InterfaceResolver()


class UsageLog:
    """The shared request log in ``path`` (default: ``gwe_paths().usage_db``), capped at ``max_rows``."""

    def __init__(self, path: Optional[str] = None, max_rows: int = DEFAULT_MAX_ROWS,
                 busy_timeout_ms: int = LOG_BUSY_MS) -> None:
        if max_rows < TRIM_EVERY:
            raise ValueError("max_rows must be at least %d" % TRIM_EVERY)
        self.path = os.path.abspath(path or gwe_paths().usage_db)
        self.max_rows = max_rows
        self.busy_timeout_ms = busy_timeout_ms
        self.failures = 0
        self._conn = None
        self._pid = 0
        self._failed_open_at = float("-inf")
        self._lock = threading.Lock()

    def _connection(self):
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if time.monotonic() - self._failed_open_at < REOPEN_AFTER_S:
            return None
        try:
            # NORMAL: a usage log is statistics; losing the last rows to a power cut is fine,
            # an fsync per request is not.
            conn = connect_sqlite(self.path, synchronous="NORMAL", busy_timeout_ms=self.busy_timeout_ms,
                                  check_same_thread=False, schema=_SCHEMA)
        except Exception as exc:
            self._failed_open_at = time.monotonic()
            self.failures += 1
            log.debug("usage log %s unavailable: %s", self.path, exc)
            return None
        self._conn, self._pid = conn, os.getpid()
        return conn

    def record(self, iface: str, identity: str, kind: str, method: str, aliases: Iterable[str],
               tx: int, rx: int, duration: float, status: Optional[int]) -> None:
        """Log one request. Never raises."""
        try:
            with self._lock:
                conn = self._connection()
                if conn is None:
                    return
                row_id = conn.execute(_INSERT, (time.time(), iface, identity, kind, method.lower(),
                                                format_aliases(aliases), int(tx), int(rx), float(duration),
                                                status)).lastrowid
                if row_id % TRIM_EVERY == 0:
                    self._trim(conn)
        except Exception as exc:
            self.failures += 1
            log.debug("usage log write failed: %s", exc)

    def _trim(self, conn) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            dropped = conn.execute("DELETE FROM requests WHERE id <= (SELECT max(id) FROM requests) - ?",
                                   (self.max_rows,)).rowcount
            if dropped > 0:
                conn.execute("INSERT INTO meta (key, value) VALUES ('dropped', ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value", (dropped,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def snapshot(self) -> UsageSnapshot:
        """The report of every row logged so far; nothing is deleted (see :meth:`flush`)."""
        with self._lock:
            conn = self._open_or_raise()
            conn.execute("BEGIN")
            try:
                return self._snapshot(conn)
            finally:
                conn.execute("COMMIT")

    def flush(self, snapshot: UsageSnapshot) -> None:
        """Delete the rows ``snapshot`` reported, once it has been delivered.

        Row ids are never reused, so rows logged after the snapshot stay. Rows the size
        cap dropped after the snapshot were reported by it: they leave the dropped count.
        """
        with self._lock:
            conn = self._open_or_raise()
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._flush(conn, snapshot)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def report(self, flush: bool = False) -> dict:
        """The usage_report of every row logged so far.

        With ``flush`` the rows reported (and the dropped count) are deleted in the same
        write transaction: a row logged concurrently is either in this report and gone,
        or left for the next one.
        """
        if not flush:
            return self.snapshot().report
        with self._lock:
            conn = self._open_or_raise()
            conn.execute("BEGIN IMMEDIATE")
            try:
                snapshot = self._snapshot(conn)
                self._flush(conn, snapshot)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return snapshot.report

    def _open_or_raise(self):
        conn = self._connection()
        if conn is None:
            raise OSError("usage log %s cannot be opened" % self.path)
        return conn

    @staticmethod
    def _snapshot(conn) -> UsageSnapshot:
        upto = conn.execute("SELECT coalesce(max(id), 0) FROM requests").fetchone()[0]
        rows = conn.execute(_AGGREGATE, (upto,)).fetchall()
        found = conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        dropped = found[0] if found else 0
        return UsageSnapshot(build_report(rows, dropped), upto, sum(row[5] for row in rows), dropped)

    @staticmethod
    def _flush(conn, snapshot: UsageSnapshot) -> None:
        present = conn.execute("SELECT count(*) FROM requests WHERE id <= ?", (snapshot.upto,)).fetchone()[0]
        conn.execute("DELETE FROM requests WHERE id <= ?", (snapshot.upto,))
        reported = snapshot.dropped + (snapshot.rows - present)
        if reported:
            conn.execute("UPDATE meta SET value = max(0, value - ?) WHERE key = 'dropped'", (reported,))
        conn.execute("DELETE FROM meta WHERE key = 'dropped' AND value <= 0")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


def build_report(rows: Iterable[tuple], dropped: int = 0) -> dict:
    """Aggregated rows -> the usage_report shape (see module docstring)."""
    report: dict = {}
    volume: Dict[str, Dict[str, int]] = {}
    for iface, identity, kind, aliases, method, num, tot_rx, max_rx, tot_tx, max_tx, avg_t, max_t in rows:
        report.setdefault(iface, {}).setdefault(identity, {})["%s:%s" % (kind, aliases)] = {
            "num": num, "type": method, "tot_rx": tot_rx, "max_rx": max_rx, "tot_tx": tot_tx,
            "max_tx": max_tx, "rq_time_avg": round(avg_t, 4), "rq_time_max": round(max_t, 4),
        }
        per_identity = volume.setdefault(iface, {})
        per_identity[identity] = per_identity.get(identity, 0) + tot_rx + tot_tx
    for iface, per_identity in volume.items():
        report[iface][TOP_CONSUMER] = min(per_identity, key=lambda name: (-per_identity[name], name))
    if dropped:
        report[DROPPED] = dropped
    return report


def usage_report(path: Optional[str] = None, flush: bool = False) -> dict:
    """The current usage_report of the gateway's usage log; with ``flush``, also empty it.

    A log that does not exist yet is an empty report (nothing is created).
    """
    usage = UsageLog(path, busy_timeout_ms=REPORT_BUSY_MS)
    if not os.path.exists(usage.path):
        return {}
    try:
        return usage.report(flush=flush)
    finally:
        usage.close()
