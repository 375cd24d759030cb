"""The Device API over Murano's MQTT (murano-device-api.md §3), with paho-mqtt 2.x.

One long-lived connection per token, opened on first use and kept up by a network
thread that reconnects with exponential backoff and jitter (:class:`~device_client.Backoff`).

- write -> ``$resource/<alias>`` and record -> ``$resource.batch`` (µs timestamps), at
  QoS 1: a call returns only once the broker's PUBACK arrived. If the connection drops
  before, paho sends the message again after reconnecting (at least once).
- activate -> an anonymous connection publishing ``$provision/<identity>``; the first
  message back carries the token. A server that closes the connection without one
  refused the identity (unknown, already activated, or not allowed).
- cloud sets arrive as ``$resource/<alias>/<µs>``: kept (latest per alias) for
  ``long_poll``, which blocks until one of its aliases is pushed, and handed to
  listeners (:meth:`MqttTransport.add_listener`) as they arrive.
- Murano's MQTT has no read, timestamp or content topics: those calls go to the HTTP
  transport given as ``http`` (same host, same token).

Usage is logged per message like HTTP (type ``post`` for what the device publishes,
``get`` for pushes it receives): tx/rx are MQTT packet sizes computed from fixed header
+ topic + packet id + payload (PUBLISH) and 4 bytes per PUBACK; CONNECT, keep-alives
and TLS records are not attributed to any call.
"""
from __future__ import annotations

import email.utils
import json
import logging
import re
import ssl
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from device_api import ContractError, check_alias, check_value, timestamp_us

from . import errors
from .backoff import Backoff
from .transport import ContentStream, Pairs, Transport
from .usage import UsageLog, interfaces

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
PUBACK_BYTES = 4
_TOPIC_UNSAFE = re.compile(r"[/+#]")  # an alias with these cannot be a $resource/<alias> topic
Listener = Callable[[str, str, int], None]
_NO_CONNECTION = object()
_CONNACK_AUTH = (134, 135)      # MQTT 3.1.1 CONNACK 4 and 5 as paho reports them: bad credentials, not authorized
_CONNACK_UNAVAILABLE = 136      # CONNACK 3: server unavailable


