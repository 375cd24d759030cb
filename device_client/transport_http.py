"""The Device API over HTTP(S): one keep-alive ``requests`` session, metered on the wire.

Bytes are counted where http.client meets the socket: every ``send`` of the request
line, headers and body, and every byte the response parser reads (status line,
headers, body, chunk framing), so the usage log holds what actually crossed the wire
at the HTTP layer. The interface is named from the local address of the socket the
request really used. The counting state of the request in flight lives in a
thread-local, so a pooled connection needs no knowledge of who is using it.
"""
from __future__ import annotations

import http.client
import logging
import re
import threading
import time
from urllib.parse import quote_plus
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

from device_api import (
    ACTIVATE_PATH, ALIAS_PATH, CONTENT_PATH, FORM_CONTENT_TYPE, RECORD_PATH, TIMESTAMP_PATH, FormError, Pairs,
    decode_form, encode_form,
)

from . import errors
from .usage import UsageLog, interfaces

log = logging.getLogger(__name__)

LONG_POLL_MARGIN_S = 5.0
CHUNK = 64 * 1024
MAX_BODY = 16 * 1024 * 1024  # a read answer beyond this is refused (resources hold at most 1 MiB each)

_current = threading.local()

# The metering below plugs its connection classes in through urllib3's ConnectionCls and
# PoolManager.pool_classes_by_scheme: attributes urllib3 has kept through 2.x but never
# documented (requests offers no public hook at the socket). So the tested major version is
# pinned (setup.py) and checked here, with one clear error instead of a silently unmetered
# or broken transport.
URLLIB3_MAJOR = 2


def check_urllib3(version: str = urllib3.__version__) -> None:
    """Raise ImportError unless urllib3 is the major version whose internals this module uses."""
    major = re.match(r"(\d+)", version)
    if major is None or int(major.group(1)) != URLLIB3_MAJOR or not hasattr(HTTPConnectionPool, "ConnectionCls") \
            or not isinstance(getattr(urllib3.poolmanager, "pool_classes_by_scheme", None), dict):
        raise ImportError("device_client needs urllib3 %d.x (it meters requests through urllib3's ConnectionCls and "
                          "pool_classes_by_scheme), found %s: pip install 'urllib3>=%d,<%d'"
                          % (URLLIB3_MAJOR, version, URLLIB3_MAJOR, URLLIB3_MAJOR + 1))


check_urllib3()


class _Wire:
    """Bytes sent and received, and the local address, of one request."""

    __slots__ = ("tx", "rx", "local")

    def __init__(self) -> None:
        self.tx = 0
        self.rx = 0
        self.local: Optional[str] = None


def _wire() -> Optional[_Wire]:
    return getattr(_current, "wire", None)


class _CountingReader:
    """Wraps the socket file http.client parses a response from; counts what it consumes."""

    def __init__(self, fp, wire: _Wire) -> None:
        self._fp = fp
        self._wire = wire

    def _count(self, data: bytes) -> bytes:
        self._wire.rx += len(data)
        return data

    def read(self, *args):
        return self._count(self._fp.read(*args))

    def read1(self, *args):
        return self._count(self._fp.read1(*args))

    def readline(self, *args):
        return self._count(self._fp.readline(*args))

    def readinto(self, buffer) -> int:
        n = self._fp.readinto(buffer)
        if n:
            self._wire.rx += n
        return n

    def __getattr__(self, name):  # peek, close, closed, fileno, flush...
        return getattr(self._fp, name)


class _CountingResponse(http.client.HTTPResponse):
    def __init__(self, sock, *args, **kwargs) -> None:
        super().__init__(sock, *args, **kwargs)
        wire = _wire()
        if wire is not None:
            self.fp = _CountingReader(self.fp, wire)


class _CountingSendMixin:
    response_class = _CountingResponse

    def send(self, data) -> None:
        super().send(data)  # connects on first use, so the socket exists only afterwards
        wire = _wire()
        if wire is None:
            return
        if isinstance(data, (bytes, bytearray, memoryview)):
            wire.tx += len(data)
        if wire.local is None and self.sock is not None:
            try:
                wire.local = self.sock.getsockname()[0]
            except OSError:
                pass


class _MeteredHTTPConnection(_CountingSendMixin, HTTPConnection):
    pass


class _MeteredHTTPSConnection(_CountingSendMixin, HTTPSConnection):
    pass


class _MeteredHTTPPool(HTTPConnectionPool):
    ConnectionCls = _MeteredHTTPConnection


class _MeteredHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _MeteredHTTPSConnection


