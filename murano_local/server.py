"""The HTTP/1.1 front end: one event-loop thread holds every connection, long polls included, and
a small pool of worker threads runs the requests against the store.

Why not a thread per connection: each cost ~35 KiB and a scheduler entry, so 5,000 long polls
took 198 MiB and 5,003 threads, and 1,000 slow clients held every slot. Here a waiting long
poll is a socket in the selector, an entry in the timer heap and one in a per-device table; a
cloud set on that device queues a re-check in a worker. Only the loop touches sockets; workers
only run front ends (``DeviceApi``, ``AdminApi``), whose answers come back through an inbox.

Bounded everywhere: a request (head and body) must arrive within ``request_timeout`` of its
first byte (of the accept, for a connection's first request) or gets 408, and a client that does
not read its answer is dropped after as long; a long poll's wait is not part of either. Heads
are parsed by :mod:`.http_parser` (strict RFC 9112), bodies are held up to 8 MiB each and
``BODY_BUDGET`` in all (beyond it, reading pauses), connections up to ``max_connections``
(503 beyond), pipelined bytes up to ``MAX_PIPELINED`` while a request is in hand. A larger body
(a content or device upload; anything else refuses it with 413 unread) is streamed: its handler
runs in a thread of its own from the head on, reading through a :class:`BodyPipe`.
"""
from __future__ import annotations

import email.utils
import errno
import heapq
import http
import io
import logging
import os
import queue
import resource
import selectors
import signal
import socket
import ssl
import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple, Union

from atomic_config.version import VERSION as __version__
from device_api import MAX_BODY_BYTES, ContractError

from .admin import AdminApi
from .content import ContentError
from .device_uploads import DeviceUploadApi
from .events import Change
from .http_api import DeviceApi
from .http_parser import END_OF_MESSAGE, NEED_DATA, Data, ParseError, RequestHead, RequestParser
from .service import Murano, Unauthorized
from .store import Conflict, NotFound
from .wire import HttpError, LongPoll, Request, Response, text

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 330.0      # a keep-alive connection between requests (it costs a socket, nothing more)
WORKERS = 8                 # enough for group commit to gather several writes per fsync
MAX_PIPELINED = 65536       # bytes read ahead while a request is in hand; beyond, reading pauses
BODY_BUDGET = 64 * 1024 * 1024  # request bodies held in memory at once, over all connections
RECV_BYTES = 65536
SENDFILE_BYTES = 1024 * 1024
ACCEPT_BATCH = 512
LISTEN_BACKLOG = 4096
FD_RESERVE = 256            # descriptors kept for the database, content files, MQTT and the loop itself
MAX_DEFAULT_CONNECTIONS = 65536
MAX_STREAMS = 16            # streamed (over 8 MiB) requests at once, a thread each; 503 beyond
MAX_EXTRA_THREADS = 64      # requests to the extra front ends (fleet console) at once, a thread each
PIPE_BYTES = 1024 * 1024    # a streamed body read ahead of its handler; beyond, reading pauses
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"))
_FULL_BODY = b"too many connections"
_FULL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_FULL_BODY), _FULL_BODY))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_READING, _WORKING, _HOLDING, _LINGERING = "reading", "working", "holding", "lingering"  # what a connection waits for
LINGER_S = 2.0              # after answering and closing our side, unread request bytes are drained this long
_LISTENER, _WAKE = object(), object()


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard one; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
    return soft


def default_max_connections(open_file_limit: int) -> int:
    """What ``--max-connections`` defaults to: the open-file limit less a reserve, at most 65,536."""
    return max(64, min(MAX_DEFAULT_CONNECTIONS, open_file_limit - FD_RESERVE))


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


def _error_response(exc: BaseException, what: str) -> Response:
    error = _error_for(exc)
    if error is None:
        log.error("internal error on %s", what, exc_info=exc)
        error = HttpError(500, "internal server error")
    response = text(error.status, error.message)
    response.headers.extend(error.headers)
    return response


