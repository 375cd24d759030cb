"""A userspace TCP fault proxy for the reliability lab (this kernel has no netem qdisc).

It listens on ``listen_host`` (loopback, or an address inside a test's network namespace) and
relays each connection to ``target``. ``set_profile`` changes what the path does to new and
open connections:

- ``pass``: relay unchanged;
- ``latency``: every chunk waits ``delay`` seconds each way;
- ``cut_request``: close both sides after ``after`` bytes from the client (mid-request);
- ``cut_response``: relay the request whole, close after ``after`` bytes of the answer
  (mid-response: the server has done the work, the client never learns it);
- ``blackhole``: accept and read, never relay or answer (a connection that hangs);
- ``refuse``: close every new connection at once with a reset (the link is down);
- ``flap``: alternate ``pass`` and ``refuse`` every ``period`` seconds, resetting open
  connections at each down edge.

Counters: ``connections``, ``cut`` (connections the proxy broke), ``bytes_up``/``bytes_down``.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Optional, Tuple

PROFILES = ("pass", "latency", "cut_request", "cut_response", "blackhole", "refuse", "flap")


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a dropped link looks to the other end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FaultProxy:
    def __init__(self, target: Tuple[str, int], listen_host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self.listener = socket.create_server((listen_host, port))
        self.port = self.listener.getsockname()[1]
        self.host = listen_host
        self.url = "http://%s:%d" % (listen_host, self.port)
        self.profile, self.options = "pass", {}
        self.connections = self.cut = self.bytes_up = self.bytes_down = 0
        self._lock = threading.Lock()
        self._open = set()
        self._epoch = 0  # bumped on a flap's down edge: connections of an older epoch are reset
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def set_profile(self, profile: str, **options) -> None:
        if profile not in PROFILES:
            raise ValueError("unknown profile %r" % profile)
        with self._lock:
            self.profile, self.options = profile, options
            self._flap_start = time.monotonic()
            if profile in ("refuse", "flap"):
                self._drop_open()

    def _drop_open(self) -> None:
        self._epoch += 1
        for sock in list(self._open):
            _reset(sock)
        self._open.clear()

    def _link_up(self) -> bool:
        """For ``flap``: whether the link is up now (a down edge resets open connections)."""
        if self.profile == "refuse":
            return False
        if self.profile != "flap":
            return True
        period = self.options.get("period", 1.0)
        up = int((time.monotonic() - self._flap_start) / period) % 2 == 0
        if not up and self.options.get("_was_up", True):
            self._drop_open()
        self.options["_was_up"] = up
        return up

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                up = self._link_up()
            if not up:
                with self._lock:
                    self.cut += 1
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            profile, options, epoch = self.profile, dict(self.options), self._epoch
            self._open.add(client)
        if profile == "blackhole":
            try:
                while client.recv(65536):
                    pass
            except OSError:
                pass
            self._forget(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            self._forget(client)
            return
        with self._lock:
            self._open.add(upstream)
        state = {"up": 0, "down": 0, "cut": False}
        threads = [threading.Thread(target=self._pump, args=(client, upstream, "up", profile, options, state, epoch),
                                    daemon=True),
                   threading.Thread(target=self._pump, args=(upstream, client, "down", profile, options, state, epoch),
                                    daemon=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for sock in (client, upstream):
            self._forget(sock)
            try:
                sock.close()
            except OSError:
                pass

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _pump(self, src, dst, direction, profile, options, state, epoch) -> None:
        limit: Optional[int] = None
        if profile == "cut_request" and direction == "up" or profile == "cut_response" and direction == "down":
            limit = int(options.get("after", 1))
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if epoch != self._epoch or (profile == "flap" and not self._link_up()):
                        raise OSError("link down")
                if profile == "latency":
                    time.sleep(float(options.get("delay", 0.1)))
                if limit is not None and state[direction] + len(data) >= limit:
                    dst.sendall(data[:max(0, limit - state[direction])])
                    with self._lock:
                        self.cut += 1
                    state["cut"] = True
                    raise OSError("cut")
                state[direction] += len(data)
                with self._lock:
                    if direction == "up":
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
                dst.sendall(data)
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        except OSError:
            _reset(src)
            _reset(dst)

    def close(self) -> None:
        self._closed = True
        try:
            self.listener.close()
        except OSError:
            pass
        with self._lock:
            self._drop_open()
