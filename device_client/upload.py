"""Uploading a file from the device: resumable to murano_local, whole to any HTTP(S) URL.

Murano's Device API has no upload call. :func:`upload_resumable` speaks murano_local's
extension (``PUT /provision/upload``, see ``murano_local.device_uploads``): the file goes
in pieces, each acknowledged only once the server has it on disk, so a cut costs at most
one piece and the next call carries on from the server's offset. :func:`put_file` sends a
file in one request to a URL the cloud handed out (a presigned S3 PUT, a solution
endpoint): no token goes with it, and an interrupted transfer starts over.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from typing import BinaryIO, Callable, NamedTuple, Optional
from urllib.parse import urlsplit

from device_api import encode_form

from . import errors
from .hashing import hash_file

log = logging.getLogger(__name__)

UPLOAD_PATH = "/provision/upload"
SHA_HEADER = "X-Upload-SHA256"
OFFSET_HEADER = "Upload-Offset"
DEFAULT_PIECE = 1024 * 1024
READ_BLOCK = 64 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
Progress = Callable[[int, int], None]


class Upload(NamedTuple):
    name: str            # the content id the server gave it (murano_local), or the URL it went to
    size: int
    sha256: str
    resumed_from: int    # bytes the server already held when this call started


class Throttle:
    """Keeps a transfer at or under ``rate`` bytes per second (None: no limit) by sleeping."""

    def __init__(self, rate: Optional[float], clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (or None)")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._start: Optional[float] = None
        self._sent = 0

    def spend(self, n: int) -> None:
        if self.rate is None:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        self._sent += n
        ahead = self._sent / self.rate - (now - self._start)
        if ahead > 0:
            self._sleep(ahead)


class FileSlice:
    """``length`` bytes of ``f`` from ``start``, readable as a request body (``__len__`` gives its size)."""

    def __init__(self, f: BinaryIO, start: int, length: int, throttle: Throttle) -> None:
        self._f = f
        self._pos = start
        self._left = length
        self._length = length
        self._throttle = throttle

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        n = self._left if size is None or size < 0 else min(size, self._left, READ_BLOCK)
        if n <= 0:
            return b""
        self._f.seek(self._pos)
        data = self._f.read(n)
        if len(data) != n:
            raise OSError("%s shrank while being uploaded" % getattr(self._f, "name", "the file"))
        self._pos += n
        self._left -= n
        self._throttle.spend(n)
        return data


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    hash_file(path, os.path.getsize(path), digest)
    return digest.hexdigest()


def upload_resumable(device, name: str, path: str, sha256: Optional[str] = None,
                     content_type: str = "application/octet-stream", progress: Optional[Progress] = None,
                     piece_bytes: int = DEFAULT_PIECE, max_rate: Optional[float] = None) -> Upload:
    """Upload ``path`` as ``name`` through ``device`` (murano_local's extension; see the module doc).

    Continues from what the server already holds. ``progress(done, total)`` is called with
    the bytes the server has acknowledged. A cut raises :class:`~errors.NetworkError` (call
    again to resume); a checksum the server does not confirm twice raises
    :class:`~errors.ContentMismatch`.
    """
    if piece_bytes < 1:
        raise ValueError("piece_bytes must be at least 1")
    size = os.path.getsize(path)
    sha256 = (sha256 or file_sha256(path)).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError("sha256 must be 64 hex digits")
    headers = {SHA_HEADER: sha256, "Content-Type": content_type}
    target = UPLOAD_PATH + "?" + encode_form([("id", name)])
    throttle = Throttle(max_rate)

    def send(content_range: str, body: object) -> tuple:
        return device._call(lambda token: device.transport.send_file(
            token, "PUT", target, dict(headers, **{"Content-Range": content_range}), body,
            (200, 201, 202, 409), name))

    query = "bytes */%d" % size
    status, _text, answer = send(query, b"")
    offset = resumed_from = _offset(answer, size)
    restarted = retried = False
    refusals = 0
    with open(path, "rb") as f:
        while status not in (200, 201):
            if progress is not None:
                progress(offset, size)
            n = min(piece_bytes, size - offset)
            try:
                status, _text, answer = send("bytes %d-%d/%d" % (offset, offset + n - 1, size),
                                             FileSlice(f, offset, n, throttle))
            except errors.NetworkError:
                if retried:
                    raise
                retried = True  # a kept-alive connection the server closed: ask where to go on, once
                status, _text, answer = send(query, b"")
            except errors.RequestError as exc:
                if exc.status != 422 or restarted:
                    raise
                restarted = True  # the server dropped a file whose sha256 did not match: once more from 0
                log.warning("upload %s: %s; sending it again from the start", name, exc)
                status, _text, answer = send(query, b"")
            else:
                retried = False
            refusals = refusals + 1 if status == 409 else 0
            if refusals > 3:
                raise errors.DeviceAPIError("upload %s: the server keeps refusing the offset it names" % name, 409)
            offset = _offset(answer, size)
    if progress is not None:
        progress(size, size)
    try:
        stored = json.loads(_text).get("id") or name
    except (ValueError, AttributeError):
        stored = name
    return Upload(stored, size, sha256, resumed_from)


def _offset(headers, size: int) -> int:
    raw = headers.get(OFFSET_HEADER, "")
    if not raw.isdigit() or int(raw) > size:
        raise errors.DeviceAPIError("upload: bad %s %r from the server" % (OFFSET_HEADER, raw[:40]), None, "")
    return int(raw)


def check_upload_url(url: str) -> str:
    """``https://...``, or ``http://`` to loopback only (the file may hold secrets: no plaintext links)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("upload URL must be http(s)://host/...")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError("upload URL must be https:// (http:// only to this machine)")
    if any(ord(c) < 33 for c in url):
        raise ValueError("upload URL must not contain spaces or control characters")
    return url


def put_file(url: str, path: str, method: str = "PUT", content_type: str = "application/octet-stream",
             max_rate: Optional[float] = None, verify: bool = True, ca_file: Optional[str] = None,
             identity: str = "gwe", timeout: float = 60.0, usage_db=None) -> Upload:
    """Send ``path`` in one ``method`` (PUT or POST) request to ``url``; 2xx means done.

    No Device token is sent. Failures raise the :mod:`~device_client.errors` of the status
    (or :class:`~errors.NetworkError`); the transfer is metered in the usage log like any request.
    """
    from .transport_http import HttpTransport  # requests: only when used
    from .usage import UsageLog

    check_upload_url(url)
    if method not in ("PUT", "POST"):
        raise ValueError("method must be PUT or POST")
    parts = urlsplit(url)
    size = os.path.getsize(path)
    sha256 = file_sha256(path)
    usage = None if usage_db is False else UsageLog(usage_db)
    transport = HttpTransport("%s://%s" % (parts.scheme, parts.netloc), verify=(ca_file or True) if verify else False,
                              connect_timeout=min(timeout, 10.0), read_timeout=timeout, usage=usage,
                              identity=identity)
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    try:
        with open(path, "rb") as f:
            transport.send_file(None, method, target, {"Content-Type": content_type}, FileSlice(f, 0, size,
                                Throttle(max_rate)), (200, 201, 202, 204), parts.hostname or "url")
    finally:
        transport.close()
        if usage is not None:
            usage.close()
    return Upload(url, size, sha256, 0)
