"""HTTP/1.1 request parsing per RFC 9112, pure like h11: bytes in, requests out, no sockets.

Strict where leniency lets two parties read the same bytes differently (request smuggling,
header injection): conflicting Content-Length values, a Transfer-Encoding this server does not
decode, obsolete line folding, whitespace before a colon, control characters in a field, a
missing or repeated Host, an empty line before the request line, HTTP/0.9 lines: each is a
:class:`ParseError` carrying the status to answer, after which the connection must close.
``tests/test_murano_local_http_parser.py`` checks every verdict against h11.

Usage: ``receive(data)`` whatever the socket gave, then ``next_event()`` until it returns
:data:`NEED_DATA`. Events come in the order :class:`RequestHead`, :class:`Data` (zero or more),
:data:`END_OF_MESSAGE`; then the next request's head, if the connection stays open.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

MAX_HEAD_BYTES = 65536
MAX_HEADERS = 100
MAX_LENGTH_DIGITS = 18  # a Content-Length longer than this is over every limit (and int() caps digits)

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_CONTENT = rb"[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*"  # VCHAR / obs-text, no CTL
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
_HTTP09_LINE = re.compile(_TOKEN + rb" [\x21-\x7e]+")
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*((?:" + _FIELD_CONTENT + rb")?)[ \t]*")
_END_OF_HEAD = re.compile(rb"\n\r?\n")
_TOKEN_START = re.compile(_TOKEN)
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


class ParseError(Exception):
    """The bytes are not an acceptable request: answer ``status`` with ``message``, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Headers:
    """Field lines in order with lower-cased names; ``get`` joins repeated fields with ", " (RFC 9110 5.3)."""

    __slots__ = ("fields", "_joined")

    def __init__(self, fields: List[Tuple[str, str]]) -> None:
        self.fields = fields
        joined: Dict[str, str] = {}
        for name, value in fields:
            joined[name] = joined[name] + ", " + value if name in joined else value
        self._joined = joined

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return self._joined.get(name.lower(), default)

    def get_all(self, name: str) -> List[str]:
        name = name.lower()
        return [v for n, v in self.fields if n == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._joined

    def tokens(self, name: str) -> List[str]:
        """A comma-separated list field (Connection, Expect) as lower-cased members."""
        value = self._joined.get(name.lower(), "")
        return [t.strip().lower() for t in value.split(",") if t.strip()]


@dataclass
class RequestHead:
    method: str
    target: str
    version: str  # "1.0" or "1.1"
    headers: Headers
    content_length: int
    keep_alive: bool
    expect_continue: bool
    path: str
    query: str


@dataclass
class Data:
    data: bytes


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Marker("NEED_DATA")
END_OF_MESSAGE = _Marker("END_OF_MESSAGE")
Event = Union[RequestHead, Data, _Marker]


class RequestParser:
    """One connection's requests, in order. After a :class:`ParseError`, or the end of a message
    whose connection does not stay open, it takes nothing more (``closed``)."""

    def __init__(self, max_head_bytes: int = MAX_HEAD_BYTES, max_headers: int = MAX_HEADERS) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self._buf = bytearray()
        self._searched = 0        # where the search for the end of the head resumes
        self._body_left: Optional[int] = None  # None: between messages (reading a head)
        self._keep_alive = True
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out."""
        return len(self._buf)

    @property
    def body_left(self) -> int:
        """Body bytes of the current request still to come."""
        return self._body_left or 0

    @property
    def between_messages(self) -> bool:
        """No request is under way: nothing of the next one has arrived."""
        return self._body_left is None and not self._buf

    def receive(self, data: bytes) -> None:
        if not self.closed:
            self._buf += data

    def next_event(self) -> Event:
        if self.closed:
            return NEED_DATA
        if self._body_left is None:
            return self._head()
        if self._body_left == 0:
            self._body_left = None
            if not self._keep_alive:
                self.closed = True
                self._buf.clear()
            return END_OF_MESSAGE
        if not self._buf:
            return NEED_DATA
        n = min(self._body_left, len(self._buf))
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        self._body_left -= n
        return Data(chunk)

    def _fail(self, status: int, message: str) -> ParseError:
        self.closed = True
        self._buf.clear()
        return ParseError(status, message)

    def _head(self) -> Event:
        buf = self._buf
        if not buf:
            return NEED_DATA
        if buf[0] in b"\r\n":
            raise self._fail(400, "empty line before the request line")
        if not _TOKEN_START.match(buf):  # no method starts so: refuse without waiting for the line
            raise self._fail(400, "malformed request line")
        match = _END_OF_HEAD.search(buf, self._searched)
        if match is None:
            self._searched = max(0, len(buf) - 2)
            if len(buf) > self.max_head_bytes:
                raise self._fail(431, "request head larger than %d bytes" % self.max_head_bytes)
            newline = buf.find(b"\n")
            if newline >= 0:  # judge the request line at once: an HTTP/0.9 client waits for no more
                self._request_line(bytes(buf[:newline]).rstrip(b"\r"))
            return NEED_DATA
        end = match.end()
        if end > self.max_head_bytes:
            raise self._fail(431, "request head larger than %d bytes" % self.max_head_bytes)
        lines = bytes(buf[:end]).split(b"\n")[:-2]
        del buf[:end]
        self._searched = 0
        return self._parse_head([line[:-1] if line.endswith(b"\r") else line for line in lines])

    def _request_line(self, line: bytes) -> Tuple[str, str, str]:
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            if _HTTP09_LINE.fullmatch(line):
                raise self._fail(400, "HTTP/0.9 requests are not supported")
            raise self._fail(400, "malformed request line")
        method, target, version = (g.decode("ascii") for g in match.groups())
        if version not in ("1.1", "1.0"):
            raise self._fail(505, "HTTP/1.1 or HTTP/1.0 only")
        return method, target, version

    def _parse_head(self, lines: List[bytes]) -> RequestHead:
        method, target, version = self._request_line(lines[0])
        if len(lines) - 1 > self.max_headers:
            raise self._fail(431, "more than %d header fields" % self.max_headers)
        fields = []
        for line in lines[1:]:
            match = _FIELD_LINE.fullmatch(line)
            if match is None:
                if line[:1] in (b" ", b"\t"):
                    raise self._fail(400, "obsolete line folding in the header section")
                if _CONTROL.search(line):
                    raise self._fail(400, "control character in a header field")
                raise self._fail(400, "malformed header field")
            fields.append((match.group(1).decode("ascii").lower(), match.group(2).decode("latin-1")))
        headers = Headers(fields)
        if "transfer-encoding" in headers:
            if headers.get("transfer-encoding", "").strip().lower() == "chunked":
                raise self._fail(411, "chunked bodies are not supported; send Content-Length")
            raise self._fail(501, "transfer codings are not supported; send Content-Length")
        length = self._content_length(headers.get_all("content-length"))
        hosts = headers.get_all("host")
        if len(hosts) > 1:
            raise self._fail(400, "more than one Host header field")
        if version == "1.1" and not hosts:
            raise self._fail(400, "HTTP/1.1 request without Host")
        connection = headers.tokens("connection")
        keep_alive = "close" not in connection and (version == "1.1" or "keep-alive" in connection)
        path, query = self._target(method, target)
        self._keep_alive = keep_alive
        self._body_left = length
        return RequestHead(method, target, version, headers, length, keep_alive,
                           version == "1.1" and "100-continue" in headers.tokens("expect"), path, query)

    def _content_length(self, values: List[str]) -> int:
        """Repeated or listed Content-Length values must be one and the same (RFC 9110 8.6)."""
        if not values:
            return 0  # no Content-Length, no Transfer-Encoding: no body (RFC 9112 6.3)
        lengths = {v.strip() for value in values for v in value.split(",")}
        if len(lengths) != 1:
            raise self._fail(400, "conflicting Content-Length values")
        text = lengths.pop()
        if not (text.isascii() and text.isdigit()):  # "\xb2".isdigit() is true
            raise self._fail(400, "bad Content-Length")
        digits = text.lstrip("0")
        if len(digits) > MAX_LENGTH_DIGITS:
            raise self._fail(413, "Content-Length over every limit")
        return int(digits or "0")

    def _target(self, method: str, target: str) -> Tuple[str, str]:
        """The path and query of an origin-form (``/p?q``) or absolute-form (``http://h/p?q``) target."""
        if not target.startswith("/"):
            match = _ABSOLUTE.match(target)
            if match is None:
                raise self._fail(400, "request target must be a path or an absolute URL")
            target = target[match.end():]
            if not target.startswith("/"):
                target = "/" + target
        path, _, query = target.partition("?")
        return path, query.partition("#")[0]
