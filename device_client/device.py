"""``Device``: the Murano Device API as plain Python calls, for gwe, gmq and gateway apps.

A ``Device`` holds one identity and its token, one transport (a keep-alive HTTP
session) and the usage log. Every call either returns decoded values or raises one of
:mod:`device_client.errors`; a 401 drops the token so the next ``activate()``
provisions again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from atomic_config import atomic_write, fsync_dir
from atomic_config.version import VERSION as __version__
from device_api import MAX_LONG_POLL_MS, check_alias, check_value, format_timestamp

from . import errors
from .hashing import hash_file as _hash_file
from .token_store import TokenStore, valid_token
from .transport import Pairs, Transport
from .usage import DROPPED, TOP_CONSUMER, UsageLog

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, Optional[int]], None]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MISSING = object()


class Download(NamedTuple):
    path: str
    size: int
    sha256: str
    resumed_from: int


class PreparedRecord(NamedTuple):
    """A record request's body, checked and encoded for one transport (``Device.prepare_record``)."""

    body: bytes
    aliases: Tuple[str, ...]
    encoding: str  # the transport class that encoded it: another one cannot send it


class Device:
    """One device identity talking to Murano (or murano_local, or gmq) over the Device API.

    ``host`` is the base URL (``https://<pid>.m2.exosite.io``; ``http://`` for loopback
    and dev servers). Identity is ``product_id`` + ``serial`` (activation sends
    ``vendor=model=product_id, sn=serial``) or ``serial`` alone (``id=serial``); or give
    ``token`` directly, or ``cert=(certfile, keyfile)`` for TLS client-certificate auth.
    ``token_file`` keeps the token across restarts (0600). ``identity`` names the
    consumer in the usage report; ``usage_db`` None logs to the gateway's shared
    database, False disables logging.

    ``transport`` is ``"http"`` (default), ``"mqtt"`` or a ready transport object. Over
    MQTT, ``mqtt_url`` (``mqtts://host:8883``, ``mqtt://host:1883``) defaults to the
    host of ``host`` on port 8883 (TLS) for https, 1883 for http; reads, timestamp and
    content still go to ``host`` over HTTP (Murano's MQTT API has none of them).
    """

    def __init__(self, host: str, product_id: Optional[str] = None, serial: Optional[str] = None,
                 token: Optional[str] = None, token_file: Optional[str] = None, identity: str = "gwe",
                 ca_file: Optional[str] = None, cert: Optional[Union[str, Tuple[str, str]]] = None,
                 verify: bool = True, usage_db: Union[None, bool, str] = None,
                 user_agent: Optional[str] = None, connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 transport: Union[None, str, Transport] = None, mqtt_url: Optional[str] = None) -> None:
        self.host = _check_host(host)
        self.product_id = product_id or None
        self.serial = serial or None
        self.identity = _check_identity(identity)
        self.cert = tuple(cert) if isinstance(cert, (list, tuple)) else cert
        token = token or None
        if token is not None and not valid_token(token):
            raise ValueError("token must be printable ASCII without spaces")
        if ca_file is not None and not os.path.isfile(ca_file):
            raise ValueError("CA file %s does not exist" % ca_file)
        if not verify:
            log.warning("TLS verification is OFF for %s", self.host)
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self._store = TokenStore(token_file) if token_file else None
        self._token = token or (self._store.load() if self._store else None)
        self.usage = None if usage_db is False else UsageLog(None if usage_db in (None, True) else usage_db)
        if transport not in (None, "http", "mqtt") and isinstance(transport, str):
            raise ValueError("transport must be 'http', 'mqtt' or a transport object, got %r" % transport)
        if mqtt_url is not None and transport != "mqtt":
            raise ValueError("mqtt_url goes with transport='mqtt'")
        if transport in (None, "http", "mqtt"):
            from .transport_http import HttpTransport  # requests costs ~27 MiB: only when a Device is made

            http = HttpTransport(self.host, verify=(ca_file or True) if verify else False, cert=self.cert,
                                 connect_timeout=connect_timeout, read_timeout=read_timeout,
                                 user_agent=user_agent or "gateway-engine-device-client/%s" % __version__,
                                 usage=self.usage, identity=self.identity)
            if transport == "mqtt":
                from .transport_mqtt import MqttTransport

                transport = MqttTransport(mqtt_url or default_mqtt_url(self.host), http=http,
                                          verify=(ca_file or True) if verify else False, cert=self.cert,
                                          connect_timeout=connect_timeout, read_timeout=read_timeout,
                                          usage=self.usage, identity=self.identity)
            else:
                transport = http
        self.transport = transport

    # -- identity and token ---------------------------------------------------------------

    @property
    def token(self) -> Optional[str]:
        return self._token

    @property
    def activated(self) -> bool:
        """True when requests can authenticate: a token, or a client certificate."""
        return self._token is not None or self.cert is not None

    def activate(self, force: bool = False) -> str:
        """Provision this identity and keep its token; returns the token.

        With a token already held, returns it without asking (``force`` asks anyway).
        With a client certificate there is nothing to provision: returns ``""``.
        Raises :class:`~errors.Conflict` when Murano already handed the token out (409),
        :class:`~errors.NotFound` for an identity the product does not know (404).
        """
        if self.cert is not None and self._token is None:
            return ""
        if self._token is not None and not force:
            return self._token
        if not self.serial:
            raise ValueError("activation needs a serial (and a product id for vendor/model activation)")
        if self.product_id:
            pairs = [("vendor", self.product_id), ("model", self.product_id), ("sn", self.serial)]
        else:
            pairs = [("id", self.serial)]
        token = self.transport.activate(pairs)
        if not valid_token(token):
            raise errors.DeviceAPIError("activation answered 200 without a usable token", 200, token)
        if self._store is not None:
            self._store.save(token)
        self._token = token
        log.info("activated %s", self.serial)
        return token

    def _call(self, operation: Callable[[Optional[str]], object]):
        """Run ``operation(token)``; a 401 drops the token (and its file) before re-raising."""
        if self.cert is not None:
            token = self._token
        elif self._token is None:
            raise errors.NotActivated("not activated: call activate() first")
        else:
            token = self._token
        try:
            return operation(token)
        except errors.NotActivated:
            if token is not None and self._token == token:
                log.warning("token rejected (401); it is dropped and the device must re-activate")
                self._token = None
                if self._store is not None and self._store.load() == token:
                    self._store.clear()
            raise

    # -- data -----------------------------------------------------------------------------

    def write(self, values: Union[Mapping[str, object], str], value: object = _MISSING) -> None:
        """Write one alias (``write("a", 1)``) or several at once (``write({"a": 1, "b": "x"})``).

        Numbers and booleans are sent as text, dicts and lists as JSON.
        """
        if isinstance(values, str):
            if value is _MISSING:
                raise TypeError("write(alias, value) needs a value")
            values = {values: value}
        elif value is not _MISSING:
            raise TypeError("give either a mapping or an alias and a value")
        pairs = _checked_pairs(values)
        if not pairs:
            raise ValueError("nothing to write")
        self._call(lambda token: self.transport.write(token, pairs))

    def read(self, *aliases: Union[str, Sequence[str]]) -> Dict[str, str]:
        """The current values of ``aliases`` (``{}`` when none has a value). Values are strings."""
        names = _alias_list(aliases)
        return dict(self._call(lambda token: self.transport.read(token, names)))  # type: ignore[arg-type]

    def read_write(self, values: Mapping[str, object], *aliases: Union[str, Sequence[str]]) -> Dict[str, str]:
        """Write ``values`` and read ``aliases`` in one request (the writes are applied first)."""
        pairs = _checked_pairs(values)
        names = _alias_list(aliases)
        if not pairs:
            raise ValueError("nothing to write")
        return dict(self._call(lambda token: self.transport.read_write(token, pairs, names)))  # type: ignore[arg-type]

    def long_poll(self, aliases: Union[str, Sequence[str]], timeout_ms: int = 30_000,
                  since: Union[None, str, int, float] = None) -> Tuple[Dict[str, str], Optional[str]]:
        """Wait up to ``timeout_ms`` for a new value of ``aliases``.

        Returns ``(values, last_modified)``: pass ``last_modified`` as ``since`` next
        time so no update falls between two polls. On timeout: ``({}, since)``.
        """
        names = _alias_list([aliases])
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or not 0 < timeout_ms <= MAX_LONG_POLL_MS:
            raise ValueError("timeout_ms must be an integer in 1..%d" % MAX_LONG_POLL_MS)
        if isinstance(since, (int, float)) and not isinstance(since, bool):
            if not math.isfinite(since) or since < 0:
                raise ValueError("since must be an HTTP date, unix seconds or None")
            since = str(since) if isinstance(since, int) else repr(since)  # truncating re-sends that second
        elif since is not None and (not isinstance(since, str) or _CONTROL.search(since)):
            raise ValueError("since must be an HTTP date, unix seconds or None")
        values, last_modified = self._call(
            lambda token: self.transport.long_poll(token, names, timeout_ms, since))  # type: ignore[arg-type]
        return dict(values), last_modified

    def watch(self, aliases: Union[str, Sequence[str]], timeout_ms: int = 30_000) -> Iterator[Dict[str, str]]:
        """Yield what the cloud sets on ``aliases``, one dict per change, forever.

        Long polls over HTTP; over MQTT each pushed set is yielded as it arrives.
        """
        since: Optional[str] = None
        while True:
            values, since = self.long_poll(aliases, timeout_ms, since)
            if values:
                yield values

    def on_set(self, callback: Callable[[str, str, int], None]) -> None:
        """MQTT only: call ``callback(alias, value, timestamp_us)`` for every set the cloud pushes,
        from the network thread (keep it short). Pushes are also queued for ``long_poll``."""
        add_listener = getattr(self.transport, "add_listener", None)
        if add_listener is None:
            raise ValueError("push callbacks need transport='mqtt'; use long_poll or watch over HTTP")
        add_listener(callback)

    def record(self, points: Union[Mapping[str, Iterable[Tuple[Union[int, float], object]]], PreparedRecord]) -> None:
        """Write historical values: ``{alias: [(unix_seconds, value), ...]}``, or what
        :meth:`prepare_record` made of them.

        A :class:`~errors.Conflict` carries ``conflicts`` (alias -> clashing timestamps).
        """
        prepared = points if isinstance(points, PreparedRecord) else self.prepare_record(points)
        if prepared.encoding != type(self.transport).__name__:
            raise ValueError("this record was prepared for %s, not for this Device's %s: prepare it again here"
                             % (prepared.encoding, type(self.transport).__name__))
        self._call(lambda token: self.transport.send_record(token, prepared.body, prepared.aliases))

    def prepare_record(self, points: Mapping[str, Iterable[Tuple[Union[int, float], object]]]) -> PreparedRecord:
        """Check and encode ``record(points)``'s request body without sending it, for a sender that
        prepares the next batch while one is on the wire (gmq's stager). Needs no token, touches
        no connection: safe from any thread. Raises what ``record`` raises for bad points."""
        entries: List[Tuple[str, Pairs]] = []
        for alias, series in points.items():
            pairs = [(format_timestamp(ts), check_value(to_text(v), alias)) for ts, v in series]
            if pairs:
                entries.append((check_alias(alias), pairs))
        if not entries:
            raise ValueError("nothing to record")
        return PreparedRecord(self.transport.encode_record(entries), tuple(alias for alias, _ in entries),
                              type(self.transport).__name__)

    def timestamp(self) -> int:
        """The server's clock, unix seconds (no token needed)."""
        text = self.transport.timestamp().strip()
        try:
            return int(float(text))
        except ValueError:
            raise errors.DeviceAPIError("timestamp: not a number: %r" % text[:40], 200, text) from None

    # -- content area ---------------------------------------------------------------------

    def list_content(self) -> List[str]:
        """Names of the files in the product's content area."""
        text = self._call(lambda token: self.transport.list_content(token, self.product_id))
        return [line.split(",", 1)[0].strip() for line in str(text).splitlines() if line.strip()]

    def content_info(self, name: str) -> dict:
        """``{"content_type", "size", "updated", "meta"}`` of one content file."""
        name = _check_name(name)
        text = str(self._call(lambda token: self.transport.content_info(token, self.product_id, name))).strip()
        fields = text.split(",", 3)
        try:
            return {"content_type": fields[0], "size": int(fields[1]), "updated": int(float(fields[2])),
                    "meta": fields[3] if len(fields) > 3 else ""}
        except (IndexError, ValueError):
            raise errors.DeviceAPIError("content_info: unexpected body %r" % text[:80], 200, text) from None

    def download_content(self, name: str, dest: str, sha256: Optional[str] = None,
                         progress: Optional[ProgressCallback] = None, max_bytes: Optional[int] = None) -> Download:
        """Download content ``name`` to ``dest`` in constant memory.

        Bytes go to ``dest + ".part"``; an existing part file is resumed with a Range
        request if the server's copy has not changed since (size and update time).
        ``dest`` appears (atomically) only once the size matches what the server
        announced and ``sha256`` (if given) matches. ``progress(done, total)`` is called
        as bytes arrive. A cut transfer raises :class:`~errors.NetworkError` and keeps the
        part file for the next call; a size or checksum mismatch raises
        :class:`~errors.ContentMismatch` and removes it.
        """
        name = _check_name(name)
        expected = sha256.lower() if sha256 else None
        if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise ValueError("sha256 must be 64 hex digits")
        dest = os.path.abspath(dest)
        part = dest + ".part"
        source = part + ".source"
        known_size = self._match_part_to_source(name, part, source)
        for _attempt in range(2):
            result = self._download_once(name, dest, part, expected, progress, max_bytes, known_size)
            if result is not None:
                _remove(source)
                return result
            log.warning("content %s: partial file does not fit the server's copy; starting over", name)
            _remove(part)
        raise errors.ContentMismatch("content %s: server does not honour the resume range" % name)

    def _match_part_to_source(self, name: str, part: str, source: str) -> Optional[int]:
        """Resume a part file only if the server's copy is still the one it came from.

        A content file replaced between a cut and the resume would otherwise be spliced
        from two versions. The copy is known by its size and update time (content_info),
        kept beside the part file; a server without content info is resumed unchecked.
        Returns the size the server announced (None without content info).
        """
        try:
            info = self.content_info(name)
            marker = "%d,%d" % (info["size"], info["updated"])
        except errors.RequestError:
            return None
        try:
            with open(source) as f:
                kept = f.read().strip()
        except FileNotFoundError:
            kept = None
        if kept != marker:
            if os.path.exists(part):
                log.warning("content %s changed on the server; discarding the partial download", name)
            _remove(part)
            atomic_write(source, marker + "\n", keep_previous=False)
        return info["size"]

    def _download_once(self, name: str, dest: str, part: str, expected: Optional[str],
                       progress: Optional[ProgressCallback], max_bytes: Optional[int],
                       known_size: Optional[int] = None) -> Optional[Download]:
        """One attempt; None means the part file must be discarded and the download restarted.

        ``known_size`` is the size the part file was checked against: a resumed answer for
        another size comes from a copy replaced since, and would splice the two.
        """
        offset = os.path.getsize(part) if os.path.exists(part) else 0
        stream = self._call(lambda token: self.transport.open_content(token, self.product_id, name, offset))
        digest = hashlib.sha256()
        try:
            total = stream.total
            if max_bytes is not None and total is not None and total > max_bytes:
                _remove(part)
                raise errors.ContentMismatch("content %s is %d bytes, over the %d-byte limit"
                                             % (name, total, max_bytes))
            if stream.status == 416:
                if total is None or total != offset:
                    return None
                received = 0
            elif stream.status == 206 and (stream.start != offset
                                           or (known_size is not None and total != known_size)):
                return None
            else:
                if stream.status == 200:
                    offset = 0  # the server sent the whole file
                _hash_file(part, offset, digest)
                received = self._receive(stream, part, offset, digest, progress, total, max_bytes)
        finally:
            stream.close()
        size = offset + received
        if total is None:
            total = self.content_info(name)["size"]
        if size < total:
            raise errors.NetworkError("content %s: transfer cut short at %d of %d bytes" % (name, size, total))
        if size > total:
            _remove(part)
            raise errors.ContentMismatch("content %s: got %d bytes, server announced %d" % (name, size, total))
        if stream.status == 416:
            _hash_file(part, size, digest)
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            _remove(part)
            raise errors.ContentMismatch("content %s: sha256 %s, expected %s" % (name, actual, expected))
        os.replace(part, dest)
        fsync_dir(os.path.dirname(dest))
        return Download(dest, size, actual, offset)

    @staticmethod
    def _receive(stream, part: str, offset: int, digest, progress: Optional[ProgressCallback],
                 total: Optional[int], max_bytes: Optional[int]) -> int:
        received = 0
        with open(part, "r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            if progress is not None:
                progress(offset, total)
            for chunk in stream.chunks():
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if max_bytes is not None and offset + received > max_bytes:
                    out.close()
                    _remove(part)
                    raise errors.ContentMismatch("content exceeds the %d-byte limit" % max_bytes)
                if progress is not None:
                    progress(offset + received, total)
            out.flush()
            os.fsync(out.fileno())
        return received

    def upload_content(self, name: str, path: str, sha256: Optional[str] = None,
                       content_type: str = "application/octet-stream",
                       progress: Optional[Callable[[int, int], None]] = None, piece_bytes: int = 1024 * 1024,
                       max_rate: Optional[float] = None):
        """Upload ``path`` as ``name``, resuming what the server already holds: murano_local's
        extension (Murano itself has no device upload; see :mod:`device_client.upload`)."""
        from .upload import upload_resumable

        return upload_resumable(self, _check_name(name), path, sha256, content_type, progress, piece_bytes,
                                max_rate)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self.transport.close()
        if self.usage is not None:
            self.usage.close()

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Device(%r, serial=%r, identity=%r, activated=%s)" % (self.host, self.serial, self.identity,
                                                                      self.activated)