def check_mqtt_url(url: str) -> Tuple[str, str, int]:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` as (scheme, host, port)."""
    parts = urlsplit(url or "")
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError("MQTT URL must be mqtt://host[:port] or mqtts://host[:port], got %r" % url)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("MQTT URL must be a plain mqtt(s)://host:port, got %r" % url)
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError("bad port in %r" % url) from None
    return parts.scheme, parts.hostname, port


def publish_size(topic: str, payload: bytes, qos: int = 1) -> int:
    """Bytes of one MQTT 3.1.1 PUBLISH packet on the wire (TLS framing aside)."""
    remaining = 2 + len(topic.encode("utf-8")) + (2 if qos else 0) + len(payload)
    length_bytes = 1
    while remaining >= 128 ** length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


def _local_address(client) -> Optional[str]:
    sock = client.socket()
    try:
        return sock.getsockname()[0] if sock is not None else None
    except OSError:
        return None


class MqttTransport:
    """Device API calls over one MQTT connection; HTTP (``http``) for reads, time and content.

    ``verify`` True checks the broker's certificate against the system CAs, a path
    against that CA file, False not at all (logged). ``cert`` is (certfile, keyfile)
    for TLS client-certificate auth. ``subscribe_pushes`` also SUBSCRIBEs to
    ``$resource/+/+`` after connecting, for brokers where subscriptions are not
    implicit as they are on Murano (e.g. a plain mosquitto).
    """

    def __init__(self, url: str, *, http: Optional[Transport] = None, verify: Union[bool, str] = True,
                 cert: Union[None, str, Tuple[str, str]] = None, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, keepalive: int = 60, usage: Optional[UsageLog] = None,
                 identity: str = "", subscribe_pushes: bool = False,
                 backoff: Tuple[float, float] = (0.5, 30.0)) -> None:
        self.scheme, self.host, self.port = check_mqtt_url(url)
        self.url = url
        self.http = http
        self.verify = verify
        self.cert = cert
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.usage = usage
        self.identity = identity
        self.subscribe_pushes = subscribe_pushes
        self._backoff = Backoff(*backoff)
        self._lock = threading.Lock()              # one connection set-up at a time
        self._cond = threading.Condition()         # connection state, PUBACKs, pushes
        self._client = None
        self._thread: Optional[threading.Thread] = None
        self._token: object = _NO_CONNECTION  # the token the running connection uses (None: certificate)
        self._stop = threading.Event()
        self._connected = False
        self._fatal: Optional[errors.DeviceAPIError] = None  # no point reconnecting until the token changes
        self._last_error: Optional[str] = None
        self._pushed: Dict[str, Tuple[str, int]] = {}
        self._listeners: List[Listener] = []
        self._local: Optional[str] = None  # local address of the connection, for the usage log's iface
        self.reconnects = 0

    # -- connection -------------------------------------------------------------------------

    def _new_client(self, username: Optional[str], password: Optional[str]):
        from paho.mqtt.client import Client, MQTTv311
        from paho.mqtt.enums import CallbackAPIVersion

        client = Client(CallbackAPIVersion.VERSION2, client_id="", protocol=MQTTv311, clean_session=True,
                        reconnect_on_failure=False)
        client.connect_timeout = self.connect_timeout
        client.max_queued_messages_set(0)
        if password is not None:
            client.username_pw_set(username or "", password)
        if self.scheme == "mqtts":
            if isinstance(self.cert, str):  # certificate and key in one file, as requests takes it
                certfile, keyfile = self.cert, None
            else:
                certfile, keyfile = self.cert if self.cert else (None, None)
            if self.verify is False:
                client.tls_set(certfile=certfile, keyfile=keyfile, cert_reqs=ssl.CERT_NONE)
                client.tls_insecure_set(True)
            else:
                client.tls_set(ca_certs=self.verify if isinstance(self.verify, str) else None,
                               certfile=certfile, keyfile=keyfile, cert_reqs=ssl.CERT_REQUIRED)
        return client

    def _ensure(self, token: Optional[str]):
        """The connected client for ``token``, (re)connecting as needed; raises when it cannot."""
        with self._lock:
            if self._token != token or self._thread is None or not self._thread.is_alive():
                self._shutdown()
                self._token = token
                self._fatal = None
                self._stop = threading.Event()
                self._client = self._new_client("", token) if token else self._new_client(None, None)
                self._client.on_connect = self._on_connect
                self._client.on_disconnect = self._on_disconnect
                self._client.on_message = self._on_message
                self._client.on_publish = self._on_publish
                self._thread = threading.Thread(target=self._run, args=(self._client, self._stop),
                                                name="mqtt-device", daemon=True)
                self._thread.start()
            client = self._client
        with self._cond:
            self._cond.wait_for(lambda: self._connected or self._fatal is not None, self.connect_timeout)
            if self._fatal is not None:
                raise self._fatal
            if not self._connected:
                raise errors.NetworkError("MQTT: cannot connect to %s:%d%s" % (
                    self.host, self.port, ": %s" % self._last_error if self._last_error else ""))
        return client

    def _run(self, client, stop: threading.Event) -> None:
        """Connect, serve, and on any loss reconnect after a backoff delay, until stopped or refused."""
        first = True
        while not stop.is_set():
            try:
                if first:
                    client.connect(self.host, self.port, self.keepalive)
                    first = False
                else:
                    client.reconnect()
                client.loop_forever()
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                self._note_error(exc)
            with self._cond:
                self._connected = False
                self._cond.notify_all()
                if self._fatal is not None or stop.is_set():
                    return
            delay = self._backoff.next_delay()
            log.info("MQTT connection to %s:%d lost (%s); reconnecting in %.1fs", self.host, self.port,
                     self._last_error or "closed", delay)
            if stop.wait(delay):
                return
            self.reconnects += 1

    def _note_error(self, exc: BaseException) -> None:
        with self._cond:
            self._last_error = "%s: %s" % (exc.__class__.__name__, exc)
            if isinstance(exc, ssl.SSLCertVerificationError):
                self._fatal = errors.TLSError("MQTT: %s:%d's certificate is not trusted: %s"
                                              % (self.host, self.port, exc.verify_message))

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            with self._cond:
                message = "MQTT connection refused: %s" % reason_code
                if reason_code.value in _CONNACK_AUTH:
                    self._fatal = errors.NotActivated(message, 401)
                elif reason_code.value != _CONNACK_UNAVAILABLE:  # that one is worth retrying
                    self._fatal = errors.RequestError(message, None)
                self._last_error = str(reason_code)
                self._cond.notify_all()
            client.disconnect()
            return
        if self.subscribe_pushes:
            client.subscribe("$resource/+/+", qos=1)
        self._backoff.reset()
        self._local = _local_address(client)
        with self._cond:
            self._connected = True
            self._last_error = None
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._connected = False
            if reason_code.is_failure:
                self._last_error = str(reason_code)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        parts = message.topic.split("/")
        if len(parts) != 3 or parts[0] != "$resource":
            return
        alias = parts[1]
        try:
            ts = int(parts[2])
            value = message.payload.decode("utf-8")
        except ValueError:
            log.warning("MQTT push on %r ignored: not $resource/<alias>/<µs> with UTF-8 text", message.topic[:80])
            return
        self._log("long_poll", "get", [alias], PUBACK_BYTES if message.qos else 0,
                  publish_size(message.topic, message.payload, message.qos), 0.0, self._local)
        with self._cond:
            self._pushed[alias] = (value, ts)
            self._cond.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(alias, value, ts)
            except Exception:
                log.exception("push listener %r failed", listener)

    def _shutdown(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        try:
            self._client.disconnect()
        except Exception as exc:
            log.debug("MQTT disconnect: %s", exc)
        self._thread.join(self.connect_timeout + 5)
        self._thread = None
        with self._cond:
            self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    # -- publishing ---------------------------------------------------------------------------

    def _publish(self, kind: str, token: Optional[str], topic: str, payload: bytes, aliases: Sequence[str]) -> None:
        """Publish at QoS 1 and wait for the PUBACK (``read_timeout``)."""
        client = self._ensure(token)
        started = time.monotonic()
        info = client.publish(topic, payload, qos=1)
        if info.rc not in (0, 4):  # 4: not connected right now; paho sends it after reconnecting
            raise errors.NetworkError("MQTT publish to %s failed: rc %s" % (topic, info.rc))
        with self._cond:
            self._cond.wait_for(lambda: info.is_published() or self._fatal is not None, self.read_timeout)
            done = info.is_published()
        self._log(kind, "post", aliases, publish_size(topic, payload), PUBACK_BYTES if done else 0,
                  time.monotonic() - started, self._local)
        if not done and self._fatal is not None:
            raise self._fatal
        if not done:
            with self._lock:  # a fresh connection next time: paho must not resend this one behind our back
                if self._client is client:
                    self._shutdown()
                    self._token = _NO_CONNECTION
            raise errors.NetworkError("MQTT: no PUBACK for %s within %.0fs (the server may or may not have it)"
                                      % (topic, self.read_timeout))

    def _log(self, kind: str, method: str, aliases: Sequence[str], tx: int, rx: int, duration: float,
             local: Optional[str]) -> None:
        if self.usage is None:
            return
        try:
            self.usage.record(interfaces.resolve(local), self.identity, kind, method, aliases, tx, rx, duration,
                              None)
        except Exception as exc:  # usage logging never breaks a call
            log.debug("usage logging failed: %s", exc)

    # -- Device API ---------------------------------------------------------------------------

    def activate(self, pairs: Pairs) -> str:
        fields = dict(pairs)
        identity = fields.get("sn") or fields.get("id")
        if not identity:
            raise ValueError("MQTT provisioning needs an identity")
        if re.search(r"[+#\x00]", identity):  # no topic could carry it: the request would never be sent
            raise ValueError("identity %r cannot be provisioned over MQTT" % identity[:40])
        topic = "$provision/" + identity
        reply: List[str] = []
        local: List[Optional[str]] = []
        done = threading.Event()
        client = self._new_client(None, None)

        def on_connect(c, userdata, flags, reason_code, properties) -> None:
            if reason_code.is_failure:
                done.set()
            else:
                local.append(_local_address(c))
                if self.subscribe_pushes:  # a plain broker routes the reply only to subscribers
                    c.subscribe(topic, qos=1)
                else:
                    c.publish(topic, b"", qos=1)

        def on_message(c, userdata, message) -> None:
            if message.topic.split("/", 1)[0] == "$provision" and message.payload:  # not our own request echoed
                reply.append(message.payload.decode("utf-8", "replace"))
                done.set()

        client.on_connect = on_connect
        client.on_subscribe = lambda c, *args: c.publish(topic, b"", qos=1)
        client.on_message = on_message
        client.on_disconnect = lambda *args: done.set()
        started = time.monotonic()
        try:
            client.connect(self.host, self.port, self.keepalive)
        except ssl.SSLCertVerificationError as exc:
            raise errors.TLSError("activate: %s:%d's certificate is not trusted: %s"
                                  % (self.host, self.port, exc.verify_message)) from exc
        except OSError as exc:
            raise errors.NetworkError("activate: cannot connect to %s:%d: %s" % (self.host, self.port, exc)) from exc
        client.loop_start()
        try:
            done.wait(self.connect_timeout + self.read_timeout)
        finally:
            client.disconnect()
            client.loop_stop()
        payload = reply[0] if reply else ""
        self._log("actvt", "post", [], publish_size(topic, b""),
                  publish_size(topic, payload.encode()) + PUBACK_BYTES if reply else 0,
                  time.monotonic() - started, local[0] if local else None)
        if not reply:
            raise errors.RequestError("activate: the server closed the connection without a token "
                                      "(identity unknown, already activated, or not allowed)", None)
        return payload.strip()

    @staticmethod
    def _check(alias: str, value: str, topic: bool = False) -> None:
        """What the server would refuse by closing the connection is refused here, with a reason."""
        try:
            check_alias(alias)
            check_value(value, alias)
        except ContractError as exc:
            raise errors.RequestError(str(exc), None) from None
        if topic and _TOPIC_UNSAFE.search(alias):
            raise errors.RequestError("alias %r cannot be an MQTT topic: write it over HTTP or record it" % alias[:40],
                                      None)

    def write(self, token: Optional[str], pairs: Pairs) -> None:
        for alias, value in pairs:
            self._check(alias, value, topic=True)
        for alias, value in pairs:
            self._publish("write", token, "$resource/" + alias, value.encode("utf-8"), [alias])

    @classmethod
    def encode_record(cls, entries: List[Tuple[str, Pairs]]) -> bytes:
        by_time: Dict[int, Dict[str, str]] = {}
        for alias, points in entries:
            for ts, value in points:
                cls._check(alias, value)
                by_time.setdefault(timestamp_us(ts), {})[alias] = value
        batch = [{"timestamp": ts, "values": values} for ts, values in sorted(by_time.items())]
        return json.dumps(batch, separators=(",", ":")).encode()

    def send_record(self, token: Optional[str], body: bytes, aliases: Sequence[str]) -> None:
        self._publish("record", token, "$resource.batch", body, list(aliases))

    def long_poll(self, token: Optional[str], aliases: Sequence[str], timeout_ms: int,
                  since: Optional[str]) -> Tuple[Pairs, Optional[str]]:
        """Block until the cloud pushes one of ``aliases`` (or ``timeout_ms``); each push is
        returned once. ``since`` is not needed: a set still pending is pushed again on reconnect."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        self._ensure(token)
        with self._cond:
            while True:
                found = [(a, self._pushed.pop(a)) for a in aliases if a in self._pushed]
                if found:
                    newest = max(ts for _a, (_v, ts) in found)
                    return [(a, v) for a, (v, _ts) in found], email.utils.formatdate(newest / 1e6, usegmt=True)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return [], since
                if self._fatal is not None:
                    raise self._fatal
                self._cond.wait(remaining)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(alias, value, timestamp_us)`` for every pushed set (on the network thread)."""
        with self._cond:
            self._listeners.append(listener)

    def _http(self) -> Transport:
        if self.http is None:
            raise errors.RequestError("Murano's MQTT API has no reads, time or content; no HTTP host given", None)
        return self.http

    def read(self, token: Optional[str], aliases: Sequence[str]) -> Pairs:
        return self._http().read(token, aliases)

    def read_write(self, token: Optional[str], pairs: Pairs, aliases: Sequence[str]) -> Pairs:
        self.write(token, pairs)
        return self._http().read(token, list(aliases))

    def timestamp(self) -> str:
        return self._http().timestamp()

    def list_content(self, token: Optional[str], product_id: Optional[str]) -> str:
        return self._http().list_content(token, product_id)

    def content_info(self, token: Optional[str], product_id: Optional[str], name: str) -> str:
        return self._http().content_info(token, product_id, name)

    def open_content(self, token: Optional[str], product_id: Optional[str], name: str,
                     offset: int) -> ContentStream:
        return self._http().open_content(token, product_id, name, offset)

    def send_file(self, token: Optional[str], method: str, path: str, headers: dict, data: object,
                  expect: Tuple[int, ...], label: str) -> Tuple[int, str, dict]:
        return self._http().send_file(token, method, path, headers, data, expect, label)

    def close(self) -> None:
        with self._lock:
            self._shutdown()
        if self.http is not None:
            self.http.close()
