"""Device uploads: a murano_local extension of the Device API for files a device sends up.

Murano's Device API has no upload call (content flows down only); a real deployment gives
the device a URL to upload to (e.g. a presigned S3 PUT from the solution). murano_local
offers a small resumable protocol instead, so that the whole story runs offline:

``PUT /provision/upload?id=<name>`` with ``X-Exosite-CIK``, ``X-Upload-SHA256: <hex of the
whole file>`` and ``Content-Range: bytes <first>-<last>/<total>`` carries one piece;
``Content-Range: bytes */<total>`` with an empty body asks how much has arrived. Answers:
``202`` + ``Upload-Offset: <bytes kept>`` (more to come), ``201`` + JSON once the last piece
made the file whole and its sha256 matched (``200`` for a repeat of a finished upload),
``409`` + ``Upload-Offset`` for a piece that does not start where the kept bytes end, ``422``
when the whole file's sha256 differs (the partial file is dropped: start again).

An offset is answered only after those bytes are fsynced and the offset is written, so a
crash of the server, or a cut of the network, costs at most the piece in flight. The file
becomes content ``upload/<identity>/<name>`` of the device's product with its sha256, listed
per device, and visible to that device and the operator only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from typing import BinaryIO, Dict, Optional, Tuple
from urllib.parse import parse_qsl, quote

from atomic_config import atomic_write

from .content import CHUNK, ContentArea, ContentError, check_name
from .store import NotFound, private_directory
from .wire import HttpError, Request, Response, json_response

log = logging.getLogger(__name__)

UPLOAD_PATH = "/provision/upload"
SHA_HEADER = "X-Upload-SHA256"
OFFSET_HEADER = "Upload-Offset"
DEFAULT_MAX_UPLOAD = 2 * 1024 ** 3
EXPIRE_AFTER_S = 7 * 86400  # a partial upload nobody resumed for a week is dropped at start
LOCK_WAIT_S = 10.0
_RANGE = re.compile(r"^bytes (?:(\d{1,15})-(\d{1,15})|\*)/(\d{1,15})$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def content_name(identity: str, name: str) -> str:
    """Where a device's upload lands in the content area (identity quoted: no commas, no slashes)."""
    return check_name("upload/%s/%s" % (quote(identity, safe=""), name))


@dataclass
class Partial:
    pid: str
    identity: str
    name: str
    total: int
    sha256: str
    content_type: str
    offset: int = 0
    started: float = 0.0


@dataclass
class Outcome:
    """What a piece left: ``offset`` kept so far, and the content item once the file is whole."""
    offset: int
    total: int
    item: Optional[dict] = None
    repeat: bool = False


class Mismatch(Exception):
    """The finished file's sha256 is not the announced one."""


