"""Who posts to gmq: client identities, the token gmq gave each, and each one's upstream token.

A client is known by its serial (``X-Exosite-VMS`` or ``/provision/activate``), or only by a
CIK it brought from elsewhere (``X-Exosite-CIK`` that gmq did not issue). Apps hold a
*local* token issued by gmq; the upstream Murano token is gmq's business and may change
(re-provisioning after a 401) without the app noticing.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from atomic_config import connect_sqlite

log = logging.getLogger(__name__)

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS clients (id INTEGER PRIMARY KEY, serial TEXT UNIQUE, vendor TEXT, model TEXT, "
    "local_token TEXT NOT NULL UNIQUE, upstream_token TEXT, created REAL NOT NULL)",
]

@dataclass
class Client:
    id: int
    serial: Optional[str]
    vendor: Optional[str]
    model: Optional[str]
    local_token: str
    upstream_token: Optional[str]

    @property
    def name(self) -> str:
        return self.serial if self.serial is not None else "cik:%s..." % self.local_token[:6]

    @property
    def can_provision(self) -> bool:
        return self.serial is not None


class ClientRegistry:
    """Clients, persisted in their own table of the gmq database; lookups are in memory."""

    def __init__(self, path: str) -> None:
        self._conn = connect_sqlite(path, synchronous="FULL", check_same_thread=False)
        self._conn.execute("PRAGMA cache_size=-64")  # a few rows, read once at start
        for stmt in SCHEMA:
            self._conn.execute(stmt)
        self._lock = threading.Lock()
        self._by_id: Dict[int, Client] = {}
        self._by_token: Dict[str, Client] = {}
        self._by_serial: Dict[str, Client] = {}
        for row in self._conn.execute("SELECT id, serial, vendor, model, local_token, upstream_token FROM clients"):
            self._index(Client(*row))
        self.on_new = None  # called with each newly registered Client (the forwarder provisions it)

    def _index(self, c: Client) -> None:
        self._by_id[c.id] = c
        self._by_token[c.local_token] = c
        if c.serial is not None:
            self._by_serial[c.serial] = c

    def _insert(self, serial: Optional[str], vendor: Optional[str], model: Optional[str], token: str,
                upstream: Optional[str]) -> Client:
        cur = self._conn.execute("INSERT INTO clients (serial, vendor, model, local_token, upstream_token, created) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", (serial, vendor, model, token, upstream, time.time()))
        c = Client(cur.lastrowid, serial, vendor, model, token, upstream)
        self._index(c)
        log.info("new client %s", c.name)
        if self.on_new is not None:
            self.on_new(c)
        return c

    def by_serial(self, serial: str, vendor: Optional[str] = None, model: Optional[str] = None) -> Client:
        """The client with this serial, registered now if new (its local token is made here).

        The caller has checked the identity against the Device API contract.
        """
        c = self._by_serial.get(serial)
        if c is not None:
            return c
        with self._lock:
            c = self._by_serial.get(serial)
            if c is None:
                c = self._insert(serial, vendor, model, secrets.token_hex(20), None)
            return c

    def by_token(self, token: str) -> Client:
        """The client holding ``token``; a well-formed token gmq never issued is taken as a CIK."""
        c = self._by_token.get(token)
        if c is not None:
            return c
        with self._lock:
            c = self._by_token.get(token)
            if c is None:
                c = self._insert(None, None, None, token, token)
            return c

    def get(self, client_id: int) -> Optional[Client]:
        return self._by_id.get(client_id)

    def all(self) -> List[Client]:
        return list(self._by_id.values())

    def set_upstream_token(self, client_id: int, token: Optional[str]) -> None:
        """Persist (fsynced) the upstream token of a client; None forgets it."""
        with self._lock:
            self._conn.execute("UPDATE clients SET upstream_token = ? WHERE id = ?", (token, client_id))
            c = self._by_id[client_id]
            c.upstream_token = token

    def close(self) -> None:
        self._conn.close()
