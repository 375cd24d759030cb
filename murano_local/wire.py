"""The request and response shapes the front ends exchange with the HTTP server, and HTTP errors."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, List, Optional, Tuple
from urllib.parse import unquote

from .http_parser import Headers

from device_api import MAX_BODY_BYTES


class HttpError(Exception):
    """Answer with ``status`` and a short plain-text ``message``."""

    def __init__(self, status: int, message: str, headers: Optional[List[Tuple[str, str]]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: Headers
    client_ip: str
    length: int  # Content-Length
    stream: BinaryIO  # the body: in memory, or streamed from the client as it arrives (over 8 MiB)
    consumed: bool = False
    _body: Optional[bytes] = None

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name)

    def body(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """The whole body (read once), refused with 413 above ``limit`` before reading it."""
        if self._body is None:
            if self.length > limit:
                raise HttpError(413, "request body larger than %d bytes" % limit)
            self._body = self.read_exactly(self.length)
        return self._body

    def read_exactly(self, n: int) -> bytes:
        self.consumed = True
        data = self.stream.read(n) if n else b""
        if len(data) != n:
            raise HttpError(400, "request body shorter than Content-Length")
        return data

    def json(self) -> object:
        raw = self.body()
        if not raw.strip():
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "body is not valid JSON")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: Optional[str] = None
    headers: List[Tuple[str, str]] = field(default_factory=list)
    file: Optional[BinaryIO] = None
    offset: int = 0
    length: int = 0


@dataclass
class LongPoll:
    """A read that waits for a cloud set: the server holds it without a thread until ``check()``
    returns the answer (run again after each set on ``key``) or ``deadline`` (monotonic) passes (304).

    ``version`` is the change hub's version of ``key`` before the last check: a set after it
    moves the version, so the server knows to check again even if the set came first.
    """
    key: Tuple[str, str]
    deadline: float
    check: Callable[[], Optional[Response]]
    version: int


def text(status: int, message: str) -> Response:
    return Response(status, message.encode("utf-8"), "text/plain; charset=utf-8")


def json_response(status: int, data: object) -> Response:
    return Response(status, json.dumps(data).encode("utf-8"), "application/json")


def path_segment(segment: str) -> str:
    """A percent-decoded path segment; malformed UTF-8 is a 400."""
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(400, "path is not UTF-8")