_METERED_POOLS = {"http": _MeteredHTTPPool, "https": _MeteredHTTPSPool}


class _MeteredAdapter(HTTPAdapter):
    """Every pool it opens, direct or through an HTTP proxy, uses the metered connections."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_METERED_POOLS)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.ProxyManager):
            manager.pool_classes_by_scheme = dict(_METERED_POOLS)
        return manager


class _StaleConnectionRetry(Retry):
    """Retries a GET once when a kept-alive connection turns out dead, but never a timeout
    (that would double a hung long poll's wait) and never a POST (it may have been applied)."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if isinstance(error, urllib3.exceptions.ReadTimeoutError):
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _retry_policy() -> Retry:
    return _StaleConnectionRetry(total=1, connect=0, read=1, status=0, other=0, redirect=0,
                                 allowed_methods={"GET"}, raise_on_status=False)


class ContentStream:
    """An open content download: ``status``, ``start`` offset, ``total`` size (None if unknown)."""

    def __init__(self, exchange: "_Exchange", start: int, total: Optional[int]) -> None:
        self._exchange = exchange
        self.status = exchange.response.status_code
        self.start = start
        self.total = total

    def chunks(self) -> Iterator[bytes]:
        raw = self._exchange.response.raw
        try:
            while True:
                chunk = raw.read(CHUNK, decode_content=False)
                if not chunk:
                    return
                yield chunk
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise errors.NetworkError("content download interrupted: %s" % _reason(exc)) from exc

    def close(self) -> None:
        self._exchange.close()


class _Exchange:
    """One request in flight: its response and the bookkeeping that logs it exactly once."""

    def __init__(self, transport: "HttpTransport", kind: str, method: str, aliases: Sequence[str]) -> None:
        self.transport = transport
        self.kind = kind
        self.method = method
        self.aliases = list(aliases)
        self.wire = _Wire()
        self.started = time.monotonic()
        self.response: Optional[requests.Response] = None
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.response is not None:
            self.response.close()
        self.transport._log(self)


class HttpTransport:
    """Device API calls over one ``requests`` session; each call returns decoded values or raises.

    ``token`` None means no ``X-Exosite-CIK`` header (TLS client-certificate auth).
    """

    def __init__(self, base_url: str, *, verify: Union[bool, str] = True,
                 cert: Optional[Tuple[str, str]] = None, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, user_agent: str = "", usage: Optional[UsageLog] = None,
                 identity: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.verify = verify
        self.cert = cert
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.usage = usage
        self.identity = identity
        self._session = requests.Session()
        adapter = _MeteredAdapter(pool_connections=1, pool_maxsize=4, max_retries=_retry_policy())
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers.update({"User-Agent": user_agent, "Accept": FORM_CONTENT_TYPE})
        # requests reads the environment (proxies and no_proxy, the CA bundle, ~/.netrc) again for every
        # request, 0.5 ms of CPU each; every request here goes to base_url, so proxies and CA bundle are
        # read once, now (and ~/.netrc not at all: the token header is the auth)
        settings = self._session.merge_environment_settings(self.base_url, {}, None, verify, None)
        self._session.trust_env = False
        self._proxies, self._verify = settings["proxies"], settings["verify"]

    # -- plumbing -------------------------------------------------------------------------

    def _open(self, kind: str, method: str, path: str, *, aliases: Sequence[str] = (),
              token: Optional[str] = None, body: Union[None, str, bytes] = None, headers: Optional[dict] = None,
              read_timeout: Optional[float] = None, label: str = "", data: object = None) -> _Exchange:
        """Send a request and read the status and headers; the body is left on the wire.

        ``body`` is a form (text, or its encoded bytes); ``data`` raw bytes or a readable object
        with ``__len__`` (uploads)."""
        exchange = _Exchange(self, kind, method, aliases)
        send_headers = dict(headers or {})
        if token:
            send_headers["X-Exosite-CIK"] = token
        if body is not None:
            send_headers["Content-Type"] = FORM_CONTENT_TYPE
            data = body if isinstance(body, bytes) else body.encode("utf-8")
        _current.wire = exchange.wire
        sent = False
        try:
            exchange.response = self._session.request(
                method, self.base_url + path, data=data, headers=send_headers, stream=True,
                allow_redirects=False, proxies=self._proxies, verify=self._verify, cert=self.cert,
                timeout=(self.connect_timeout, read_timeout or self.read_timeout))
            sent = True
        except Exception as exc:
            mapped = _network_error(exc, label or kind)
            if mapped is None:
                raise
            raise mapped from exc
        finally:
            _current.wire = None
            if not sent:
                exchange.close()
        return exchange

    def _call(self, kind: str, method: str, path: str, expect: Tuple[int, ...], **kwargs) -> Tuple[int, str, dict]:
        """A whole request: (status, body text, headers); an unexpected status raises."""
        exchange = self._open(kind, method, path, **kwargs)
        label = kwargs.get("label") or kind
        try:
            content = _read_body(exchange.response, label)
        finally:
            exchange.close()
        response = exchange.response
        text = content.decode("utf-8", errors="replace")
        if response.status_code not in expect:
            raise errors.error_for_status(response.status_code, text, label)
        return response.status_code, text, response.headers

    def _log(self, exchange: _Exchange) -> None:
        if self.usage is None or exchange.wire.tx == 0:
            return  # nothing left this host: the connection itself failed
        try:
            status = exchange.response.status_code if exchange.response is not None else None
            self.usage.record(interfaces.resolve(exchange.wire.local), self.identity, exchange.kind,
                              exchange.method, exchange.aliases, exchange.wire.tx, exchange.wire.rx,
                              time.monotonic() - exchange.started, status)
        except Exception as exc:  # usage logging never breaks a request
            log.debug("usage logging failed: %s", exc)

    # -- Device API -----------------------------------------------------------------------

    def activate(self, pairs: Pairs) -> str:
        _, text, _ = self._call("actvt", "POST", ACTIVATE_PATH, (200,), body=encode_form(pairs),
                                label="activate")
        return text.strip()

    def write(self, token: Optional[str], pairs: Pairs) -> None:
        self._call("write", "POST", ALIAS_PATH, (200, 204), aliases=[a for a, _ in pairs],
                   token=token, body=encode_form(pairs))

    def read_write(self, token: Optional[str], pairs: Pairs, aliases: Sequence[str]) -> Pairs:
        names = list(dict.fromkeys([a for a, _ in pairs] + list(aliases)))
        status, text, _ = self._call("readwrite", "POST", ALIAS_PATH + "?" + _alias_query(aliases),
                                     (200, 204), aliases=names, token=token, body=encode_form(pairs))
        return _decode(text, "readwrite") if status == 200 else []

    def read(self, token: Optional[str], aliases: Sequence[str]) -> Pairs:
        status, text, _ = self._call("read", "GET", ALIAS_PATH + "?" + _alias_query(aliases),
                                     (200, 204), aliases=aliases, token=token)
        return _decode(text, "read") if status == 200 else []

    def long_poll(self, token: Optional[str], aliases: Sequence[str], timeout_ms: int,
                  since: Optional[str]) -> Tuple[Pairs, Optional[str]]:
        headers = {"Request-Timeout": str(timeout_ms)}
        if since is not None:
            headers["If-Modified-Since"] = since
        status, text, response_headers = self._call(
            "long_poll", "GET", ALIAS_PATH + "?" + _alias_query(aliases), (200, 204, 304),
            aliases=aliases, token=token, headers=headers,
            read_timeout=timeout_ms / 1000.0 + LONG_POLL_MARGIN_S)
        if status != 200:
            return [], since
        return _decode(text, "long_poll"), response_headers.get("Last-Modified", since)

    @staticmethod
    def encode_record(entries: List[Tuple[str, List[Tuple[str, str]]]]) -> bytes:
        pairs: Pairs = []
        for alias, points in entries:
            pairs.append(("alias", alias))
            pairs.extend(points)
        return encode_form(pairs).encode("ascii")  # percent-encoded: ASCII only

    def send_record(self, token: Optional[str], body: bytes, aliases: Sequence[str]) -> None:
        self._call("record", "POST", RECORD_PATH, (200, 204), aliases=list(aliases), token=token, body=body)

    def timestamp(self) -> str:
        return self._call("get", "GET", TIMESTAMP_PATH, (200,), label="timestamp")[1]

    def list_content(self, token: Optional[str], product_id: Optional[str]) -> str:
        return self._call("list_content", "GET", CONTENT_PATH + _product_query(product_id, "?"),
                          (200, 204), token=token)[1]

    def content_info(self, token: Optional[str], product_id: Optional[str], name: str) -> str:
        query = "?" + encode_form([("id", name), ("info", "true")]) + _product_query(product_id, "&")
        return self._call("content_info", "GET", CONTENT_PATH + query, (200,), aliases=[name],
                          token=token)[1]

    def open_content(self, token: Optional[str], product_id: Optional[str], name: str,
                     offset: int) -> ContentStream:
        """Start downloading ``name`` from ``offset`` (a Range request when > 0).

        The caller reads ``chunks()`` and must ``close()``; a 416 (nothing past ``offset``)
        comes back as a stream with ``status`` 416 and the size the server announced.
        """
        headers = {"Accept": "*/*", "Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = "bytes=%d-" % offset
        query = "?" + encode_form([("id", name)]) + _product_query(product_id, "&")
        exchange = self._open("get_content", "GET", CONTENT_PATH + query, aliases=[name],
                              token=token, headers=headers)
        response = exchange.response
        try:
            start, total = _content_extent(response)
            if response.status_code == 416:
                return ContentStream(exchange, offset, total)
            if response.status_code not in (200, 206):
                text = _read_body(response, "get_content").decode("utf-8", errors="replace")
                raise errors.error_for_status(response.status_code, text, "get_content")
        except BaseException:
            exchange.close()
            raise
        return ContentStream(exchange, start, total)

    def send_file(self, token: Optional[str], method: str, path: str, headers: dict, data: object,
                  expect: Tuple[int, ...], label: str) -> Tuple[int, str, dict]:
        """One upload request (``data`` is bytes or a readable object with ``__len__``): status, body, headers."""
        return self._call("upload_content", method, path, expect, aliases=[label], token=token,
                          headers=dict(headers, **{"Accept": "*/*"}), data=data, label="upload %s" % label)

    def close(self) -> None:
        self._session.close()


def _alias_query(aliases: Sequence[str]) -> str:
    return "&".join(quote_plus(a) for a in aliases)


def _product_query(product_id: Optional[str], lead: str) -> str:
    if not product_id:
        return ""
    return lead + encode_form([("vendor", product_id), ("model", product_id)])


def _decode(text: str, what: str) -> Pairs:
    try:
        return decode_form(text)
    except FormError as exc:
        raise errors.DeviceAPIError("%s: undecodable response body: %s" % (what, exc), 200, text) from exc


def _read_body(response: requests.Response, what: str, limit: int = MAX_BODY) -> bytes:
    """The whole body of a (non-download) answer, refusing more than ``limit`` bytes."""
    body = bytearray()
    try:
        for chunk in response.iter_content(CHUNK):
            body += chunk
            if len(body) > limit:
                raise errors.DeviceAPIError("%s: response body over %d bytes" % (what, limit),
                                            response.status_code, "")
    except errors.DeviceAPIError:
        raise
    except Exception as exc:
        mapped = _network_error(exc, what)
        if mapped is None:
            raise
        raise mapped from exc
    return bytes(body)


def _content_extent(response: requests.Response) -> Tuple[int, Optional[int]]:
    """(first byte offset, total size) from Content-Range / Content-Length."""
    content_range = response.headers.get("Content-Range", "")
    if content_range.startswith("bytes "):
        span, _, total = content_range[6:].partition("/")
        try:
            first = int(span.split("-", 1)[0]) if span.strip() not in ("*", "") else 0
        except ValueError:
            raise errors.DeviceAPIError("get_content: bad Content-Range %r" % content_range[:80],
                                        response.status_code, "") from None
        return first, (int(total) if total.strip().isdigit() else None)
    length = response.headers.get("Content-Length", "")
    return 0, (int(length) if response.status_code == 200 and length.isdigit() else None)


def _network_error(exc: BaseException, what: str) -> Optional[errors.DeviceAPIError]:
    """The error for a transport failure; None for anything else (a bug, KeyboardInterrupt...)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return errors.TLSError("%s: TLS failure: %s" % (what, _reason(exc)))
    if isinstance(exc, requests.exceptions.Timeout):
        return errors.NetworkError("%s: timed out (%s)" % (what, _reason(exc)))
    if isinstance(exc, (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                        http.client.HTTPException, OSError)):
        return errors.NetworkError("%s: network error: %s" % (what, _reason(exc)))
    return None


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error (``Connection refused``), which is the readable one."""
    chain = [exc]
    while len(chain) < 10:
        current = chain[-1]
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in current.args if isinstance(a, BaseException)), None)
        if not isinstance(inner, BaseException):
            inner = current.__cause__ or current.__context__
        if not isinstance(inner, BaseException) or inner in chain:
            break
        chain.append(inner)
    for candidate in reversed(chain):
        if isinstance(candidate, OSError) and candidate.strerror:
            return candidate.strerror
    text = str(chain[-1])
    return re.sub(r"^<?[A-Za-z_.]+(Connection|Pool)[^:]*: ", "", text)[:200]
