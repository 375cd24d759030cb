"""The HTTP/1.1 server: one daemon thread per connection, keep-alive, bounded requests, error mapping."""
from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional, Sequence

from atomic_config.version import VERSION as __version__
from device_api import ContractError

from .admin import AdminApi
from .content import ContentError
from .device_uploads import DeviceUploadApi
from .hangup import HangupWatcher
from .http_api import DeviceApi
from .service import Murano, Unauthorized
from .store import Conflict, NotFound
from .wire import HttpError, Request, Response, text

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 330.0  # longer than the longest long poll
THREAD_STACK = 512 * 1024


DEFAULT_MAX_CONNECTIONS = 1000
_FULL_BODY = b"too many connections"
_FULL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_FULL_BODY), _FULL_BODY))


class MuranoHTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` at a time (the rest get 503)."""
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address, murano: Murano, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 front_ends: Sequence[Callable[[Request], Optional[Response]]] = ()) -> None:
        self.murano = murano
        self.front_ends: List[Callable[[Request], Optional[Response]]] = [
            DeviceApi(murano).handle, DeviceUploadApi(murano).handle, AdminApi(murano).handle, *front_ends]
        self.max_connections = max_connections
        self._connections = 0
        self._connections_lock = threading.Lock()
        self.hangups = HangupWatcher()
        super().__init__(address, Handler)

    def server_close(self) -> None:
        self.hangups.close()
        super().server_close()

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            full = self._connections >= self.max_connections
            if not full:
                self._connections += 1
        if full:
            try:
                request.sendall(_FULL)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._connections_lock:
            self._connections -= 1

    def handle_error(self, request, client_address) -> None:
        """A client that resets its connection is routine; anything else is logged with its traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, socket.timeout)):
            return
        log.error("error serving %s", client_address[0], exc_info=sys.exc_info())  # called from an except


def _error_for(exc: BaseException) -> Optional[HttpError]:
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, ContractError):  # what the Device API contract refuses, with Murano's status
        return HttpError(exc.status, str(exc))
    if isinstance(exc, ContentError):
        return HttpError(400, str(exc))
    if isinstance(exc, Unauthorized):
        return HttpError(401, str(exc))
    if isinstance(exc, NotFound):
        return HttpError(404, str(exc))
    if isinstance(exc, Conflict):
        return HttpError(409, "")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return HttpError(507, "no space left on the server")
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "murano-local/" + __version__
    timeout = IDLE_TIMEOUT_S
    server: MuranoHTTPServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        return self.server_version

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """Malformed request lines and headers (caught by http.server) get a plain-text reason too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unparsable request line: answer in HTTP/1.1 anyway
            self.request_version = self.protocol_version
        self._send(text(code, message or self.responses.get(code, ("error",))[0]))

    def parse_request(self) -> bool:
        """http.server answers nothing to an empty line and serves HTTP/0.9: both get a 400 here."""
        words = self.raw_requestline.split()
        if len(words) < 3:  # checked before http.server, which reads headers after an HTTP/0.9 line
            self.request_version, self.command, self.requestline = self.protocol_version, None, ""
            self.send_error(400, ("empty line before the request line", "bad request line",
                                  "HTTP/0.9 requests are not supported")[len(words)])
            return False
        return super().parse_request()

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def _serve(self) -> None:
        req = None
        try:
            req = self._request()
            response = None
            for front_end in self.server.front_ends:
                response = front_end(req)
                if response is not None:
                    break
            if response is None:
                response = text(404, "no such endpoint")
        except Exception as exc:
            error = _error_for(exc)
            if error is None:
                log.exception("internal error on %s %s", self.command, self.path)
                error = HttpError(500, "internal server error")
            response = text(error.status, error.message)
            response.headers.extend(error.headers)
        if req is None or (req.length and not req.consumed):
            self.close_connection = True  # the unread body would be taken for the next request
        self._send(response)

    def _request(self) -> Request:
        if self.headers.defects:
            self.close_connection = True
            raise HttpError(400, "malformed header section")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HttpError(411, "chunked bodies are not supported; send Content-Length")
        raw_length = self.headers.get("Content-Length")
        length = 0
        if raw_length is not None:
            digits = raw_length.strip()
            if not (digits.isascii() and digits.isdigit()):
                raise HttpError(400, "bad Content-Length")
            digits = digits.lstrip("0")
            if len(digits) > 18:  # int() refuses over 4300 digits; anything this long is over every limit
                self.close_connection = True
                raise HttpError(413, "Content-Length over every limit")
            length = int(digits or "0")
        target = self.path
        if "://" in target.split("?", 1)[0]:
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path, _, query = target.partition("?")
        return Request(self.command, path, query, self.headers, self.client_address[0], length, self.rfile,
                       lambda on_hangup: self.server.hangups.watch(self.connection, on_hangup))

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            if response.content_type:
                self.send_header("Content-Type", response.content_type)
            for name, value in response.headers:
                self.send_header(name, value)
            length = response.length if response.file is not None else len(response.body)
            if response.status != 304:
                self.send_header("Content-Length", str(length))
            if self.close_connection:
                self.send_header("Connection", "close")
            with_body = self.command != "HEAD" and response.status not in (204, 304)
            if with_body and response.file is None:
                self._headers_buffer.append(b"\r\n" + response.body)  # headers and body in one send
                self.flush_headers()
                return
            self.end_headers()
            if with_body:
                self.connection.sendfile(response.file, response.offset, response.length)
        except (ConnectionError, socket.timeout) as exc:
            log.debug("client went away: %s", exc)
            self.close_connection = True
        finally:
            if response.file is not None:
                response.file.close()


class _Stop(BaseException):
    """Raised by the signal handler to leave serve_forever at once; a BaseException so that
    socketserver's per-request ``except Exception`` cannot swallow it."""


def serve(murano: Murano, host: str = "127.0.0.1", port: int = 8080,
          ready: Optional[Callable[[MuranoHTTPServer], None]] = None,
          max_connections: int = DEFAULT_MAX_CONNECTIONS, before_close: Optional[Callable[[], None]] = None,
          front_ends: Sequence[Callable[[Request], Optional[Response]]] = ()) -> None:
    """Serve until SIGTERM or SIGINT (from the main thread), or until ``server.shutdown()``.

    ``front_ends`` answer what the Device and admin APIs do not (the fleet API and page);
    ``before_close`` runs before the store closes (to stop other front ends, e.g. MQTT)."""
    threading.stack_size(THREAD_STACK)
    server = MuranoHTTPServer((host, port), murano, max_connections, front_ends)

    def stop(_signum, _frame) -> None:
        raise _Stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    log.info("murano-local serving http://%s:%d (default product %s)", host, server.server_address[1],
             murano.default_pid)
    if ready:
        ready(server)
    try:
        server.serve_forever()
    except _Stop:
        log.info("murano-local stopping")
    finally:
        murano.hub.close()
        server.server_close()
        if before_close is not None:
            before_close()
        murano.close()
