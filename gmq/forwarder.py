"""The forwarder: one thread that delivers queued values upstream, oldest first, per client.

For each client it takes the oldest values (a prefix of its queue, so per-alias order
holds), sends them as one record request with their original timestamps, and deletes
them only after Murano answered 2xx. The drain is pipelined, two batches in flight per
client: while a batch is upstream, a stager thread deletes the batch answered before it and
takes and marks the next one, in one transaction (one fsync a batch, off the critical path),
and encodes its request body (``Device.prepare_record``), so the forwarder only sends it;
the next one is sent only once this one is answered, so order holds. At most two batches of a
client are marked and not deleted at any moment, so a crash sends at most two batches per
client again (counted in ``resent``); a failed send drops the staged batch (taken again, in
order, at the retry). Failures:

- network error, 5xx, 408, 429 or a redirect (3xx): the values stay; that client waits (exponential backoff with
  jitter between the configured initial and maximum delay);
- 401: the upstream token is dropped and the client re-provisions at once;
- 409 naming timestamps: those values go to the dead-letter table, the rest are resent;
- any other 4xx: the batch is halved until the value that fails alone is found, and that
  value goes to the dead-letter table, so one bad value never blocks the queue;
- activation refused (403/404/409): the client's values stay queued, it backs off, and an
  ``activation_refused`` alarm says so;
- the gateway's own serial (Gateway.cfg ``uuid``) is never activated here (gwe holds it): its
  values go with gwe's token (Gateway.cfg ``cik``), read again when gwe rewrites the file; a 401
  on it keeps them queued (``gateway_token_refused`` alarm) until gwe has activated again.

``device_client`` (and with it ``requests``) is imported here, in the forwarder thread,
so a gmq that has nothing to forward stays small.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, NamedTuple, Optional

from device_api import MAX_BODY_BYTES, MAX_TIMESTAMP_US, ContractError, check_alias, check_value
from device_client.backoff import Backoff
from device_client.link import CONNECTED, LinkState

from .clients import Client, ClientRegistry
from .queue import DurableQueue, QueuedValue, StorageError

log = logging.getLogger(__name__)

GATEWAY_WAIT_S = 1.0  # how often the gateway's client looks for gwe's token in Gateway.cfg
STORAGE_RETRY_S = 1.0  # after the queue could not record a delivery (it logs why, once)
RETRY_LATER = (408, 429)  # 4xx that say "not now" about a good request: back off, never dead-letter


@dataclass
class UpstreamSettings:
    url: Optional[str]
    batch_size: int = 500
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    timeout: float = 30.0
    verify: bool = True
    ca_file: Optional[str] = None
    transport: str = "http"
    mqtt_url: Optional[str] = None
    probe_interval: float = 60.0  # an idle link is checked with GET /timestamp this often; 0 = never


class _Staged(NamedTuple):
    """The stager's work for a client: its next batch, taken and marked, and that batch's request
    encoded for ``device`` (None if encoding failed: the forwarder encodes it again and meets the
    error itself)."""

    values: List[QueuedValue]
    prepared: object
    device: object


@dataclass
class _ClientState:
    backoff: Backoff
    limit: int
    next_try: float = 0.0
    state: str = "idle"
    last_error: Optional[str] = None
    last_delivery: Optional[float] = None
    device: object = None
    gateway_token: Optional[str] = None  # the token ``device`` was made with, for the gateway's client
    staged: Optional[Future] = None  # the stager's work: the next batch, taken, marked and encoded
    answered: List[int] = field(default_factory=list)  # ids upstream has, to delete with the next stage


@dataclass
class ForwarderStats:
    requests: int = 0
    failures: int = 0
    recent_delays: Deque[float] = field(default_factory=lambda: deque(maxlen=50))


class Forwarder(threading.Thread):
    """Delivers the queue upstream through ``device_client.Device``; see the module docstring."""

    def __init__(self, queue: DurableQueue, clients: ClientRegistry, settings: UpstreamSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name="gmq-forwarder", daemon=True)
        self.queue = queue
        self.clients = clients
        self.settings = settings
        self.clock = clock
        self.stats = ForwarderStats()
        self._states: Dict[int, _ClientState] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._errors = None  # device_client.errors, imported in the thread
        self.link = LinkState(settings.url)
        self._probe_device = None
        self._probe_backoff = self._backoff()
        self._stager: Optional[ThreadPoolExecutor] = None  # made with the first batch delivered

    # -- control ----------------------------------------------------------------------------
    def configure(self, settings: UpstreamSettings) -> None:
        """New upstream settings (from a reread): clients reconnect and their backoff restarts."""
        with self._lock:
            self.settings = settings
            for st in self._states.values():
                self._close(st)
                st.backoff = self._backoff()
                st.limit = settings.batch_size
                st.next_try = 0.0
            self.link.upstream = settings.url
            self._close_probe()
            self._probe_backoff = self._backoff()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    # -- loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        from device_client import errors  # noqa: E402  (lazy: pulls in requests)
        self._errors = errors
        while not self._stopping.is_set():
            wait = None
            self._wake.clear()  # before the round: a commit during it is seen by the next one
            try:
                worked = self._round()
            except StorageError:  # a delivery not recorded (a full or failing disk): its values stay queued
                worked, wait = False, STORAGE_RETRY_S
            except Exception:
                log.exception("forwarder round failed")
                worked = False
            if not worked:
                self._wake.wait(wait or self._idle_wait())
        if self._stager is not None:
            self._stager.shutdown(wait=True)  # its transaction is committed before the queue closes
        for st in list(self._states.values()):
            if st.answered:  # delivered: deleting them spares a resend after the restart
                try:
                    self.queue.ack(st.answered)
                except StorageError:
                    pass
        with self._lock:
            for st in self._states.values():
                self._close(st)
            self._close_probe()

    def _idle_wait(self) -> Optional[float]:
        """Sleep until woken (a commit, a new client, a reread, stop) or the next backoff or probe
        deadline; None (no deadline) when nothing is queued and the link needs no check."""
        with self._lock:
            settings = self.settings
        if not settings.url:
            return None
        now = self.clock()
        waits = [st.next_try - now for st in list(self._states.values()) if st.next_try > now]
        probe = self._probe_due(settings)
        if probe is not None:
            waits.append(probe - time.time())
        return max(0.01, min(waits)) if waits else None

    def _round(self) -> bool:
        with self._lock:
            settings = self.settings
        if not settings.url:
            return False
        worked = False
        queued = self.queue.depth_by_client()
        for client in self.clients.all():
            if self._stopping.is_set():
                break
            st = self._state(client)
            if st.next_try > self.clock():
                continue
            if not queued.get(client.id) and (client.upstream_token is not None or
                                              not self.clients.provisionable(client)):
                st.state = "idle"  # nothing to send and nothing to provision: no query, no request
                continue
            worked |= self._serve(client, st, settings)
        if not self._stopping.is_set():
            self._probe(settings)
        return worked

    def _probe(self, settings: UpstreamSettings) -> None:
        """Check an idle or failing link with ``GET /timestamp`` (no token) so ``link`` stays true."""
        due = self._probe_due(settings)
        if due is None or time.time() < due:
            return
        try:
            if self._probe_device is None:
                from device_client import Device  # noqa: E402  (lazy: pulls in requests)
                timeout = min(settings.timeout, 10.0)
                self._probe_device = Device(host=settings.url, identity="gmq", ca_file=settings.ca_file,
                                            verify=settings.verify, connect_timeout=timeout, read_timeout=timeout)
            self._probe_device.timestamp()
        except ValueError as exc:
            self.link.failed("upstream settings: %s" % exc, retry_in=settings.probe_interval)
            return
        except self._errors.DeviceAPIError as exc:
            self.link.failed_with(exc, min(self._probe_backoff.next_delay(), settings.probe_interval))
            return
        self._probe_backoff.reset()
        self.link.succeeded()

    def _probe_due(self, settings: UpstreamSettings) -> Optional[float]:
        """When (``time.time()``) the link is to be checked next; None: never (probes off)."""
        if not settings.probe_interval:
            return None
        if self.link.state == CONNECTED:
            return (self.link.checked_at() or 0.0) + settings.probe_interval
        return self.link.next_retry() or 0.0

    def _close_probe(self) -> None:
        _close_quietly(self._probe_device)
        self._probe_device = None

    def _state(self, client: Client) -> _ClientState:
        st = self._states.get(client.id)
        if st is None:
            with self._lock:
                st = self._states[client.id] = _ClientState(self._backoff(), self.settings.batch_size)
        return st

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.backoff_initial, self.settings.backoff_max)

    # -- one client -----------------------------------------------------------------------------
    def _device(self, client: Client, st: _ClientState, settings: UpstreamSettings):
        """The client's upstream Device (made once; raises ValueError for unusable settings)."""
        if st.device is None:
            from device_client import Device  # noqa: E402  (lazy: pulls in requests)
            st.device = Device(host=settings.url, product_id=client.vendor or None, serial=client.serial,
                               token=st.gateway_token or client.upstream_token, identity="gmq", ca_file=settings.ca_file,
                               verify=settings.verify, connect_timeout=settings.timeout,
                               read_timeout=settings.timeout, transport=settings.transport,
                               mqtt_url=settings.mqtt_url if settings.transport == "mqtt" else None)
        return st.device

    @staticmethod
    def _close(st: _ClientState) -> None:
        _close_quietly(st.device)
        st.device = None

    def _serve(self, client: Client, st: _ClientState, settings: UpstreamSettings) -> bool:
        """One step for one client; True if it did something worth an immediate next round."""
        errors = self._errors
        if self.clients.is_gateway(client):
            token = self.clients.gateway().token
            if token is None:
                return self._wait_for_gateway(client, st)
            if token != st.gateway_token:  # gwe activated (again): its new token from now on
                self._close(st)
                st.gateway_token = token
        try:
            dev = self._device(client, st, settings)
        except ValueError as exc:
            self._retry_later(client, st, "upstream settings: %s" % exc)
            return False
        try:
            if not dev.activated:
                return self._activate(client, st, dev)
            values, prepared, encoded_for = self._staged(st) or (None, None, None)
            if encoded_for is not dev:  # a reread since may have made a Device for another transport
                prepared = None
            if values is None:
                if st.answered:  # the last batch: nothing to overlap its delete with
                    self.queue.ack(st.answered)
                    st.answered = []
                values = _within_body_limit(self.queue.take(client.id, st.limit))
                if not values:
                    st.state = "idle"
                    return False
                refused = [v for v in values if _refused(v)]
                if refused:  # queued before gmq checked the contract at the door (an older version)
                    self.queue.dead_letter(refused, None,
                                           "refused by the Device API contract: %s" % _refused(refused[0]))
                    return True
                self.queue.mark_sent(client.id, [v.id for v in values])
            st.state = "sending"
            self.stats.requests += 1
            self._stage_next(st, client.id, values[-1].id, dev)
            try:
                dev.record(prepared if prepared is not None else _payload(values))
            except BaseException:
                self._staged(st)  # sent after this one only: taken again, in order, at the retry
                raise
        except errors.NotActivated:
            self.link.succeeded()
            if self.clients.provisionable(client):
                self.clients.set_upstream_token(client.id, None)
                st.last_error = "401: token rejected; re-provisioning"
            elif st.gateway_token is not None:
                self._close(st)
                st.gateway_token = None
                self.queue.add_alarm("gateway_token_refused", "upstream rejects the gateway's token (Gateway.cfg "
                                     "cik) for %s; its values stay queued until gwe activates again" % client.serial)
                self._retry_later(client, st, "401: the gateway's token (Gateway.cfg cik) was rejected; waiting "
                                  "for gwe to activate again")
                return False
            else:
                self._close(st)
                st.last_error = "401: token rejected and the client has no serial to re-provision"
                self.queue.dead_letter(values, 401, st.last_error)
            log.warning("client %s: %s", client.name, st.last_error)
            return True
        except errors.Conflict as exc:
            return self._conflict(client, st, values, exc)
        except (errors.ServerError, errors.NetworkError) as exc:
            self._retry_later(client, st, "%s: %s" % (exc.status or "network", exc), exc)
            return False
        except (errors.Forbidden, errors.NotFound) as exc:
            self._retry_later(client, st, "%s: upstream refuses this client: %s" % (exc.status, exc), exc)
            return False
        except errors.DeviceAPIError as exc:
            if exc.status in RETRY_LATER or (exc.status is not None and not 400 <= exc.status < 500):  # busy, 3xx
                self._retry_later(client, st, "%s: %s" % (exc.status, exc), exc)
                return False
            self.link.succeeded()
            return self._bad_batch(client, st, values, exc.status, str(exc) or "status %s" % exc.status)
        self.link.succeeded()
        st.backoff.reset()
        st.limit = min(settings.batch_size, st.limit * 2)  # after a narrowing, grow back step by step
        st.answered = [v.id for v in values]
        st.last_delivery = time.time()
        st.last_error = None
        return True

    @staticmethod
    def _staged(st: _ClientState) -> Optional[_Staged]:
        """What the stager made for ``st``'s client, or None (take a batch now). Raises StorageError
        if the stager could not record the previous delivery (its values stay queued)."""
        staged, st.staged = st.staged, None
        return staged.result() if staged is not None else None

    def _stage_next(self, st: _ClientState, client_id: int, after: int, dev) -> None:
        """Have the stager delete ``st.answered``, take and mark the batch after id ``after`` and
        encode it for ``dev``."""
        if self._stager is None:
            self._stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gmq-stager")
        st.staged = self._stager.submit(self._stage, client_id, st.answered, after, st.limit, dev)
        st.answered = []

    def _stage(self, client_id: int, answered: List[int], after: int, limit: int, dev) -> Optional[_Staged]:
        """In the stager thread: one transaction deletes ``answered`` and marks the client's next batch,
        then its request is encoded; None when there is none, or it holds a value the contract refuses
        (the forwarder takes it itself then, and dead-letters that value)."""
        values = _within_body_limit(self.queue.take(client_id, limit, after=after))
        if any(_refused(v) for v in values):
            values = []
        self.queue.ack_and_mark(answered, client_id, [v.id for v in values])
        if not values:
            return None
        try:
            prepared = dev.prepare_record(_payload(values))
        except (ValueError, self._errors.DeviceAPIError):
            prepared = None
        return _Staged(values, prepared, dev)

    def _activate(self, client: Client, st: _ClientState, dev) -> bool:
        errors = self._errors
        if not self.clients.provisionable(client):
            st.state = "no_token"
            return False
        st.state = "activating"
        try:
            token = dev.activate()
        except (errors.ServerError, errors.NetworkError) as exc:
            self._retry_later(client, st, "activation: %s: %s" % (exc.status or "network", exc), exc)
            return False
        except errors.DeviceAPIError as exc:
            self.queue.add_alarm("activation_refused", "upstream refuses to activate %s (%s); its values stay "
                                 "queued and activation is retried with backoff" % (client.serial, exc.status))
            self._retry_later(client, st, "activation refused: %s %s" % (exc.status, exc), exc)
            return False
        self.link.succeeded()
        self.clients.set_upstream_token(client.id, token)
        st.backoff.reset()
        st.last_error = None
        log.info("client %s activated upstream", client.name)
        return True

    def _wait_for_gateway(self, client: Client, st: _ClientState) -> bool:
        """The gateway's own serial before gwe has activated it: wait for its token in Gateway.cfg."""
        if st.state != "waiting_for_gateway":
            log.info("client %s is the gateway's own serial: its values wait for gwe's token (Gateway.cfg cik)",
                     client.name)
        st.state = "waiting_for_gateway"
        st.last_error = "the gateway's own serial: waiting for gwe to activate it (no cik in Gateway.cfg)"
        st.next_try = self.clock() + GATEWAY_WAIT_S
        return False

    def _retry_later(self, client: Client, st: _ClientState, why: str, exc: Optional[BaseException] = None) -> None:
        delay = st.backoff.next_delay()
        if exc is not None:
            self.link.failed_with(exc, delay)
        st.next_try = self.clock() + delay
        st.state = "backoff"
        st.last_error = why
        self.stats.failures += 1
        self.stats.recent_delays.append(round(delay, 3))
        self.queue.note_retry()
        log.warning("client %s: %s; next try in %.1fs", client.name, why, delay)

    def _conflict(self, client: Client, st: _ClientState, values: List[QueuedValue], exc) -> bool:
        named = {(alias, float(ts)) for alias, stamps in (getattr(exc, "conflicts", None) or {}).items()
                 for ts in stamps if _is_number(ts)}
        clash = [v for v in values if (v.alias, round(v.ts, 6)) in {(a, round(t, 6)) for a, t in named}]
        self.link.succeeded()
        if not clash:
            return self._bad_batch(client, st, values, 409, "record conflict")
        self.queue.dead_letter(clash, 409, "record conflict: upstream already has a value at this timestamp")
        return True

    def _bad_batch(self, client: Client, st: _ClientState, values: List[QueuedValue], status: Optional[int],
                   why: str) -> bool:
        """A 4xx that retrying will not fix: narrow down to the value at fault, then dead-letter it."""
        if len(values) > 1:
            st.limit = max(1, len(values) // 2)
            log.info("client %s: %s on %d values; retrying with %d", client.name, why, len(values), st.limit)
        else:
            self.queue.dead_letter(values, status, why)
            st.limit = self.settings.batch_size
        st.last_error = "%s: %s" % (status, why)
        return True

    # -- observation ------------------------------------------------------------------------------
    def status(self) -> dict:
        now = self.clock()
        with self._lock:
            settings = self.settings
            states = dict(self._states)
        clients = []
        gateway = self.clients.gateway()
        for c in self.clients.all():
            st = states.get(c.id)
            own = c.serial is not None and c.serial == gateway.serial
            clients.append({
                "id": c.id,
                "client": c.name,
                "gateway": own,
                "activated": (gateway.token if own else c.upstream_token) is not None,
                "state": st.state if st else "idle",
                "last_error": st.last_error if st else None,
                "last_delivery": st.last_delivery if st else None,
                "retry_in": round(max(0.0, st.next_try - now), 3) if st else 0.0,
            })
        return {
            "upstream": settings.url,
            "state": "no_upstream" if not settings.url else "running",
            "batch_size": settings.batch_size,
            "backoff": [settings.backoff_initial, settings.backoff_max],
            "requests": self.stats.requests,
            "failures": self.stats.failures,
            "recent_delays": list(self.stats.recent_delays),
            "clients": clients,
        }


def _close_quietly(device) -> None:
    if device is not None:
        try:
            device.close()
        except Exception:
            log.debug("closing a device failed", exc_info=True)


def _within_body_limit(values: List[QueuedValue]) -> List[QueuedValue]:
    """The prefix of ``values`` whose record body surely fits Murano's body limit (at least one value).

    Percent-encoding at most triples a byte; a timestamp, ``=``, ``&`` and an ``alias=`` field fit in 32 more.
    """
    budget = MAX_BODY_BYTES
    for i, v in enumerate(values):
        budget -= 3 * (len(v.alias.encode("utf-8")) + len(v.value.encode("utf-8"))) + 32
        if budget < 0:
            return values[:max(1, i)]
    return values


def _refused(v: QueuedValue) -> Optional[str]:
    """Why Murano would refuse this value (the Device API contract), or None."""
    try:
        check_alias(v.alias)
        check_value(v.value, v.alias)
    except ContractError as exc:
        return str(exc)
    if not 0 <= v.ts * 1e6 < MAX_TIMESTAMP_US:
        return "timestamp %r out of range" % v.ts
    return None


def _is_number(text: object) -> bool:
    try:
        float(text)  # type: ignore[arg-type]
        return True
    except (TypeError, ValueError):
        return False


def _payload(values: List[QueuedValue]) -> Dict[str, list]:
    """``{alias: [(ts, value), ...]}`` in queue order (dicts keep insertion order)."""
    out: Dict[str, list] = {}
    for v in values:
        out.setdefault(v.alias, []).append((round(v.ts, 6), v.value))
    return out
