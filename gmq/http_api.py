"""gmq's local HTTP front end: the Device API's activate, write and record, plus status and reread.

Threaded, HTTP/1.1 keep-alive, a deep listen backlog. Every request is bounded: body size,
a deadline for trickling bodies, an idle/read timeout on the socket, a cap on open
connections. Errors are a status and one short plain-text line; nothing is queued for a
request that gets anything but 204.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Protocol, Tuple
from urllib.parse import unquote

from device_client.form import FormError, decode_form

from .clients import BadIdentity, Client
from .queue import Rejected

log = logging.getLogger(__name__)

ALIAS_PATH = "/onep:v1/stack/alias"
RECORD_PATH = "/onep:v1/stack/record"
ACTIVATE_PATH = "/provision/activate"
MAX_HEADER_LINE = 8192
MAX_HEADERS = 64
MAX_TS = 1e11  # Unix seconds; larger looks like milliseconds or microseconds
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
           414: "URI Too Long", 422: "Unprocessable Entity", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           505: "HTTP Version Not Supported", 507: "Insufficient Storage"}


class App(Protocol):
    """What the front end needs from the running gmq (see server.py)."""

    queue: object
    clients: object
    max_body_bytes: int
    request_timeout: float
    max_connections: int

    def status(self) -> dict: ...

    def reread(self) -> dict: ...


class HTTPError(Exception):
    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gmq"
    server: "GmqHTTPServer"

    def setup(self) -> None:
        self.timeout = self.server.app.request_timeout
        super().setup()

    def parse_request(self) -> bool:
        """Request line and headers, bounded; headers become a dict keyed by lower-case name.

        Leaner than the standard library's email-based parser, which costs more than the
        rest of a gmq request together.
        """
        self.close_connection = True
        self.command = None
        self.request_version = "HTTP/1.0"
        line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = line
        words = line.split()
        if len(words) != 3:
            self.send_error(400, "bad request line")
            return False
        command, path, version = words
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            self.send_error(505, "HTTP/1.0 or HTTP/1.1 only")
            return False
        self.command, self.path, self.request_version = command, path, version
        headers: Dict[str, str] = {}
        while True:
            raw = self.rfile.readline(MAX_HEADER_LINE + 1)
            if raw in (b"\r\n", b"\n"):
                break
            if not raw:
                return False  # the client went away mid-headers
            if len(raw) > MAX_HEADER_LINE or len(headers) >= MAX_HEADERS:
                self.send_error(431, "request headers too large")
                return False
            name, sep, value = raw.decode("iso-8859-1").partition(":")
            name = name.strip().lower()
            if not sep or not name or " " in name:
                self.send_error(400, "bad header line")
                return False
            value = value.strip()
            if name == "content-length" and headers.get(name, value) != value:
                self.send_error(400, "conflicting Content-Length headers")
                return False
            headers[name] = value
        self.headers = headers  # type: ignore[assignment]
        conn = headers.get("connection", "").lower()
        self.close_connection = conn != "keep-alive" if version == "HTTP/1.0" else conn == "close"
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    # -- plumbing ---------------------------------------------------------------------------
    def _reply(self, status: int, body: bytes = b"", ctype: str = "text/plain; charset=utf-8") -> None:
        head = "HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Error"))
        if status != 204 or body:
            head += "Content-Type: %s\r\n" % ctype
        head += "Content-Length: %d\r\n" % len(body)
        if self.close_connection:
            head += "Connection: close\r\n"
        self.wfile.write(head.encode("latin-1") + b"\r\n" + body)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """Plain-text errors (also for the request-line and header errors found by the base class)."""
        self.close_connection = True
        self._reply(code, ((message or REASONS.get(code, "error")) + "\n").encode("utf-8", "replace"))

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug("%s - %s", self.address_string(), fmt % args)

    def _body(self) -> bytes:
        headers = self.headers
        if headers.get("transfer-encoding"):
            raise HTTPError(411, "chunked bodies are not supported; send Content-Length", close=True)
        text = headers.get("content-length")
        if text is None:
            raise HTTPError(411, "Content-Length required", close=True)
        try:
            length = int(text)
        except ValueError:
            raise HTTPError(400, "bad Content-Length", close=True) from None
        if length < 0:
            raise HTTPError(400, "bad Content-Length", close=True)
        limit = self.server.app.max_body_bytes
        if length > limit:
            raise HTTPError(413, "body of %d bytes; the limit is %d" % (length, limit), close=True)
        deadline = time.monotonic() + self.server.app.request_timeout
        chunks: List[bytes] = []
        left = length
        while left > 0:
            chunk = self.rfile.read1(min(left, 65536))
            if not chunk:
                raise HTTPError(400, "body shorter than Content-Length", close=True)
            chunks.append(chunk)
            left -= len(chunk)
            if left and time.monotonic() > deadline:
                raise HTTPError(408, "body not received in time", close=True)
        return b"".join(chunks)

    def _client(self) -> Client:
        clients = self.server.app.clients
        cik = self.headers.get("x-exosite-cik")
        vms = self.headers.get("x-exosite-vms")
        try:
            if cik is not None:
                return clients.by_token(cik.strip())
            if vms is not None:
                parts = vms.split()
                if len(parts) != 3:
                    raise HTTPError(400, "X-Exosite-VMS must be '<vendor> <model> <serial>'")
                return clients.by_serial(parts[2], parts[0], parts[1])
        except BadIdentity as exc:
            raise HTTPError(401 if cik is not None else 400, str(exc)) from None
        raise HTTPError(401, "X-Exosite-CIK or X-Exosite-VMS required")

    def _dispatch(self, method: str) -> None:
        try:
            path, _, query = self.path.partition("?")
            if method == "POST":
                self._post(path, query)
            elif path == "/status":
                self._reply(200, json.dumps(self.server.app.status(), sort_keys=True).encode() + b"\n",
                            "application/json")
            elif path == "/timestamp":
                self._reply(200, str(int(time.time())).encode())
            elif path.startswith(ALIAS_PATH) or path in (RECORD_PATH, ACTIVATE_PATH, "/reread"):
                raise HTTPError(405, "gmq serves writes only: use POST")
            else:
                raise HTTPError(404, "no such path")
        except HTTPError as exc:
            if exc.close:
                self.close_connection = True
            self._reply(exc.status, (exc.message + "\n").encode("utf-8", "replace"))
        except Rejected as exc:
            self._reply(exc.status, (exc.reason + "\n").encode("utf-8", "replace"))
        except Exception:
            log.exception("request %s %s failed", method, self.path[:100])
            self.close_connection = True
            self._reply(500, b"internal error; nothing was stored\n")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- the API ------------------------------------------------------------------------------
    def _post(self, path: str, query: str) -> None:
        if path == ALIAS_PATH:
            if query:
                raise HTTPError(400, "gmq does not serve reads; POST writes without a query")
            self._store(self._client(), _write_values(self._form()))
        elif path.startswith(ALIAS_PATH + "/"):
            alias = _alias(path[len(ALIAS_PATH) + 1:])
            self._store(self._client(), _timed_values(alias, self._form()))
        elif path == RECORD_PATH:
            self._store(self._client(), _record_values(self._form()))
        elif path == ACTIVATE_PATH:
            self._activate(dict(self._form()))
        elif path == "/reread":
            self._body()
            try:
                result = self.server.app.reread()
            except ValueError as exc:
                raise HTTPError(422, "gmq.cfg not applied: %s" % exc) from None
            self._reply(200, json.dumps(result, sort_keys=True).encode() + b"\n", "application/json")
        else:
            raise HTTPError(404, "no such path")

    def _form(self) -> List[Tuple[str, str]]:
        body = self._body()
        try:
            return decode_form(body)
        except FormError as exc:
            raise HTTPError(400, "bad form: %s" % exc) from None

    def _store(self, client: Client, values: List[Tuple[str, Optional[float], str]]) -> None:
        if not values:
            raise HTTPError(400, "no values in the body")
        self.server.app.queue.append(client.id, values)
        self._reply(204)

    def _activate(self, form: dict) -> None:
        serial = form.get("sn", form.get("id"))
        if not serial:
            raise HTTPError(400, "activate needs id=<serial> or vendor=&model=&sn=")
        try:
            client = self.server.app.clients.by_serial(serial, form.get("vendor") or None, form.get("model") or None)
        except BadIdentity as exc:
            raise HTTPError(400, str(exc)) from None
        self._reply(200, client.local_token.encode())


def _alias(text: str) -> str:
    try:
        alias = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise HTTPError(400, "alias is not UTF-8") from None
    return _check_alias(alias)


def _check_alias(alias: str) -> str:
    if not alias or len(alias) > 256 or any(ord(c) < 32 for c in alias) or "/" in alias:
        raise HTTPError(400, "bad alias %r" % alias[:40])
    return alias


def _ts(text: str) -> float:
    try:
        ts = float(text)
    except ValueError:
        raise HTTPError(400, "bad timestamp %r: Unix seconds expected" % text[:40]) from None
    if not math.isfinite(ts) or ts < 0 or ts >= MAX_TS:
        raise HTTPError(400, "bad timestamp %r: Unix seconds expected" % text[:40])
    return ts


def _write_values(pairs: List[Tuple[str, str]]) -> List[Tuple[str, Optional[float], str]]:
    return [(_check_alias(alias), None, value) for alias, value in pairs]


def _timed_values(alias: str, pairs: List[Tuple[str, str]]) -> List[Tuple[str, Optional[float], str]]:
    return [(alias, _ts(ts), value) for ts, value in pairs]


def _record_values(pairs: List[Tuple[str, str]]) -> List[Tuple[str, Optional[float], str]]:
    out: List[Tuple[str, Optional[float], str]] = []
    alias = None
    for key, value in pairs:
        if key == "alias":
            alias = _check_alias(value)
        elif alias is None:
            raise HTTPError(400, "record body must start with alias=<name>")
        else:
            out.append((alias, _ts(key), value))
    return out


class GmqHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with daemon threads, a deep backlog and a cap on open connections."""

    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], app: App) -> None:
        self.app = app
        self._open = 0
        self._open_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request, client_address) -> None:
        with self._open_lock:
            full = self._open >= self.app.max_connections
            if not full:
                self._open += 1
        if full:
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                                b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open -= 1

    def handle_error(self, request, client_address) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    @property
    def open_connections(self) -> int:
        return self._open
