"""Noticing clients that hang up during a long poll, so their threads and slots are freed at once.

One thread watches the sockets of all waiting long polls with epoll (no CPU while nothing
happens). When a watched socket turns readable and a peek finds end-of-file, the poll's
callback runs; readable data (a pipelined request) just ends the watch.
"""
from __future__ import annotations

import logging
import selectors
import socket
import threading
from typing import Callable, List, Tuple

log = logging.getLogger(__name__)


class HangupWatcher:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._ops: List[Tuple[str, socket.socket, object, threading.Event]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="hangup-watcher", daemon=True)
        self._thread.start()

    def watch(self, sock: socket.socket, on_hangup: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_hangup()`` if the peer closes ``sock``; returns the function that ends the watch.

        Ending the watch waits until the watcher has dropped the socket, so the caller may
        close it right after (its descriptor number can then be reused safely).
        """
        self._submit("add", sock, on_hangup)

        def unwatch() -> None:
            self._submit("remove", sock, None)
        return unwatch

    def _submit(self, op: str, sock: socket.socket, data: object) -> None:
        done = threading.Event()
        with self._lock:
            if self._closed:
                return
            self._ops.append((op, sock, data, done))
        self._wake_w.send(b"\0")
        done.wait(5)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._wake_w.send(b"\0")

    def _apply_ops(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            ops, self._ops = self._ops, []
        for op, sock, data, done in ops:
            try:
                if op == "add":
                    self._selector.register(sock, selectors.EVENT_READ, data)
                else:
                    self._selector.unregister(sock)
            except (KeyError, ValueError, OSError):
                pass  # already dropped after an event, or the socket is gone
            done.set()

    def _run(self) -> None:
        while not self._closed:
            for key, _mask in self._selector.select():
                if key.fileobj is self._wake_r:
                    self._apply_ops()
                    continue
                sock = key.fileobj
                try:
                    peeked = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError:
                    peeked = b""
                self._selector.unregister(sock)
                if peeked == b"":
                    try:
                        key.data()
                    except Exception:
                        log.exception("hang-up callback failed")
        self._apply_ops()