class BodyPipe:
    """A streamed request body: the loop feeds it as it arrives, the handler's thread reads it.

    ``read`` blocks like a file's (until ``n`` bytes or the end); after ``abort`` (the client left
    or stalled) it returns what is left and then ``b""``, so the handler sees a short body.
    """

    def __init__(self, length: int, on_drained: Callable[[], None], stall_timeout: float) -> None:
        self._cond = threading.Condition()
        self._chunks: Deque[bytes] = deque()
        self._buffered = 0
        self._left = length          # not yet read by the handler
        self._aborted = False
        self._full = False
        self._on_drained = on_drained
        self._stall_timeout = stall_timeout

    def feed(self, data: bytes) -> bool:
        """Loop side: add ``data``; True when the pipe is full (stop reading until ``on_drained``)."""
        with self._cond:
            self._chunks.append(data)
            self._buffered += len(data)
            self._full = self._buffered >= PIPE_BYTES
            self._cond.notify()
            return self._full

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify()

    def read(self, n: int = -1) -> bytes:
        want = self._left if n is None or n < 0 else min(n, self._left)
        out = bytearray()
        drained = False
        with self._cond:
            while len(out) < want:
                if not self._chunks and not self._aborted:
                    if not self._cond.wait(self._stall_timeout) and not self._chunks:
                        break  # the loop ends a stalled body itself; this is only a safety net
                    continue
                if not self._chunks:
                    break
                chunk = self._chunks.popleft()
                take = want - len(out)
                if len(chunk) > take:
                    self._chunks.appendleft(chunk[take:])
                    chunk = chunk[:take]
                out += chunk
                self._buffered -= len(chunk)
            self._left -= len(out)
            if self._full and self._buffered < PIPE_BYTES // 2:
                self._full, drained = False, True
        if drained:
            self._on_drained()
        return bytes(out)


class _Conn:
    __slots__ = ("sock", "peer", "parser", "state", "out", "file", "file_offset", "file_left", "events",
                 "deadline", "armed", "receiving", "request", "parts", "body_bytes", "responding", "close_after",
                 "keep_alive_10", "poll", "eof", "paused", "handshaking", "closed", "pipe", "pipe_full", "refused")

    def __init__(self, sock: socket.socket, peer: str, handshaking: bool) -> None:
        self.sock = sock
        self.peer = peer
        self.parser = RequestParser()
        self.state = _READING
        self.out = bytearray()
        self.file = None              # a content download being sent after ``out``
        self.file_offset = 0
        self.file_left = 0
        self.events = 0               # what the selector watches for this socket
        self.deadline: Optional[float] = None
        self.armed: Optional[float] = None  # the earliest timer entry of this connection in the heap
        self.receiving = True         # a request is arriving (the first one counts from the accept)
        self.request: Optional[Request] = None
        self.parts: List[bytes] = []
        self.body_bytes = 0           # of this request's body, held in ``parts``
        self.responding = False       # ``out`` holds a final answer (not only a 100 Continue)
        self.close_after = False
        self.keep_alive_10 = False    # an HTTP/1.0 keep-alive request: say so in the answer
        self.poll: Optional[LongPoll] = None
        self.eof = False              # the client half-closed: answer what it sent, then close
        self.paused = False           # not read until the body budget frees
        self.handshaking = handshaking
        self.closed = False
        self.pipe: Optional[BodyPipe] = None  # a streamed body still arriving
        self.pipe_full = False
        self.refused = False          # answered with an error after which nothing more is read