def to_text(value: object) -> str:
    """A Python value as Murano stores it: text, with JSON for dicts and lists."""
    if value is None:
        raise ValueError("None cannot be written; write \"\" to clear a value")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("cannot write %r" % value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def default_mqtt_url(host: str) -> str:
    """Murano's MQTT endpoint for an HTTP base URL: same host, 8883 with TLS (1883 for http://)."""
    parts = urlsplit(host)
    hostname = "[%s]" % parts.hostname if ":" in (parts.hostname or "") else parts.hostname
    return "mqtts://%s:8883" % hostname if parts.scheme == "https" else "mqtt://%s:1883" % hostname


def _check_host(host: str) -> str:
    parts = urlsplit(host or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("host must be an http:// or https:// URL, got %r" % host)
    if parts.query or parts.fragment or parts.username:
        raise ValueError("host must be a plain base URL, got %r" % host)
    return host.rstrip("/")


def _check_identity(identity: str) -> str:
    if not isinstance(identity, str) or not identity or _CONTROL.search(identity) or len(identity) > 128:
        raise ValueError("identity must be a short printable name")
    if identity in (TOP_CONSUMER, DROPPED):
        raise ValueError("%r is reserved in the usage report" % identity)
    return identity


def _checked_pairs(values: Mapping[str, object]) -> Pairs:
    """Writes as text pairs, each refused here (``ValueError``) if Murano would refuse it."""
    return [(check_alias(alias), check_value(to_text(v), alias)) for alias, v in values.items()]


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or _CONTROL.search(name):
        raise ValueError("bad content name %r" % (name,))
    return name


def _alias_list(aliases: Sequence[Union[str, Sequence[str]]]) -> List[str]:
    names: List[str] = []
    for item in aliases:
        for alias in ([item] if isinstance(item, str) else item):
            if check_alias(alias) not in names:
                names.append(alias)
    if not names:
        raise ValueError("name at least one alias")
    return names


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
