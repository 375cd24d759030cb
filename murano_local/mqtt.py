"""Murano's MQTT Device API (murano-device-api.md §3) on an amqtt broker, sharing ``Murano``'s state.

The broker runs on its own asyncio loop in a thread of the murano_local process. Three
amqtt hooks make it Murano:

- authentication: anonymous (may only publish ``$provision/<identity>``; the token comes
  back on that topic and the connection then acts as the device, which is what
  murano-client relies on), ``""``/token, or identity/token (murano_local has no
  device passwords: the password is the device's token, and the username, if given,
  must be the identity owning it). A refused provisioning closes the connection;
- the packet hook: a device's PUBLISH is applied to the store *before* amqtt sends its
  PUBACK (the hook's task is queued ahead of amqtt's publish handler and does not yield
  until the commit is done), so an acknowledged value is on disk;
- no relaying: the broker's delivery step is replaced and every SUBSCRIBE is refused,
  so nothing a device publishes (nor its Will) reaches another client. Cloud sets go to the device's own sessions only, as
  ``$resource/<alias>/<µs>`` at QoS 1, on connect (pending ones) and when set.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

from device_api import MAX_VALUES_PER_REQUEST, ContractError, timestamp_us

from .events import Change
from .service import Murano, Unauthorized
from .store import Conflict, NotFound

log = logging.getLogger(__name__)

INSTALL_HINT = 'the MQTT endpoint needs amqtt: pip install "gateway-engine[mqtt-server]"'
# MuranoBroker replaces Broker._handle_message_delivery (amqtt refuses every $-topic there and has no
# public switch for it), so it runs only on the amqtt it was checked against (setup.py pins the same).
AMQTT_VERSION = "0.12.1"
PUSH_TIMEOUT_S = 10
QOS_1 = 1
_FRONT_ENDS: Dict[str, "MqttFrontEnd"] = {}  # amqtt builds plugins from config: they find us by key


class MqttUnavailable(RuntimeError):
    """amqtt is not installed."""


class BadPublish(ValueError):
    """A device PUBLISH that murano_local refuses (the connection is closed, nothing acknowledged)."""


@dataclass
class _Client:
    session: object
    pid: str
    identity: Optional[str]  # None: anonymous, may only provision
    token: Optional[str] = None


def batch_points(payload: str) -> List[Tuple[str, int, str]]:
    """``[{"timestamp": T, "values": {alias: v}}, ...]`` as ``[(alias, µs, text)]``; T in s or µs."""
    try:
        entries = json.loads(payload)
    except ValueError:
        raise BadPublish("$resource.batch payload is not JSON") from None
    if not isinstance(entries, list) or not entries:
        raise BadPublish("$resource.batch payload must be a non-empty list")
    points = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("values"), dict):
            raise BadPublish("$resource.batch entries need timestamp and values")
        ts = entry.get("timestamp")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise BadPublish("$resource.batch timestamp %r is not a number" % (ts,))
        try:
            us = timestamp_us(ts)
        except ContractError as exc:
            raise BadPublish("$resource.batch: %s" % exc) from None
        if len(points) + len(entry["values"]) > MAX_VALUES_PER_REQUEST:
            raise BadPublish("more than %d values in one $resource.batch" % MAX_VALUES_PER_REQUEST)
        for alias, value in entry["values"].items():
            text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            points.append((alias, us, text))
    return points


def require_amqtt():
    """amqtt's parts; raises :class:`MqttUnavailable` with the install hint when it is missing or is
    another version than :data:`AMQTT_VERSION`."""
    try:
        import amqtt
        from amqtt.broker import Broker
        from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
    except ImportError:
        raise MqttUnavailable(INSTALL_HINT) from None
    found = getattr(amqtt, "__version__", "unknown")
    if found != AMQTT_VERSION or not callable(getattr(Broker, "_handle_message_delivery", None)):
        raise MqttUnavailable('the MQTT endpoint needs amqtt %s (it replaces a private step of its broker), found %s: '
                              'pip install "amqtt==%s"' % (AMQTT_VERSION, found, AMQTT_VERSION))
    return Broker, BaseAuthPlugin, BaseTopicPlugin


class MqttFrontEnd:
    """The MQTT listeners of one ``Murano``; ``start()`` returns once they accept connections.

    ``listeners``: ``(port, certfile, keyfile)`` each, TLS where a certificate is given.
    """

    def __init__(self, murano: Murano, host: str = "127.0.0.1",
                 listeners: Sequence[Tuple[int, Optional[str], Optional[str]]] = ((1883, None, None),),
                 max_connections: int = 1000) -> None:
        require_amqtt()
        self.murano = murano
        self.host = host
        # plain first: amqtt's first ("default") listener lends its settings to the others
        self.listeners = sorted(listeners, key=lambda listener: listener[1] is not None)
        self.max_connections = max_connections  # more wait for a free slot
        self.key = uuid.uuid4().hex
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.broker = None
        self._clients: Dict[str, _Client] = {}               # client id -> who it is
        self._devices: Dict[Tuple[str, str], Set[str]] = {}  # (pid, identity) -> client ids
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._failure: Optional[BaseException] = None
        self._stopped: Optional[asyncio.Event] = None
        self._tasks: Set[asyncio.Future] = set()  # referenced until done: the loop keeps only weak references

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle (any thread) -------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> "MqttFrontEnd":
        if not log.isEnabledFor(logging.DEBUG):
            for noisy in ("amqtt", "transitions"):  # they log every connection and state change at INFO
                logging.getLogger(noisy).setLevel(logging.WARNING)
        _FRONT_ENDS[self.key] = self
        broker_log = logging.getLogger("amqtt.broker")
        level = broker_log.level
        broker_log.setLevel(logging.CRITICAL)  # a failed start (port in use) is raised, not logged with a traceback
        try:
            self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
            self._thread.start()
            if not self._ready.wait(timeout):
                raise RuntimeError("MQTT broker did not start within %.0fs" % timeout)
            if self._failure is not None:
                raise self._failure
        finally:
            broker_log.setLevel(level)
        self.murano.hub.subscribe(self._on_change)
        for port, certfile, _keyfile in self.listeners:
            log.info("murano-local serving %s://%s:%d", "mqtts" if certfile else "mqtt", self.host, port)
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stopped is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(15)
        _FRONT_ENDS.pop(self.key, None)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        Broker, auth_base, topic_base = require_amqtt()
        listeners = {}
        for n, (port, certfile, keyfile) in enumerate(self.listeners):
            listener = {"type": "tcp", "bind": "%s:%d" % (self.host, port), "max_connections": self.max_connections}
            if certfile:
                listener.update(ssl=True, certfile=certfile, keyfile=keyfile)
            listeners["default" if n == 0 else "listener%d" % n] = listener
        config = {"listeners": listeners,
                  "plugins": {__name__ + "." + _plugin_class(auth_base, topic_base).__name__: {"front_end": self.key}}}
        self.broker = _broker_class(Broker)(config, loop=asyncio.get_running_loop())
        self._stopped = asyncio.Event()
        await self.broker.start()
        self._ready.set()
        await self._stopped.wait()
        await self.broker.shutdown()

    # -- called by the plugin, on the broker's loop ------------------------------------------
    def authenticate(self, session) -> bool:
        client_id = session.client_id or ""
        username, password = session.username or "", session.password or ""
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        pid = self.murano.default_pid
        if not username and not password:
            identity = None  # anonymous: $provision only
        else:
            try:
                identity = self.murano.authenticate(pid, password)
            except Unauthorized:
                log.info("MQTT connection refused: invalid token")
                return False
            if username and username != identity:
                log.info("MQTT connection refused: %r does not own that token", username[:64])
                return False
        if not client_id.startswith("amqtt/") and client_id != identity:
            log.info("MQTT connection refused: client id must be empty (or the identity)")
            return False
        session.will_flag = session.will_retain = False  # nothing is relayed, and a retained Will would stay in memory for good
        self._forget(client_id)
        self._clients[client_id] = _Client(session, pid, identity, password or None)
        if identity is not None:
            self._devices.setdefault((pid, identity), set()).add(client_id)
        return True

    def connected(self, client_id: str) -> None:
        client = self._clients.get(client_id)
        if client is None or client.identity is None:
            return
        pending = self.murano.pending_sets(client.pid, client.identity)
        if pending:
            self._spawn(self._push(client_id, client.session, pending))

    def disconnected(self, client_id: str, session) -> None:
        client = self._clients.get(client_id)
        if client is not None and client.session is session:
            self._forget(client_id)

    def _forget(self, client_id: str) -> None:
        client = self._clients.pop(client_id, None)
        if client is not None and client.identity is not None:
            ids = self._devices.get((client.pid, client.identity), set())
            ids.discard(client_id)
            if not ids:
                self._devices.pop((client.pid, client.identity), None)

    def on_publish(self, packet, session) -> None:
        """Apply one device PUBLISH before its PUBACK; a refused one is never acknowledged."""
        client_id = session.client_id or ""
        client = self._clients.get(client_id)
        if client is None or client.session is not session:
            return
        topic = packet.topic_name or ""
        try:
            payload = bytes(packet.data or b"").decode("utf-8")
            self._apply(client_id, client, topic, payload)
        except (BadPublish, ContractError, UnicodeDecodeError) as exc:
            self._refuse(packet, client_id, "%s: %s" % (topic[:80], exc))
        except Exception:
            log.exception("MQTT publish on %s failed", topic[:80])
            self._refuse(packet, client_id, "internal error")

    def _apply(self, client_id: str, client: _Client, topic: str, payload: str) -> None:
        if topic.startswith("$provision/"):
            if client.identity is not None:
                raise BadPublish("already authenticated")
            identity = topic[len("$provision/"):]
            try:
                token = self.murano.activate(client.pid, identity)
            except (Conflict, NotFound) as exc:
                log.info("MQTT provisioning of %r refused: %s", identity[:64], exc.__class__.__name__)
                self._spawn(self._close(client_id, client.session))
                return
            client.identity, client.token = identity, token  # the token's holder may act as the device
            self._devices.setdefault((client.pid, identity), set()).add(client_id)
            self._spawn(self._reply_and_push(client_id, client, topic, token))
            return
        if client.identity is None:
            raise BadPublish("anonymous clients may only provision")
        try:
            self.murano.authenticate(client.pid, client.token)  # the device may be gone, its token revoked
        except Unauthorized:
            raise BadPublish("the token of %r is no longer valid" % client.identity[:64]) from None
        if topic.startswith("$resource/"):
            alias = topic[len("$resource/"):]
            self.murano.write(client.pid, client.identity, [(alias, payload)])
        elif topic == "$resource.batch":
            self.murano.record(client.pid, client.identity, batch_points(payload))
        else:
            log.debug("MQTT publish to %s ignored", topic[:80])

    def _refuse(self, packet, client_id: str, reason: str) -> None:
        log.warning("MQTT publish refused, closing the connection: %s", reason)
        packet.data = None  # amqtt acknowledges nothing without data
        client = self._clients.get(client_id)
        if client is not None:
            self._spawn(self._close(client_id, client.session))

    async def _reply_and_push(self, client_id: str, client: _Client, topic: str, token: str) -> None:
        """The token goes back on the request's topic (clients take the first message as the token);
        the connection then continues as the device, as murano-client expects."""
        handler = self.broker.handler_for(client_id, client.session)
        if handler is None:
            return
        try:
            await handler.mqtt_publish(topic, token.encode(), QOS_1, False, ack_timeout=PUSH_TIMEOUT_S)
        except Exception as exc:
            log.info("MQTT provisioning reply not acknowledged: %s", exc)
            return
        self.connected(client_id)

    async def _close(self, client_id: str, session) -> None:
        handler = self.broker.handler_for(client_id, session)
        if handler is not None:
            await handler.handle_connection_closed()

    async def _push(self, client_id: str, session, values: List[Tuple[str, str, int]]) -> None:
        handler = self.broker.handler_for(client_id, session)
        if handler is None:
            return
        for alias, value, ts in values:
            try:
                await handler.mqtt_publish("$resource/%s/%d" % (alias, ts), value.encode("utf-8"), QOS_1,
                                           False, ack_timeout=PUSH_TIMEOUT_S)
            except Exception as exc:  # the device gets it again on its next connect: it is still pending
                log.info("MQTT push of %s to %s failed: %s", alias, client_id, exc)
                return

    # -- cloud sets (from any thread) ---------------------------------------------------------
    def _on_change(self, change: Change) -> None:
        if change.kind != "set" or self.loop is None:
            return
        self.loop.call_soon_threadsafe(self._push_change, change)

    def _push_change(self, change: Change) -> None:
        for client_id in list(self._devices.get((change.pid, change.identity), ())):
            client = self._clients.get(client_id)
            if client is not None:
                values = [(alias, value, change.timestamp) for alias, value in change.values]
                self._spawn(self._push(client_id, client.session, values))


def _broker_class(broker_base):
    class MuranoBroker(broker_base):
        """amqtt's broker with its relaying step removed: publishes were applied by the plugin."""

        async def _handle_message_delivery(self, client_session, handler, wait_deliver) -> bool:
            wait_deliver.result()
            return True

        def handler_for(self, client_id: str, session):
            """The protocol handler of ``client_id``, if that is still ``session``'s connection."""
            current, handler = self.sessions.get(client_id, (None, None))
            return handler if current is session else None

    return MuranoBroker


