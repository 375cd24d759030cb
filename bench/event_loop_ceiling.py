#!/usr/bin/env python3
"""The ingest ceiling: a minimal non-durable event-loop HTTP server (issue 16, goal 2).

    python3 bench/event_loop_ceiling.py --serve PORT

What gmq's front end is (one thread, ``selectors``, HTTP/1.1 keep-alive, listen backlog 1024,
TCP_NODELAY) with everything else taken out: no storage, no strict parsing, no routing, no
form decoding. It frames requests by ``Content-Length`` and answers ``POST
/onep:v1/stack/alias`` with 204 (anything else 404), every request of every ready connection
before it polls again. No Python server on this machine answers these requests faster, so
gmq's req/s over this one's in the same run is the share of the ceiling gmq reaches.
"""
from __future__ import annotations

import argparse
import selectors
import socket

ROUTE = b"POST /onep:v1/stack/alias "
NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def answers(buf: bytearray) -> bytes:
    """Take every complete request off ``buf``; their answers, or BAD (the caller closes)."""
    out = []
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return b"".join(out)
        head = bytes(buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:stop if stop >= 0 else end])
        if len(buf) < end + 4 + length:
            return b"".join(out)
        out.append(NO_CONTENT if buf.startswith(ROUTE) else NOT_FOUND)
        del buf[:end + 4 + length]


def serve(port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    buffers = {}
    try:  # until SIGTERM (its default action) or SIGINT
        while True:
            for key, _ in sel.select():
                if key.data is None:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        continue
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    buffers[sock] = bytearray()
                    sel.register(sock, selectors.EVENT_READ, sock)
                    continue
                sock = key.data
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                buf = buffers[sock]
                buf += data
                try:
                    out = answers(buf) if data else b""
                except ValueError:
                    out, data = BAD, b""
                if out:
                    try:
                        sock.sendall(out)  # a few dozen bytes per request: the socket buffer takes them
                    except OSError:
                        data = b""
                if not data:
                    sel.unregister(sock)
                    del buffers[sock]
                    sock.close()
    except KeyboardInterrupt:
        pass
    finally:
        sel.close()
        listener.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", type=int, required=True, metavar="PORT", help="listen on 127.0.0.1:PORT")
    serve(ap.parse_args().serve)


if __name__ == "__main__":
    main()
