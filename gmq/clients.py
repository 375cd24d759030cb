"""Who posts to gmq: client identities, the token gmq gave each, and each one's upstream token.

A client is known by its serial (``X-Exosite-VMS`` or ``/provision/activate``), or only by a
CIK it brought from elsewhere (``X-Exosite-CIK`` that gmq did not issue). Apps hold a
*local* token issued by gmq; the upstream Murano token is gmq's business and may change
(re-provisioning after a 401) without the app noticing.

A client's id is derived from its identity (``identity_id``), never handed out in turn: a
queued value carries its client's id, so a value whose client record is lost can never be
taken for another client's (a fresh registration of another identity gets another id).

The registry keeps no database connection: rows are read and written through the queue,
the one owner of gmq.db. A new client is registered in memory at once and becomes durable
in the event loop's next group commit, with the values of the request that introduced it.

The gateway's own serial (Gateway.cfg ``uuid``) is gwe's: gmq never provisions it, and its
values go upstream with gwe's token (Gateway.cfg ``cik``), never stored in gmq.db. A request
with that token as its CIK is the gateway's client too.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

log = logging.getLogger(__name__)


@dataclass
class Client:
    id: int
    serial: Optional[str]
    vendor: Optional[str]
    model: Optional[str]
    local_token: str
    upstream_token: Optional[str]
    durable: bool = True  # False until its row is committed

    @property
    def name(self) -> str:
        return self.serial if self.serial is not None else "cik:%s..." % self.local_token[:6]

    @property
    def can_provision(self) -> bool:
        return self.serial is not None

    def row(self) -> tuple:
        """``(id, serial, vendor, model, local_token, upstream_token)`` as stored."""
        return self.id, self.serial, self.vendor, self.model, self.local_token, self.upstream_token


@dataclass(frozen=True)
class Gateway:
    """The gateway's own identity as gwe holds it in Gateway.cfg: ``uuid``, ``cik``, vendor, model."""

    serial: Optional[str] = None
    token: Optional[str] = None
    vendor: Optional[str] = None
    model: Optional[str] = None


def identity_id(serial: Optional[str], token: str) -> int:
    """The id of the client with this serial (or, without one, this CIK): 62 bits of its SHA-256."""
    key = ("sn:%s" % serial) if serial is not None else ("cik:%s" % token)
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") >> 2


class ClientRegistry:
    """Clients in memory, persisted through ``store`` (the queue's database and writer turn).

    ``store`` provides ``client_rows()``, ``set_upstream_token(id, token)`` and
    ``resolve_clients(valid_ids)`` (see ``DurableQueue``).
    """

    def __init__(self, store, gateway=None) -> None:
        """``gateway``: an object whose ``current()`` is the gateway's ``Gateway`` identity now."""
        self._store = store
        self._gateway = gateway
        self._lock = threading.Lock()
        self._by_id: Dict[int, Client] = {}
        self._by_token: Dict[str, Client] = {}
        self._by_serial: Dict[str, Client] = {}
        damaged = []
        for row in store.client_rows():
            c = Client(*row)
            if c.id != identity_id(c.serial, c.local_token):
                damaged.append(c)
                continue
            self._index(c)
        store.resolve_clients(set(self._by_id), damaged)
        self.on_new: Optional[Callable[[Client], None]] = None  # called once a new client is durable

    def _index(self, c: Client) -> None:
        self._by_id[c.id] = c
        self._by_token[c.local_token] = c
        if c.serial is not None:
            self._by_serial[c.serial] = c

    def by_serial(self, serial: str, vendor: Optional[str] = None, model: Optional[str] = None) -> Client:
        """The client with this serial; a new one is made here (durable with the next group commit).

        The caller has checked the identity against the Device API contract.
        """
        c = self._by_serial.get(serial)
        if c is not None:
            return c
        with self._lock:
            c = self._by_serial.get(serial)
            if c is None:
                token = secrets.token_hex(20)
                c = Client(identity_id(serial, token), serial, vendor, model, token, None, durable=False)
                self._index(c)
            return c

    def by_token(self, token: str) -> Client:
        """The client holding ``token``; the gateway's token is the gateway's client; a well-formed
        token gmq never issued is taken as a CIK."""
        c = self._by_token.get(token)
        if c is not None:
            return c
        gw = self.gateway()
        if gw.serial is not None and token == gw.token:
            return self.by_serial(gw.serial, gw.vendor, gw.model)
        with self._lock:
            c = self._by_token.get(token)
            if c is None:
                c = Client(identity_id(None, token), None, None, None, token, token, durable=False)
                self._index(c)
            return c

    def serial_of(self, token: str) -> Optional[str]:
        """The serial of the device ``token`` belongs to, if gmq knows it (a token it issued, or the gateway's)."""
        c = self._by_token.get(token)
        if c is not None:
            return c.serial
        gw = self.gateway()
        return gw.serial if gw.serial is not None and token == gw.token else None

    def gateway(self):
        """The gateway's identity now (all None without a Gateway.cfg)."""
        return self._gateway.current() if self._gateway is not None else Gateway()

    def is_gateway(self, client: Client) -> bool:
        return client.serial is not None and client.serial == self.gateway().serial

    def provisionable(self, client: Client) -> bool:
        """Whether gmq may activate ``client`` upstream itself: it has a serial, and not the gateway's."""
        return client.can_provision and not self.is_gateway(client)

    def committed(self, client: Client) -> None:
        """``client``'s row is on disk: the forwarder may serve it now."""
        if not client.durable:
            client.durable = True
            log.info("new client %s", client.name)
            if self.on_new is not None:
                self.on_new(client)

    def get(self, client_id: int) -> Optional[Client]:
        return self._by_id.get(client_id)

    def all(self) -> List[Client]:
        """The durable clients (a client not yet committed is not served upstream)."""
        return [c for c in list(self._by_id.values()) if c.durable]

    def set_upstream_token(self, client_id: int, token: Optional[str]) -> None:
        """Persist (fsynced) the upstream token of a client; None forgets it."""
        self._store.set_upstream_token(client_id, token)
        self._by_id[client_id].upstream_token = token