_PLUGIN = None


def _plugin_class(auth_base, topic_base):
    """The amqtt plugin (built once amqtt is importable; published as a module attribute)."""
    global _PLUGIN
    if _PLUGIN is not None:
        return _PLUGIN

    @dataclass
    class _Config:
        front_end: str = ""

    class MuranoPlugin(auth_base, topic_base):
        Config = _Config

        @property
        def front_end(self) -> MqttFrontEnd:
            return _FRONT_ENDS[self.context.config.front_end]

        async def authenticate(self, *, session) -> bool:
            return self.front_end.authenticate(session)

        async def topic_filtering(self, *, session=None, topic=None, action=None) -> bool:
            """Every SUBSCRIBE is refused: pushes need none (Murano's are implicit), and with no
            subscriptions amqtt has nobody to hand a Will or a retained message to."""
            return getattr(action, "value", action) != "subscribe"

        async def on_mqtt_packet_received(self, *, packet, session=None) -> None:
            if session is not None and type(packet).__name__ == "PublishPacket":
                self.front_end.on_publish(packet, session)

        async def on_broker_client_connected(self, *, client_id, client_session) -> None:
            self.front_end.connected(client_id)

        async def on_broker_client_disconnected(self, *, client_id, client_session) -> None:
            self.front_end.disconnected(client_id, client_session)

    globals()["MuranoPlugin"] = MuranoPlugin
    MuranoPlugin.__module__ = __name__
    _PLUGIN = MuranoPlugin
    return MuranoPlugin
