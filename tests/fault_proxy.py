"""A userspace TCP fault proxy for the reliability lab (this kernel has no netem qdisc).

It listens on ``listen_host`` (loopback, or an address inside a test's network namespace) and
relays each connection to ``target``. ``set_profile`` changes what the path does to new and
open connections:

- ``pass``: relay unchanged;
- ``latency``: every chunk waits ``delay`` seconds each way;
- ``cut_request``: close both sides after ``after`` bytes from the client (mid-request);
- ``cut_response``: relay the request whole, close after ``after`` bytes of the answer
  (mid-response: the server has done the work, the client never learns it);
- ``blackhole``: packets go nowhere: connections hang; what was sent meanwhile is delivered when
  the profile ends (as TCP retransmits it once the route is back);
- ``blackhole_drop``: the same, but what was sent is lost for good (a middlebox that forgot the
  connection): only the endpoints' own timeouts end it;
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
from typing import Tuple

PROFILES = ("pass", "latency", "cut_request", "cut_response", "blackhole", "blackhole_drop", "refuse", "flap")


class _State(dict):
    """One relayed connection's state (a dict, hashable by identity so a set can hold it)."""

    __hash__ = object.__hash__


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a dropped link looks to the other end. shutdown(SHUT_RD)
    first wakes a thread blocked in recv on it: until that thread lets go, close() sends nothing
    and the other end would hang."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
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
        self._generation = 0  # bumped on every profile change
        self._states = set()  # per-connection relay state (for releasing what a blackhole held)
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def set_profile(self, profile: str, **options) -> None:
        if profile not in PROFILES:
            raise ValueError("unknown profile %r" % profile)
        with self._lock:
            if self.profile == "blackhole":  # the route is back: what was held goes through, in order
                for state in list(self._states):
                    for direction in ("up", "down"):
                        for chunk in state["held_" + direction]:
                            try:
                                state["dst_" + direction].sendall(chunk)
                            except OSError:
                                break
                        state["held_" + direction] = []
            self.profile, self.options = profile, options
            self._generation += 1
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
            epoch = self._epoch
            self._open.add(client)
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            self._forget(client)
            return
        with self._lock:
            self._open.add(upstream)
        state = _State(up=0, down=0, generation=None, held_up=[], held_down=[], dst_up=upstream, dst_down=client)
        with self._lock:
            self._states.add(state)
        threads = [threading.Thread(target=self._pump, args=(client, upstream, "up", state, epoch), daemon=True),
                   threading.Thread(target=self._pump, args=(upstream, client, "down", state, epoch), daemon=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self._lock:
            self._states.discard(state)
        for sock in (client, upstream):
            self._forget(sock)
            try:
                sock.close()
            except OSError:
                pass

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _pump(self, src, dst, direction, state, epoch) -> None:
        """Relay one direction, applying the profile in force for each chunk (so a profile also
        hits kept-alive connections); byte limits count from the profile's start."""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if epoch != self._epoch or not self._link_up():
                        raise OSError("link down")
                    profile, options, generation = self.profile, dict(self.options), self._generation
                    if state["generation"] != generation:
                        state.update(generation=generation, up=0, down=0)
                    if profile == "blackhole":
                        state["held_" + direction].append(data)
                        continue
                if profile == "blackhole_drop":
                    continue
                if profile == "latency":
                    time.sleep(float(options.get("delay", 0.1)))
                limit = None
                if profile == "cut_request" and direction == "up" or profile == "cut_response" and direction == "down":
                    limit = int(options.get("after", 1))
                if limit is not None and state[direction] + len(data) >= limit:
                    dst.sendall(data[:max(0, limit - state[direction])])
                    with self._lock:
                        self.cut += 1
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