class UploadArea:
    """Partial uploads under ``DIR/uploads`` (files named by a hash, never by a network name)."""

    def __init__(self, data_dir: str, content: ContentArea) -> None:
        self.directory = os.path.join(data_dir, "uploads")
        private_directory(self.directory)
        self.content = content
        self._locks: Dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._clean()

    # -- files ------------------------------------------------------------------------
    def _key(self, pid: str, identity: str, name: str) -> str:
        return hashlib.sha256(("%s\0%s\0%s" % (pid, identity, name)).encode("utf-8")).hexdigest()[:32]

    def _paths(self, key: str) -> Tuple[str, str]:
        base = os.path.join(self.directory, key)
        return base + ".part", base + ".json"

    def _load(self, key: str) -> Optional[Partial]:
        part, state = self._paths(key)
        try:
            with open(state, "rb") as f:
                partial = Partial(**json.loads(f.read().decode("utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            log.warning("dropping unreadable upload state %s: %s", state, exc)
            self._drop(key)
            return None
        try:
            size = os.path.getsize(part)
        except FileNotFoundError:
            size = 0
        if size < partial.offset:  # bytes acknowledged but gone: keep only what is there
            partial.offset = size
        return partial

    def _save(self, key: str, partial: Partial) -> None:
        atomic_write(self._paths(key)[1], json.dumps(asdict(partial), sort_keys=True), mode=0o600,
                     keep_previous=False)

    def _drop(self, key: str) -> None:
        for path in self._paths(key):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _clean(self) -> None:
        """At start: drop part files without state, state without part files, and expired partials."""
        now = time.time()
        entries = set(os.listdir(self.directory))
        for entry in entries:
            key, _, ext = entry.partition(".")
            if ext == "part" and key + ".json" not in entries:
                self._drop(key)
            elif ext == "json":
                partial = self._load(key)
                if partial is not None and now - partial.started > EXPIRE_AFTER_S:
                    log.info("dropping the partial upload %s of %s (not resumed for a week)", partial.name,
                             partial.identity)
                    self._drop(key)
            elif ext not in ("part", "json"):  # a temporary file of atomic_write
                try:
                    os.unlink(os.path.join(self.directory, entry))
                except OSError:
                    pass

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    # -- the protocol ---------------------------------------------------------------------
    def receive(self, pid: str, identity: str, name: str, first: Optional[int], total: int, sha256: str,
                content_type: str, stream: BinaryIO, length: int) -> Outcome:
        """Take one piece (``first`` None: a status query with no body) of an upload."""
        target = content_name(identity, name)
        key = self._key(pid, identity, name)
        lock = self._lock(key)
        if not lock.acquire(timeout=LOCK_WAIT_S):
            raise HttpError(503, "another piece of this upload is being received; try again", [("Retry-After", "5")])
        try:
            done = self._finished(pid, target, identity, total, sha256)
            if done is not None:
                return Outcome(total, total, done, repeat=True)
            partial = self._load(key)
            if partial is not None and (partial.total, partial.sha256) != (total, sha256):
                log.info("upload %s of %s restarted: another file under that name", name, identity)
                self._drop(key)
                partial = None
            offset = partial.offset if partial else 0
            if first is None:
                if total == 0:
                    partial = self._start(key, pid, identity, name, total, sha256, content_type)
                    return self._finish(key, partial, target)
                return Outcome(offset, total)
            if first != offset:
                raise HttpError(409, "the kept bytes end at %d; send from there" % offset,
                                [(OFFSET_HEADER, str(offset))])
            if partial is None:
                partial = self._start(key, pid, identity, name, total, sha256, content_type)
            self._append(key, partial, stream, length)
            if partial.offset < total:
                return Outcome(partial.offset, total)
            return self._finish(key, partial, target)
        finally:
            lock.release()

    def _finished(self, pid: str, target: str, identity: str, total: int, sha256: str) -> Optional[dict]:
        try:
            info = self.content.info(pid, target)
        except NotFound:
            return None
        if info.get("device") == identity and info.get("sha256") == sha256 and info["size"] == total:
            return info
        return None

    def _start(self, key: str, pid: str, identity: str, name: str, total: int, sha256: str,
               content_type: str) -> Partial:
        partial = Partial(pid, identity, name, total, sha256, content_type, 0, time.time())
        part = self._paths(key)[0]
        os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        self._save(key, partial)
        return partial

    def _append(self, key: str, partial: Partial, stream: BinaryIO, length: int) -> None:
        """Append the piece; whatever arrived is fsynced and counted, even when the body is cut short."""
        part = self._paths(key)[0]
        received = 0
        try:
            with open(part, "r+b") as out:
                out.seek(partial.offset)
                out.truncate()
                try:
                    while received < length:
                        chunk = stream.read(min(CHUNK, length - received))
                        if not chunk:
                            break
                        out.write(chunk)
                        received += len(chunk)
                finally:
                    out.flush()
                    os.fsync(out.fileno())
        finally:
            if received:
                partial.offset += received
                self._save(key, partial)
        if received < length:
            raise HttpError(400, "body ended after %d of %d bytes (kept: send from %d)"
                            % (received, length, partial.offset), [(OFFSET_HEADER, str(partial.offset))])

    def _finish(self, key: str, partial: Partial, target: str) -> Outcome:
        part = self._paths(key)[0]
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
        if digest.hexdigest() != partial.sha256:
            self._drop(key)
            raise Mismatch("sha256 of the %d bytes received is %s, not %s"
                           % (partial.total, digest.hexdigest(), partial.sha256))
        meta = json.dumps({"device": partial.identity, "sha256": partial.sha256, "name": partial.name},
                          sort_keys=True)
        item = self.content.adopt(partial.pid, target, part, partial.content_type, meta,
                                  (partial.identity, partial.sha256))
        self._drop(key)
        log.info("upload %s of %s complete: %d bytes, sha256 %s", partial.name, partial.identity, partial.total,
                 partial.sha256)
        return Outcome(partial.total, partial.total, item)


class DeviceUploadApi:
    """The HTTP face of :class:`UploadArea` (a front end of the server, like the Device API's)."""

    def __init__(self, murano, max_bytes: int = DEFAULT_MAX_UPLOAD) -> None:
        self.murano = murano
        self.max_bytes = max_bytes

    def handle(self, req: Request) -> Optional[Response]:
        if req.path != UPLOAD_PATH:
            return None
        if req.method != "PUT":
            raise HttpError(405, "method not allowed", [("Allow", "PUT")])
        pid = self.murano.product_for_host(req.header("Host"))
        identity = self.murano.authenticate(pid, req.header("X-Exosite-CIK"))
        name = self._name(req)
        first, last, total = self._range(req)
        if total > self.max_bytes:
            raise HttpError(413, "uploads are limited to %d bytes" % self.max_bytes)
        if first is None and req.length:
            raise HttpError(400, "a status query (bytes */total) has no body")
        if first is not None and (last < first or last >= total or req.length != last - first + 1):
            raise HttpError(400, "Content-Range and Content-Length disagree")
        sha256 = (req.header(SHA_HEADER) or "").strip().lower()
        if not _SHA256.match(sha256):
            raise HttpError(400, "%s must be the file's sha256 in hex" % SHA_HEADER)
        ctype = req.header("Content-Type") or "application/octet-stream"
        if "," in ctype or len(ctype) > 255:
            raise HttpError(400, "Content-Type must not contain a comma")
        req.consumed = True  # the body is read by receive() (or left unread and the connection closed)
        try:
            outcome = self.murano.uploads.receive(pid, identity, name, first, total, sha256, ctype, req.stream,
                                                  req.length)
        except Mismatch as exc:
            raise HttpError(422, str(exc), [(OFFSET_HEADER, "0")])
        except ContentError as exc:
            raise HttpError(400, str(exc))
        headers = [(OFFSET_HEADER, str(outcome.offset))]
        if outcome.item is None:
            resp = json_response(202, {"offset": outcome.offset, "size": outcome.total})
        else:
            resp = json_response(200 if outcome.repeat else 201, {
                "id": outcome.item["name"], "size": outcome.item["size"], "sha256": outcome.item["sha256"],
                "updated": outcome.item["updated"]})
        resp.headers.extend(headers)
        return resp

    @staticmethod
    def _name(req: Request) -> str:
        try:
            params = dict(parse_qsl(req.query, keep_blank_values=True, errors="strict"))
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "malformed query")
        name = params.get("id", "")
        if not name or "/" in name:
            raise HttpError(400, "id=<name> required (no slashes)")
        try:
            return check_name(name)
        except ContentError as exc:
            raise HttpError(400, str(exc))

    @staticmethod
    def _range(req: Request) -> Tuple[Optional[int], Optional[int], int]:
        match = _RANGE.match((req.header("Content-Range") or "").strip())
        if not match:
            raise HttpError(400, "Content-Range: bytes <first>-<last>/<total> or bytes */<total> required")
        first, last, total = match.groups()
        if first is None:
            return None, None, int(total)
        return int(first), int(last), int(total)
