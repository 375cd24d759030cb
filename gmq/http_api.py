"""gmq's local HTTP front end: one event-loop thread, HTTP/1.1 keep-alive, group commit by design.

The loop never waits for the database's writer turn: while the forwarder holds it (a commit
of its own), the loop goes on reading, parsing and answering what needs no commit, and
gathers the writes; the queue calls it back when the turn passes to it.

Why not a thread per connection: with the GIL, every producer thread that blocks for a
commit and wakes again costs more CPU than the request itself (measured: 0.5x the plain
ThreadingHTTPServer at 8 producers). Nor a separate committer thread: it waits for the
GIL after every fsync while the loop parses (measured: slower still). Here one thread
reads every ready connection, parses the requests, commits all their values in one
transaction, then answers them all; what arrives during a commit is the next group.

Bounded everywhere: header bytes, body bytes, a deadline for a request to arrive in
full (slow senders get 408), an idle timeout for keep-alive connections, a cap on open
connections (503 above it), a deep listen backlog. Errors are a status and one short
plain-text line.
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from typing import Dict, List, Optional, Protocol, Set, Tuple

from .queue import Rejected
from .http_parser import ParseError, RequestParser
from .routes import Reply, Store, route, text

log = logging.getLogger(__name__)

RECV_BYTES = 65536
MAX_PENDING_OUT = 262144  # answers not yet taken by the client; above it, its requests wait
LISTEN_BACKLOG = 1024
PAUSED_ACCEPT_RETRY_S = 0.25  # out of descriptors: how often to try accepting again (they may free elsewhere)
GATHER_PASSES = 2  # extra non-blocking polls before a commit, to pick up requests just arriving
REASONS = {100: "Continue", 200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
           413: "Payload Too Large", 422: "Unprocessable Entity", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           505: "HTTP Version Not Supported", 507: "Insufficient Storage"}
NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


class App(Protocol):
    """What the front end needs from the running gmq (see server.py)."""

    queue: object
    clients: object
    max_body_bytes: int
    request_timeout: float
    max_connections: int

    def status(self) -> dict: ...

    def reread(self) -> dict: ...


class _Conn:
    __slots__ = ("sock", "parser", "out", "busy", "closing", "seen", "started", "keep", "http10", "events",
                 "eof")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.parser = RequestParser()
        self.out = bytearray()
        self.busy = False          # a Store of this connection is waiting for the commit
        self.closing = False       # close once ``out`` is sent
        self.seen = now            # last byte received (idle timeout)
        self.started: Optional[float] = None  # first byte of the request being received
        self.keep = True
        self.http10 = False        # an HTTP/1.0 client keeps the connection only if told so in each answer
        self.events = selectors.EVENT_READ  # what the selector watches for (0: not registered)
        self.eof = False           # the client half-closed: answer what it sent, then close


_NO_TURN, _TURN_ASKED, _TURN_HELD = "none", "asked", "held"


class GmqHTTPServer:
    """The event loop. ``serve_forever()`` in one thread; ``shutdown()`` from any other or a signal handler."""

    def __init__(self, address: Tuple[str, int], app: App) -> None:
        self.app = app
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(LISTEN_BACKLOG)
        self._listener.setblocking(False)
        self.server_address = self._listener.getsockname()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._conns: Dict[int, _Conn] = {}
        self._ready: Set[_Conn] = set()
        self._gathered: List[Tuple[_Conn, Store]] = []
        self._running = False
        self._accept_paused = False  # out of file descriptors: the listener rests until one is freed
        self._accept_retry_at = 0.0  # or until then (monotonic)
        self._turn = _NO_TURN        # the database writer's turn: not asked for, asked for, held
        self._turn_given = threading.Event()
        self._next_expiry = float("inf")  # no connection's timeout falls before this (monotonic)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # -- the loop ---------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Run until ``shutdown()``. Idle, the loop sleeps in ``select`` until a socket is ready or the
        earliest connection timeout: no periodic tick (a keep-alive connection's deadlines only move
        later with activity, so the earliest one computed by ``_expire`` is a safe time to look again)."""
        self._running = True
        while self._running:
            self._poll(0 if self._ready else self._idle_timeout())
            if self._ready:
                self._serve_ready()
                passes = GATHER_PASSES if len(self._conns) > 1 else 0  # alone, nobody else can be arriving
                while self._gathered and passes:
                    passes -= 1
                    if not self._poll(0):
                        break
                    self._serve_ready()
            if self._gathered or self._turn != _NO_TURN:
                self._commit_in_turn()
            now = time.monotonic()
            if now >= self._next_expiry:
                self._expire(now)
            if self._accept_paused and now >= self._accept_retry_at:
                self._resume_accept()  # descriptors may have been freed elsewhere (the forwarder)
        if self._gathered or self._turn != _NO_TURN:  # stopping: the requests in hand are committed and answered
            if self._turn == _TURN_ASKED:
                self._turn_given.wait()
            self._commit_in_turn()

    def _idle_timeout(self) -> Optional[float]:
        """How long ``select`` may sleep: until the next connection timeout; None (for ever) with none open."""
        timeout = None if self._next_expiry == float("inf") else max(0.0, self._next_expiry - time.monotonic())
        if self._accept_paused:
            retry = max(0.0, self._accept_retry_at - time.monotonic())
            timeout = retry if timeout is None else min(timeout, retry)
        return timeout

    def _give_turn(self) -> None:
        """Called by the queue, from the thread passing the writer's turn on: it is the loop's now."""
        self._turn_given.set()
        try:
            os.write(self._wake_w, b"t")
        except OSError:
            pass

    def _commit_in_turn(self) -> None:
        """Commit the gathered requests when the loop holds the writer's turn; else ask for it, without waiting."""
        if self._turn == _TURN_ASKED:
            if not self._turn_given.is_set():
                return
            self._turn_given.clear()
            self._turn = _TURN_HELD
        elif self._turn == _NO_TURN:
            if not self.app.queue.claim_or_notify(self._give_turn):
                self._turn = _TURN_ASKED
                return
            self._turn = _TURN_HELD
        self._turn = _NO_TURN
        self._commit()  # passes the turn on

    def _poll(self, timeout: float) -> int:
        events = self._sel.select(timeout)
        for key, mask in events:
            if key.data is None:
                self._accept()
            elif key.data == "wake":
                self._drain_wake()
            else:
                conn = key.data
                if mask & selectors.EVENT_READ:
                    self._read(conn)
                if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                    self._flush(conn)
        return len(events)

    def shutdown(self) -> None:
        """Stop the loop after the requests in hand (safe from a signal handler)."""
        self._running = False
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def server_close(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _drain_wake(self) -> None:
        try:
            os.read(self._wake_r, 512)
        except OSError:
            pass

    # -- connections ------------------------------------------------------------------------
    def _accept(self) -> None:
        now = time.monotonic()
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up while in the backlog
                continue
            except OSError as exc:  # EMFILE and friends: leave the rest in the backlog for now
                log.warning("accept failed: %s; accepting again once a connection closes", exc)
                self._sel.unregister(self._listener)  # else the ready listener spins the loop
                self._accept_paused = True
                self._accept_retry_at = now + PAUSED_ACCEPT_RETRY_S
                return
            if len(self._conns) >= self.app.max_connections:
                try:
                    sock.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                              b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n")
                except OSError:
                    pass
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, now)
            self._conns[sock.fileno()] = conn
            self._next_expiry = min(self._next_expiry, now + self.app.request_timeout)
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self._conns.pop(fd, None)
            if conn.events:
                try:
                    self._sel.unregister(conn.sock)
                except (KeyError, ValueError):
                    pass
            conn.sock.close()
            self._resume_accept()
        self._ready.discard(conn)

    def _resume_accept(self) -> None:
        if self._accept_paused:
            self._accept_paused = False
            self._sel.register(self._listener, selectors.EVENT_READ, None)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            conn.eof = True  # a half-close: answer the requests already received, then close
            self._watch(conn)
            self._ready.add(conn)
            return
        now = time.monotonic()
        conn.seen = now
        if conn.closing:
            return  # the answer is on its way; ignore the rest
        if conn.started is None:
            conn.started = now
        conn.parser.buffer += data
        self._ready.add(conn)

    def _flush(self, conn: _Conn) -> None:
        out = conn.out
        while out:
            try:
                n = conn.sock.send(out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            del out[:n]
        if not out and conn.closing and not conn.busy:
            self._close(conn)
            return
        if (conn.parser.buffer or conn.eof) and len(out) < MAX_PENDING_OUT and not conn.busy and not conn.closing:
            self._ready.add(conn)  # requests held back while the answers piled up
        self._watch(conn)

    def _watch(self, conn: _Conn) -> None:
        """Select on what ``conn`` waits for: bytes to read (until the client's EOF), room to write."""
        reading = not conn.eof and len(conn.out) < MAX_PENDING_OUT  # else TCP holds a client that does not read
        events = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if conn.out else 0)
        if events == conn.events:
            return
        if not conn.events:
            self._sel.register(conn.sock, events, conn)
        elif not events:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _expire(self, now: float) -> None:
        """Answer 408 to requests that did not arrive in time, close idle connections, and note when
        the next of these falls due."""
        limit = self.app.request_timeout
        nxt = float("inf")
        for conn in list(self._conns.values()):
            if conn.busy:
                nxt = min(nxt, now + limit)  # its answer comes with the commit; look again later
                continue
            if conn.started is not None and not conn.closing:
                if now - conn.started >= limit:
                    self._answer(conn, text(408, "request not received in time"), close=True)
                    nxt = min(nxt, now + limit)  # the 408 may not be sent at once
                    continue
                nxt = min(nxt, conn.started + limit)
            if now - conn.seen >= limit:
                self._close(conn)
            else:
                nxt = min(nxt, conn.seen + limit)
        self._next_expiry = nxt

    # -- requests ---------------------------------------------------------------------------
    def _serve_ready(self) -> None:
        ready, self._ready = self._ready, set()
        for conn in ready:
            while not conn.busy and not conn.closing and conn.sock.fileno() >= 0:
                if len(conn.out) >= MAX_PENDING_OUT:
                    break  # the client is not reading its answers: no more until it does (see _flush)
                try:
                    req = conn.parser.next_request(self.app.max_body_bytes)
                except ParseError as exc:
                    self._answer(conn, text(exc.status, exc.message), close=True)
                    break
                if req is None:
                    if conn.parser.wants_continue():
                        conn.out += b"HTTP/1.1 100 Continue\r\n\r\n"
                        self._flush(conn)
                    if not conn.parser.receiving:
                        conn.started = None
                    break
                conn.started = time.monotonic() if conn.parser.buffer else None
                conn.http10 = req.version == "HTTP/1.0"  # an HTTP/1.0 client keeps the connection only if told so
                conn.keep = req.keep_alive
                try:
                    result = route(self.app, req)
                except Exception:
                    log.exception("request %s %s failed", req.method, req.target[:100])
                    self._answer(conn, text(500, "internal error; nothing was stored"), close=True)
                    break
                if isinstance(result, Store):
                    conn.busy = True
                    self._gathered.append((conn, result))
                else:
                    self._answer(conn, result, head_only=req.method == "HEAD")
            if conn.eof and not conn.busy and conn.sock.fileno() >= 0 and len(conn.out) < MAX_PENDING_OUT:
                conn.closing = True  # every complete request is answered; nothing more will come
                self._flush(conn)

    def _commit(self) -> None:
        """Commit every gathered request (values, new clients) in one transaction, then answer each.

        The caller holds the writer's turn; committing passes it on.
        """
        group, self._gathered = self._gathered, []
        try:
            results = self.app.queue.append_many(
                [(s.client.id, s.values, None if s.client.durable else s.client.row()) for _, s in group], claimed=True)
        except Exception:
            log.exception("commit failed")
            results = [Rejected(500, "storage error; nothing was stored")] * len(group)
        for (conn, store), rejected in zip(group, results):
            conn.busy = False
            if rejected is None:
                self.app.clients.committed(store.client)
            if conn.sock.fileno() < 0:
                continue
            if rejected is None and store.reply is not None:
                self._answer(conn, store.reply)
            elif rejected is None:
                if conn.keep and not conn.closing and not conn.http10:
                    conn.out += NO_CONTENT
                    self._flush(conn)
                else:
                    self._answer(conn, Reply(204))
            else:
                self._answer(conn, text(rejected.status, rejected.reason))
            if conn.parser.buffer or conn.eof:
                self._ready.add(conn)

    def _answer(self, conn: _Conn, reply: Reply, close: bool = False, head_only: bool = False) -> None:
        if close or not conn.keep:
            conn.closing = True
        head = "HTTP/1.1 %d %s\r\n" % (reply.status, REASONS.get(reply.status, "Error"))
        if reply.body:
            head += "Content-Type: %s\r\n" % reply.ctype
        head += "Content-Length: %d\r\n" % len(reply.body)
        if conn.closing:
            head += "Connection: close\r\n"
        elif conn.http10:
            head += "Connection: keep-alive\r\n"
        conn.out += head.encode("latin-1") + b"\r\n"
        if not head_only:
            conn.out += reply.body
        self._flush(conn)