class MuranoHTTPServer:
    """The loop: ``serve_forever()`` in one thread, ``shutdown()`` from any thread or a signal handler.

    ``tls_address`` with ``ssl_context`` adds an HTTPS listener served by the same loop.
    """

    def __init__(self, address: Tuple[str, int], murano: Murano, max_connections: Optional[int] = None,
                 request_timeout: float = REQUEST_TIMEOUT_S, tls_address: Optional[Tuple[str, int]] = None,
                 ssl_context: Optional[ssl.SSLContext] = None, workers: int = WORKERS,
                 front_ends: Sequence[Callable[[Request], Union[Response, LongPoll, None]]] = ()) -> None:
        self.murano = murano
        self.max_connections = max_connections or default_max_connections(
            resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.request_timeout = request_timeout
        self._held = 0  # long polls in hand (held or being checked again)
        admin = AdminApi(murano, long_polls_waiting=lambda: self._held + murano.hub.waiting)
        self.front_ends: List[Callable[[Request], Union[Response, LongPoll, None]]] = [
            DeviceApi(murano).handle, DeviceUploadApi(murano).handle, admin.handle]
        self.extra_front_ends = list(front_ends)
        self._streams = 0
        self._extra_threads = 0
        self._extra_lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._listeners: List[Tuple[socket.socket, Optional[ssl.SSLContext]]] = []
        self.server_address = self._listen(address, None)
        self.tls_server_address = self._listen(tls_address, ssl_context) if tls_address else None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._conns: Set[_Conn] = set()
        self._timers: List[Tuple[float, int, _Conn]] = []
        self._timer_seq = 0
        self._polls: Dict[Tuple[str, str], Set[_Conn]] = {}  # held long polls by device
        self._polls_lock = threading.Lock()
        self._inbox: Deque[tuple] = deque()
        self._inbox_lock = threading.Lock()
        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        self._body_held = 0
        self._paused: List[_Conn] = []
        self._accept_paused = False
        self._running = False
        self._date = (0, "")
        self._workers = [threading.Thread(target=self._work, name="http-worker-%d" % i, daemon=True)
                         for i in range(workers)]
        for worker in self._workers:
            worker.start()
        murano.hub.subscribe(self._on_change)

    def _listen(self, address: Tuple[str, int], context: Optional[ssl.SSLContext]) -> Tuple[str, int]:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            for other, _ctx in self._listeners:
                other.close()
            raise OSError(exc.errno, exc.strerror, "%s:%d" % (host, port)) from exc  # says which port
        sock.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ, _LISTENER)
        self._listeners.append((sock, context))
        return sock.getsockname()[:2]

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # -- the loop (its own thread) ----------------------------------------------------------
    def serve_forever(self) -> None:
        self._running = True
        select = self._sel.select
        while self._running:
            for key, mask in select(self._next_timeout()):
                data = key.data
                if data is _LISTENER:
                    self._accept(key.fileobj)
                elif data is _WAKE:
                    self._drain_wake()
                else:
                    if mask & selectors.EVENT_WRITE:
                        self._on_writable(data)
                    if mask & selectors.EVENT_READ and not data.closed:
                        self._read(data)
            if self._inbox:
                self._run_inbox()
            if self._timers and self._timers[0][0] <= time.monotonic():
                self._run_timers()

    def shutdown(self) -> None:
        """Stop the loop (safe from a signal handler and from other threads)."""
        self._running = False
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def server_close(self) -> None:
        self.murano.hub.unsubscribe(self._on_change)
        for conn in list(self._conns):
            self._close(conn)
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join(5)
        for sock, _ctx in self._listeners:
            sock.close()
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _next_timeout(self) -> Optional[float]:
        if self._inbox:
            return 0
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # -- connections ------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        context = next(ctx for sock, ctx in self._listeners if sock is listener)
        now = time.monotonic()
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up while in the backlog
                continue
            except OSError as exc:  # EMFILE and friends: leave the rest in the backlog for now
                log.warning("accept failed: %s; accepting again once a connection closes", exc)
                for other, _ctx in self._listeners:
                    self._sel.unregister(other)  # else the ready listener spins the loop
                self._accept_paused = True
                return
            if len(self._conns) >= self.max_connections:
                try:
                    sock.send(_FULL)
                except OSError:
                    pass
                sock.close()
                continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if context is not None:
                    sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError):
                sock.close()
                continue
            conn = _Conn(sock, addr[0], context is not None)
            self._conns.add(conn)
            self._watch(conn, selectors.EVENT_READ)
            self._set_deadline(conn, now + self.request_timeout)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        if conn.events:
            self._sel.unregister(conn.sock)
            conn.events = 0
        try:
            conn.sock.close()
        except OSError:
            pass
        self._drop_request(conn)
        if conn.file is not None:
            conn.file.close()
            conn.file = None
        if self._accept_paused:
            self._accept_paused = False
            for sock, _ctx in self._listeners:
                self._sel.register(sock, selectors.EVENT_READ, _LISTENER)

    def _drop_request(self, conn: _Conn) -> None:
        """Forget the request in hand: its body, its upload, its place among the held long polls."""
        self._release_body(conn)
        conn.request = None
        self._end_pipe(conn)
        if conn.poll is not None:
            self._unhold(conn)

    def _watch(self, conn: _Conn, events: int) -> None:
        if events == conn.events or conn.closed:
            return
        if not events:
            self._sel.unregister(conn.sock)
        elif not conn.events:
            self._sel.register(conn.sock, events, conn)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _want(self, conn: _Conn) -> None:
        """Watch for what the connection needs now: reading unless paused, writing while output waits."""
        if conn.handshaking:
            return  # the handshake says what it waits for
        read = not (conn.eof or conn.paused or conn.pipe_full
                    or (conn.state != _READING and conn.pipe is None and conn.parser.buffered > MAX_PIPELINED))
        write = bool(conn.out) or conn.file is not None
        self._watch(conn, (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0))

    # -- timers: one heap, at most a live entry or two per connection ---------------------------------
    def _set_deadline(self, conn: _Conn, deadline: Optional[float]) -> None:
        conn.deadline = deadline
        if deadline is not None and (conn.armed is None or deadline < conn.armed):
            self._timer_seq += 1
            heapq.heappush(self._timers, (deadline, self._timer_seq, conn))
            conn.armed = deadline

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _seq, conn = heapq.heappop(timers)
            if conn.closed or conn.armed != at:
                continue  # a stale entry: an earlier one of this connection was taken already
            conn.armed = None
            if conn.deadline is None:
                continue
            if conn.deadline > now:
                self._set_deadline(conn, conn.deadline)
                continue
            conn.deadline = None
            self._expire(conn)

    def _expire(self, conn: _Conn) -> None:
        if conn.state == _LINGERING:
            self._close(conn)
        elif conn.pipe is not None:  # a streamed body stalled: its handler sees it end short, then we close
            conn.close_after = True
            self._end_pipe(conn)
        elif conn.state == _HOLDING:
            if self._unpark(conn):  # else a set's thread is checking it again: its answer comes
                self._respond(conn, Response(304))
        elif conn.responding or conn.handshaking:
            self._close(conn)  # it does not read its answer, or never finished the TLS handshake
        elif conn.state == _READING and conn.receiving:
            log.debug("request from %s not received within %.0fs", conn.peer, self.request_timeout)
            self._refuse(conn, 408, "request not received within %.0f s" % self.request_timeout)
        elif conn.state == _READING:
            self._close(conn)  # idle keep-alive connection

    # -- reading and parsing ------------------------------------------------------------------
    def _read(self, conn: _Conn) -> None:
        if conn.handshaking:
            self._handshake(conn)
            return
        sock = conn.sock
        while True:
            try:
                data = sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError:  # reset, or a TLS error
                self._close(conn)
                return
            if not data:
                self._on_eof(conn)
                return
            if conn.state == _LINGERING:
                continue  # what the client still sends after our answer is dropped
            if conn.state == _READING and not conn.receiving:
                conn.receiving = True  # the first byte of a request: from now its deadline runs
                self._set_deadline(conn, time.monotonic() + self.request_timeout)
            conn.parser.receive(data)
            if conn.state == _READING or conn.pipe is not None:
                self._advance(conn)
            elif conn.parser.buffered > MAX_PIPELINED:
                self._want(conn)
            if conn.closed or conn.paused or not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                return  # TLS may hold decrypted bytes the selector cannot see: read them too

    def _on_eof(self, conn: _Conn) -> None:
        conn.eof = True
        self._end_pipe(conn)
        if conn.state == _LINGERING or conn.state == _HOLDING or (conn.state == _WORKING and conn.poll is not None):
            self._close(conn)  # a long poll whose client hung up ends at once
        elif conn.state == _READING and not conn.responding:
            if conn.receiving and conn.parser.buffered + len(conn.parts) or conn.request is not None:
                self._refuse(conn, 400, "request ended before it was complete")
            else:
                self._close(conn)
        else:
            self._want(conn)  # a half-close after a complete request: answer it, then close

    def _advance(self, conn: _Conn) -> None:
        """Take what the parser has, as long as the connection is reading a request (or streams its body)."""
        while not conn.closed and not conn.paused and not conn.pipe_full and (
                conn.pipe is not None or conn.state == _READING and not conn.responding):
            try:
                event = conn.parser.next_event()
            except ParseError as exc:
                self._refuse(conn, exc.status, exc.message)
                return
            if event is NEED_DATA:
                if conn.parser.between_messages and conn.request is None:
                    conn.receiving = False
                    self._set_deadline(conn, time.monotonic() + IDLE_TIMEOUT_S)
                return
            if isinstance(event, RequestHead):
                self._on_head(conn, event)
            elif isinstance(event, Data):
                self._on_body(conn, event.data)
            elif event is END_OF_MESSAGE:
                if conn.pipe is None:
                    self._dispatch(conn)
                else:  # a streamed body is all there: its handler reads the rest from the pipe
                    conn.pipe = None
                    self._set_deadline(conn, None)

    def _on_head(self, conn: _Conn, head: RequestHead) -> None:
        if head.method not in METHODS:
            self._refuse(conn, 501, "method %s not supported" % head.method[:20])
            return
        request = Request(head.method, head.path, head.query, head.headers, conn.peer, head.content_length,
                          _NO_BODY)
        conn.request = request
        conn.close_after = not head.keep_alive
        conn.keep_alive_10 = head.keep_alive and head.version == "1.0"
        if head.content_length > MAX_BODY_BYTES:
            if self._streams >= MAX_STREAMS:
                busy = text(503, "too many large uploads at once; try again")
                busy.headers.append(("Retry-After", "5"))
                self._refuse(conn, response=busy)
                return
            self._stream(conn, request)
        if head.expect_continue and head.content_length and not conn.parser.buffered:
            conn.out += _CONTINUE
            self._flush(conn)

    def _on_body(self, conn: _Conn, data: bytes) -> None:
        if conn.pipe is not None:
            if conn.pipe.feed(data):
                conn.pipe_full = True  # the handler is behind: wait for it, not for the client
                self._set_deadline(conn, None)
                self._want(conn)
            else:
                self._set_deadline(conn, time.monotonic() + self.request_timeout)  # a stream: progress, not total
            return
        conn.parts.append(data)
        conn.body_bytes += len(data)
        self._body_held += len(data)
        if self._body_held > BODY_BUDGET and conn.parser.body_left:
            conn.paused = True  # read on once other bodies are gone
            self._paused.append(conn)
            self._want(conn)

    def _release_body(self, conn: _Conn) -> None:
        if conn.body_bytes:
            self._body_held -= conn.body_bytes
            conn.body_bytes = 0
            conn.parts = []
        while self._paused and self._body_held <= BODY_BUDGET:
            paused = self._paused.pop(0)
            if not paused.closed:
                paused.paused = False
                self._want(paused)
                self._advance(paused)

    def _refuse(self, conn: _Conn, status: int = 400, message: str = "",
                response: Optional[Response] = None) -> None:
        """Answer an unreadable or refused request and close: what follows it cannot be trusted."""
        conn.close_after = conn.refused = True
        self._respond(conn, response or text(status, message))

    # -- the workers ----------------------------------------------------------------------------
    def _dispatch(self, conn: _Conn) -> None:
        request = conn.request
        if request.length:
            request.stream = io.BytesIO(b"".join(conn.parts))
        conn.state = _WORKING
        self._set_deadline(conn, None)
        self._jobs.put((conn, self._serve, request))

    def _handle(self, request: Request, front_ends: Sequence[Callable]) -> Union[Response, LongPoll, None]:
        """The answer of the first of ``front_ends`` that knows the path (None: none does)."""
        try:
            for front_end in front_ends:
                response = front_end(request)
                if response is not None:
                    return response
            return None
        except Exception as exc:
            return _error_response(exc, "%s %s" % (request.method, request.path))

    def _serve(self, conn: _Conn, request: Request) -> Union[Response, LongPoll, None]:
        """Run in a worker: the built-in front ends answer at once; a path they do not know goes to
        the ``extra_front_ends`` (the fleet API may wait up to a minute) in a thread of its own."""
        response = self._handle(request, self.front_ends)
        if response is not None or not self.extra_front_ends:
            return response or text(404, "no such endpoint")
        with self._extra_lock:
            if self._extra_threads >= MAX_EXTRA_THREADS:
                busy = text(503, "too many console requests at once; try again")
                busy.headers.append(("Retry-After", "1"))
                return busy
            self._extra_threads += 1

        def run() -> None:
            try:
                response = self._handle(request, self.extra_front_ends) or text(404, "no such endpoint")
                self._post(("done", conn, response, False))
            finally:
                with self._extra_lock:
                    self._extra_threads -= 1

        threading.Thread(target=run, name="http-console", daemon=True).start()
        return None  # that thread answers

    def _stream(self, conn: _Conn, request: Request) -> None:
        """Run the handler of a large body now, in its own thread, reading the body as it arrives."""
        conn.pipe = request.stream = BodyPipe(request.length, lambda: self._post(("drained", conn)),
                                              self.request_timeout + 5)
        conn.state = _WORKING
        self._streams += 1

        def run() -> None:
            response = self._handle(request, self.front_ends + self.extra_front_ends)
            self._post(("done", conn, response or text(404, "no such endpoint"), True))

        threading.Thread(target=run, name="http-stream", daemon=True).start()

    def _end_pipe(self, conn: _Conn) -> None:
        if conn.pipe is not None:
            conn.pipe.abort()
            conn.pipe = None
            conn.pipe_full = False

    def _check_again(self, _conn: _Conn, poll: LongPoll) -> Union[Response, LongPoll]:
        """Run in a worker after a set on the poll's device."""
        try:
            poll.version = self.murano.hub.version(poll.key)
            return poll.check() or poll
        except Exception as exc:
            return _error_response(exc, "long poll")

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, work, arg = job
            result = work(conn, arg)
            if result is not None:
                self._post(("done", conn, result, False))

    def _post(self, message: tuple) -> None:
        with self._inbox_lock:
            first = not self._inbox
            self._inbox.append(message)
        if first:
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def _on_change(self, change: Change) -> None:
        """A set on a device: check its held polls again right here, in the thread that committed
        it (two thread hand-offs fewer than through the loop and a worker)."""
        if change.kind != "set":
            return
        with self._polls_lock:
            claimed = self._polls.pop((change.pid, change.identity), ())
        for conn in claimed:
            self._post(("done", conn, self._check_again(conn, conn.poll), False))

    def _run_inbox(self) -> None:
        with self._inbox_lock:
            messages, self._inbox = self._inbox, deque()
        for message in messages:
            if message[0] == "drained":
                conn = message[1]
                if conn.pipe is not None and not conn.closed:
                    conn.pipe_full = False
                    self._set_deadline(conn, time.monotonic() + self.request_timeout)
                    self._want(conn)
                    self._advance(conn)
                continue
            _kind, conn, result, streamed = message
            if streamed:
                self._streams -= 1
                if not conn.request.consumed or conn.pipe is not None:
                    conn.close_after = True  # the body was not read to its end: what follows is not a request
                    self._end_pipe(conn)
            if conn.closed:
                if isinstance(result, Response) and result.file is not None:
                    result.file.close()
                continue
            if conn.state not in (_WORKING, _HOLDING):  # held: a set's thread checked it again
                continue
            self._release_body(conn)
            if isinstance(result, LongPoll):
                self._hold(conn, result)
            else:
                self._respond(conn, result)

    # -- long polls -------------------------------------------------------------------------------
    def _hold(self, conn: _Conn, poll: LongPoll) -> None:
        if conn.eof:
            self._close(conn)
            return
        if conn.poll is None:
            self._held += 1
        conn.poll = poll
        if time.monotonic() >= poll.deadline:
            self._respond(conn, Response(304))
            return
        with self._polls_lock:  # a set bumps the version, then takes this lock to claim the polls
            moved = self.murano.hub.version(poll.key) != poll.version
            if not moved:
                self._polls.setdefault(poll.key, set()).add(conn)
        if moved:
            self._check(conn)  # a set came between the check and now
            return
        conn.state = _HOLDING
        self._set_deadline(conn, poll.deadline)
        self._want(conn)

    def _check(self, conn: _Conn) -> None:
        self._unpark(conn)
        conn.state = _WORKING
        self._set_deadline(conn, None)
        self._jobs.put((conn, self._check_again, conn.poll))

    def _unpark(self, conn: _Conn) -> bool:
        """Take ``conn`` from the held polls; False if it was not there (a set's thread has it)."""
        with self._polls_lock:
            waiting = self._polls.get(conn.poll.key)
            if waiting is None or conn not in waiting:
                return False
            waiting.discard(conn)
            if not waiting:
                del self._polls[conn.poll.key]
            return True

    def _unhold(self, conn: _Conn) -> None:
        self._unpark(conn)
        conn.poll = None
        self._held -= 1

    # -- writing ---------------------------------------------------------------------------------
    def _respond(self, conn: _Conn, response: Response) -> None:
        if conn.poll is not None:
            self._unhold(conn)
        head_only = conn.request is not None and conn.request.method == "HEAD"
        conn.state = _READING
        conn.request = None
        conn.responding = True
        close = conn.close_after or conn.eof
        head = ["HTTP/1.1 %d %s\r\nServer: murano-local/%s\r\nDate: %s\r\n" % (
            response.status, _reason(response.status), __version__, self._http_date())]
        if response.content_type:
            head.append("Content-Type: %s\r\n" % response.content_type)
        for name, value in response.headers:
            head.append("%s: %s\r\n" % (name, value))
        length = response.length if response.file is not None else len(response.body)
        if response.status != 304:
            head.append("Content-Length: %d\r\n" % length)
        if close:
            head.append("Connection: close\r\n")
        elif conn.keep_alive_10:
            head.append("Connection: keep-alive\r\n")
        head.append("\r\n")
        conn.out += "".join(head).encode("latin-1")
        with_body = response.status not in (204, 304) and not head_only
        if with_body and response.file is None:
            conn.out += response.body
        elif response.file is not None:
            if with_body and length:
                conn.file, conn.file_offset, conn.file_left = response.file, response.offset, length
            else:
                response.file.close()
        conn.close_after = close
        self._flush(conn)

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        return self._date[1]

    def _on_writable(self, conn: _Conn) -> None:
        if conn.handshaking:
            self._handshake(conn)
        else:
            self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        sock = conn.sock
        try:
            while conn.out:
                sent = sock.send(conn.out)
                del conn.out[:sent]
            while conn.file is not None:
                if isinstance(sock, ssl.SSLSocket):  # no sendfile through TLS: in pieces via ``out``
                    chunk = os.pread(conn.file.fileno(), min(conn.file_left, RECV_BYTES), conn.file_offset)
                    sent = len(chunk)
                    conn.out += chunk
                    while conn.out:
                        del conn.out[:sock.send(conn.out)]
                else:
                    sent = os.sendfile(sock.fileno(), conn.file.fileno(), conn.file_offset,
                                       min(conn.file_left, SENDFILE_BYTES))
                if sent == 0:
                    raise ConnectionError("content file ended early")
                conn.file_offset += sent
                conn.file_left -= sent
                if conn.file_left <= 0:
                    conn.file.close()
                    conn.file = None
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            self._set_deadline(conn, time.monotonic() + self.request_timeout)  # it must keep reading
            self._want(conn)
            return
        except OSError:
            self._close(conn)
            return
        if conn.responding:
            self._answered(conn)
        else:
            self._want(conn)

    def _answered(self, conn: _Conn) -> None:
        """The answer is out: close, or read the next request (perhaps already here)."""
        conn.responding = False
        if conn.close_after and not conn.eof and (conn.refused or not conn.parser.between_messages):
            self._linger(conn)
            return
        if conn.close_after or (conn.eof and conn.parser.between_messages):
            self._close(conn)
            return
        conn.keep_alive_10 = False
        conn.receiving = not conn.parser.between_messages
        self._set_deadline(conn, time.monotonic() + (self.request_timeout if conn.receiving else IDLE_TIMEOUT_S))
        self._want(conn)
        self._advance(conn)

    def _linger(self, conn: _Conn) -> None:
        """Close our side but read on a little: closing with unread bytes would send a reset, and the
        client could lose the answer (a 413 to a body it is still sending)."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.state = _LINGERING
        self._set_deadline(conn, time.monotonic() + LINGER_S)
        self._watch(conn, selectors.EVENT_READ)

    def _handshake(self, conn: _Conn) -> None:
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.debug("TLS handshake with %s failed: %s", conn.peer, exc)
            self._close(conn)
            return
        conn.handshaking = False
        self._watch(conn, selectors.EVENT_READ)
        self._read(conn)


_NO_BODY = io.BytesIO(b"")


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def serve(murano: Murano, host: str = "127.0.0.1", port: int = 8080,
          ready: Optional[Callable[[MuranoHTTPServer], None]] = None, max_connections: Optional[int] = None,
          before_close: Optional[Callable[[], None]] = None, request_timeout: float = REQUEST_TIMEOUT_S,
          https_port: Optional[int] = None, ssl_context: Optional[ssl.SSLContext] = None,
          front_ends: Sequence[Callable[[Request], Union[Response, LongPoll, None]]] = ()) -> None:
    """Serve until SIGTERM or SIGINT (from the main thread), or until ``server.shutdown()``.

    ``front_ends`` answer what the Device and admin APIs do not (the fleet API and page);
    ``before_close`` runs before the store closes (to stop other front ends, e.g. MQTT)."""
    open_files = raise_open_file_limit()
    if max_connections is None:
        max_connections = default_max_connections(open_files)
    elif max_connections > open_files - FD_RESERVE:
        log.warning("--max-connections %d is above what the open-file limit (%d) allows", max_connections,
                    open_files)
    server = MuranoHTTPServer((host, port), murano, max_connections, request_timeout,
                              (host, https_port) if https_port is not None else None, ssl_context,
                              front_ends=front_ends)

    def stop(_signum, _frame) -> None:
        server.shutdown()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    log.info("murano-local serving http://%s:%d (default product %s, up to %d connections)", host,
             server.server_address[1], murano.default_pid, max_connections)
    if server.tls_server_address:
        log.info("murano-local serving https://%s:%d", host, server.tls_server_address[1])
    if ready:
        ready(server)
    try:
        server.serve_forever()
        log.info("murano-local stopping")
    finally:
        murano.hub.close()
        server.server_close()
        if before_close is not None:
            before_close()
        murano.close()
