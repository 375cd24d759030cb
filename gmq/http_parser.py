"""HTTP/1.1 request parsing for gmq's front end: bytes in, requests out, no sockets (like h11).

Strict per RFC 9112, and stricter where the RFC lets a server choose, because a lenient parser
behind another one is how requests get smuggled:

- request line: ``method SP request-target SP HTTP/x.y`` with single spaces; method a token;
  origin-form (``/path?query``) or absolute-form (``http://host/path``, its path is used);
  HTTP/1.0 and 1.1 (another well-formed version is 505); no empty line before it (h11 agrees);
- lines end in CRLF: a bare LF or a bare CR anywhere in the head is 400 (RFC 9112 2.2 allows
  taking LF alone as a line end; we do not, so no two parsers can split one request differently);
- field names are tokens, with no space before the colon; values hold no control character
  but HTAB (no NUL, no CR); obsolete line folding is 400 (RFC 9112 5.2 allows either);
- ``Host``: required in HTTP/1.1, at most one; ``Content-Length``: digits, at most one field and
  no list (duplicates are refused even when equal); ``Transfer-Encoding``: 411 for ``chunked``
  (gmq takes only Content-Length), 501 for any other coding, 400 together with Content-Length
  or in HTTP/1.0; singleton fields gmq acts on (``X-Exosite-CIK``, ``X-Exosite-VMS``,
  ``Content-Type``, ``Origin``) at most once; other repeated fields are joined with ``, ``;
- ``Connection`` is a comma list of case-insensitive tokens: ``close`` anywhere closes;
  HTTP/1.0 keeps the connection only for ``keep-alive``.

Limits: 16 KiB of head, 64 fields (431), the body limit given (413, refused from the head,
before the body is read). Errors are ``ParseError(status, message)``; the connection cannot be
used after one (the caller answers and closes).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Optional

MAX_HEAD_BYTES = 16384
MAX_HEADERS = 64
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
SINGLETONS = ("host", "content-length", "content-type", "x-exosite-cik", "x-exosite-vms", "origin",
              "transfer-encoding")

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"^(" + _TOKEN + rb") (\S+) (HTTP/[0-9]\.[0-9])$")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):(.*)", re.S)  # fullmatch; the value is stripped of SP/HTAB
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET_BAD = re.compile(rb"[^\x21-\x7e]")  # a URI: visible ASCII
_ABSOLUTE = re.compile(rb"^https?://[^/?#]*", re.I)


class ParseError(Exception):
    """A request gmq refuses; ``status`` is the answer (then the connection is closed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    target: str
    headers: Dict[str, str]  # lower-case names
    body: bytes = b""
    version: str = "HTTP/1.1"
    keep_alive: bool = True


@dataclass
class _Head:
    request: Request
    length: int
    expects_continue: bool
    continued: bool = False


@dataclass
class RequestParser:
    """Requests out of the bytes of one connection: append to ``buffer``, call ``next_request()``."""

    buffer: bytearray = field(default_factory=bytearray)
    _head: Optional[_Head] = None

    @property
    def receiving(self) -> bool:
        """A request has begun (its head, or its body, is not in yet)."""
        return self._head is not None or bool(self.buffer)

    def wants_continue(self) -> bool:
        """True once, when an HTTP/1.1 client waits for ``100 Continue`` before sending its body."""
        head = self._head
        if head is None or head.continued or not head.expects_continue or len(self.buffer) >= head.length:
            return False
        head.continued = True
        return True

    def next_request(self, max_body: int) -> Optional[Request]:
        """The next complete request, or None until more bytes arrive; raises ParseError."""
        buf = self.buffer
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ParseError(431, "request head too large")
                if _bare_lf(buf):
                    raise ParseError(400, "bare LF in the request head: lines end in CRLF")
                return None
            if end > MAX_HEAD_BYTES:
                raise ParseError(431, "request head too large")
            self._head = _parse_head(bytes(buf[:end]), max_body)
            del buf[:end + 4]
        head = self._head
        if len(buf) < head.length:
            return None
        request = head.request
        request.body = bytes(buf[:head.length])
        del buf[:head.length]
        self._head = None
        return request


def _bare_lf(data: bytearray) -> bool:
    """An LF not preceded by CR (counting is several times faster than a look-behind regex)."""
    return data.count(b"\n") != data.count(b"\r\n")


def _parse_head(raw: bytes, max_body: int) -> _Head:
    if raw.startswith(b"\r\n") or not raw:
        raise ParseError(400, "empty line before the request line")
    pairs = raw.count(b"\r\n")
    if raw.count(b"\n") != pairs or raw.count(b"\r") != pairs:
        raise ParseError(400, "bare CR or LF in the request head: lines end in CRLF")
    lines = raw.split(b"\r\n")
    m = _REQUEST_LINE.match(lines[0])
    if m is None:
        raise ParseError(400, "bad request line")
    method, target, version = m.group(1).decode("ascii"), m.group(2), m.group(3).decode("ascii")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ParseError(505, "HTTP/1.0 or HTTP/1.1 only")
    if _TARGET_BAD.search(target):
        raise ParseError(400, "bad request target")
    absolute = _ABSOLUTE.match(target)
    if absolute:
        target = target[absolute.end():] or b"/"
    if not target.startswith(b"/"):
        raise ParseError(400, "bad request target: origin-form (/path) or absolute-form (http://host/path)")
    if len(lines) - 1 > MAX_HEADERS:
        raise ParseError(431, "too many header fields")
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        f = _FIELD.fullmatch(line)
        if f is None:
            raise ParseError(400, "bad header line" if line[:1] not in (b" ", b"\t") else "obsolete line folding")
        value = f.group(2).strip(b" \t")
        if _BAD_VALUE.search(value):
            raise ParseError(400, "control character in a header value")
        name = f.group(1).decode("ascii").lower()
        text = value.decode("iso-8859-1")
        if name in headers:
            if name in SINGLETONS:
                raise ParseError(400, "more than one %s header" % name)
            text = headers[name] + ", " + text
        headers[name] = text
    if method not in METHODS:
        raise ParseError(501, "method not supported")
    http10 = version == "HTTP/1.0"
    if not http10 and "host" not in headers:
        raise ParseError(400, "HTTP/1.1 request without Host")
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep = "keep-alive" in connection if http10 else "close" not in connection
    length = _body_length(headers, http10, max_body)
    request = Request(method, target.decode("iso-8859-1"), headers, b"", version, keep)
    expects = not http10 and headers.get("expect", "").lower() == "100-continue"
    return _Head(request, length, expects)


def _body_length(headers: Dict[str, str], http10: bool, max_body: int) -> int:
    coding = headers.get("transfer-encoding")
    length_text = headers.get("content-length")
    if coding is not None:
        if length_text is not None or http10:
            raise ParseError(400, "Transfer-Encoding with Content-Length, or in HTTP/1.0")
        if coding.strip().lower() != "chunked":
            raise ParseError(501, "transfer coding not supported")
        raise ParseError(411, "chunked bodies are not supported; send Content-Length")
    if length_text is None:
        return 0  # no Content-Length and no Transfer-Encoding: no body (RFC 9112 6.3)
    if not (length_text.isascii() and length_text.isdigit()):  # "\xb2".isdigit() is true
        raise ParseError(400, "bad Content-Length")
    digits = length_text.lstrip("0")
    if len(digits) > 18:  # int() caps the digits it takes; this is over any limit anyway
        raise ParseError(413, "body larger than the limit of %d bytes" % max_body)
    length = int(digits or "0")
    if length > max_body:
        raise ParseError(413, "body of %d bytes; the limit is %d" % (length, max_body))
    return length
