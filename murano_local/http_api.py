"""The HTTP Device API (murano-device-api.md §2): activate, write, read, long poll, record, timestamp, content."""
from __future__ import annotations

import email.utils
import math
import time
from typing import List, Optional, Tuple, Union
from urllib.parse import parse_qsl

from device_api import (
    ALIAS_PATH, FORM_CONTENT_TYPE, MAX_LONG_POLL_MS, RECORD_PATH, FormError, activation_identity, alias_from_path,
    decode_alias_query, decode_form, decode_record, encode_form, form_type_ok,
)

from .service import Murano
from .store import ceil_second_us
from .wire import HttpError, LongPoll, Request, Response, text



def form_response(pairs: List[Tuple[str, str]], headers: Optional[List[Tuple[str, str]]] = None) -> Response:
    if not pairs:
        return Response(204)
    return Response(200, encode_form(pairs).encode("utf-8"), FORM_CONTENT_TYPE, headers or [])


def http_date(timestamp_us: int) -> str:
    return email.utils.formatdate(timestamp_us // 1_000_000, usegmt=True)


def parse_if_modified_since(value: Optional[str]) -> Optional[int]:
    """Unix seconds (int or float) or an HTTP-date, as microseconds."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            raise HttpError(400, "If-Modified-Since is neither seconds nor an HTTP-date")
        if parsed is None:
            raise HttpError(400, "If-Modified-Since is neither seconds nor an HTTP-date")
        seconds = parsed.timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        raise HttpError(400, "If-Modified-Since out of range")
    return int(seconds * 1_000_000)


def parse_request_timeout(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    try:
        ms = float(value.strip())
    except ValueError:
        raise HttpError(400, "Request-Timeout must be milliseconds")
    if not math.isfinite(ms) or ms < 0:
        raise HttpError(400, "Request-Timeout out of range")
    return int(ms)


class DeviceApi:
    def __init__(self, murano: Murano) -> None:
        self.murano = murano

    def handle(self, req: Request) -> Union[Response, LongPoll, None]:
        path, method = req.path, req.method
        if path == "/timestamp" and method in ("GET", "HEAD"):
            return text(200, str(int(time.time())))
        if path == "/provision/activate":
            return self._only(req, "POST") or self.activate(req)
        if path == "/provision/download":
            return self._only(req, "GET") or self.content(req)
        if path == ALIAS_PATH:
            if method == "GET":
                return self.read(req)
            return self._only(req, "POST") or self.write(req)
        if path == RECORD_PATH:
            return self._only(req, "POST") or self.record(req)
        if path.startswith(ALIAS_PATH + "/"):
            return self._only(req, "POST") or self.record_alias(req, path[len(ALIAS_PATH) + 1:])
        return None

    @staticmethod
    def _only(req: Request, method: str) -> Optional[Response]:
        if req.method != method:
            raise HttpError(405, "method not allowed", [("Allow", method)])
        return None

    # -- helpers -------------------------------------------------------------------------
    def _pid(self, req: Request) -> str:
        return self.murano.product_for_host(req.header("Host"))

    def _device(self, req: Request) -> Tuple[str, str]:
        pid = self._pid(req)
        return pid, self.murano.authenticate(pid, req.header("X-Exosite-CIK"))

    @staticmethod
    def _form(req: Request) -> List[Tuple[str, str]]:
        if not form_type_ok(req.header("Content-Type")):
            raise HttpError(415, "Content-Type must be application/x-www-form-urlencoded")
        try:
            return decode_form(req.body())  # more than MAX_FORM_FIELDS fields: TooLarge, 413
        except FormError as exc:
            raise HttpError(400, "malformed form body: %s" % exc)

    @staticmethod
    def _aliases(query: str) -> List[str]:
        try:
            return decode_alias_query(query)
        except FormError as exc:
            raise HttpError(400, "malformed alias list: %s" % exc)

    # -- endpoints -----------------------------------------------------------------------
    def activate(self, req: Request) -> Response:
        identity = activation_identity(dict(self._form(req)))
        token = self.murano.activate(self._pid(req), identity)
        return text(200, token)

    def write(self, req: Request) -> Response:
        pid, identity = self._device(req)
        reads = self._aliases(req.query) if req.query else []
        values = self._form(req)
        if not values and not reads:
            raise HttpError(400, "nothing to write")
        if values:
            self.murano.write(pid, identity, values)
        if not reads:
            return Response(204)
        return form_response(self.murano.read(pid, identity, reads))

    def read(self, req: Request) -> Union[Response, LongPoll]:
        pid, identity = self._device(req)
        aliases = self._aliases(req.query)
        if not aliases:
            raise HttpError(400, "no alias to read")
        timeout_ms = parse_request_timeout(req.header("Request-Timeout"))
        since_us = parse_if_modified_since(req.header("If-Modified-Since"))
        if timeout_ms is None:
            return form_response(self.murano.read(pid, identity, aliases))
        key = (pid, identity)
        deadline = time.monotonic() + min(timeout_ms, MAX_LONG_POLL_MS) / 1000.0

        def check() -> Optional[Response]:
            found = self.murano.poll(pid, identity, aliases, since_us)
            if not found:
                return None
            newest = ceil_second_us(max(ts for _a, _v, ts in found))  # what the store dated the answer
            return form_response([(a, v) for a, v, _ts in found], [("Last-Modified", http_date(newest))])

        version = self.murano.hub.version(key)
        return check() or LongPoll(key, deadline, check, version)

    def record(self, req: Request) -> Response:
        pid, identity = self._device(req)
        self.murano.record(pid, identity, decode_record(self._form(req)))
        return Response(204)

    def record_alias(self, req: Request, raw_alias: str) -> Response:
        pid, identity = self._device(req)
        self.murano.record(pid, identity, decode_record(self._form(req), alias_from_path(raw_alias)))
        return Response(204)

    def content(self, req: Request) -> Response:
        pid, identity = self._device(req)
        try:
            params = dict(parse_qsl(req.query, keep_blank_values=True, strict_parsing=False, errors="strict"))
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "malformed query")
        name = params.get("id")
        if name is None:
            names = [c["name"] for c in self.murano.content.list(pid, visible_to=identity)]
            return Response(200, "".join(n + "\n" for n in names).encode("utf-8"), "text/csv; charset=utf-8")
        if params.get("info", "").lower() == "true":
            info = self.murano.content.info(pid, name, visible_to=identity)
            line = "%s,%d,%d,%s" % (info["type"], info["size"], info["updated"], info["meta"])
            return text(200, line)
        return self._download(req, pid, name, identity)

    def _download(self, req: Request, pid: str, name: str, identity: str) -> Response:
        info, blob = self.murano.content.open(pid, name, visible_to=identity)
        if blob is None:
            raise HttpError(404, "content not found")
        size = info["size"]
        headers = [("Accept-Ranges", "bytes")]
        byte_range = parse_range(req.header("Range"), size)
        if byte_range is None:
            return Response(200, content_type=info["type"], headers=headers, file=blob, offset=0, length=size)
        if byte_range == "unsatisfiable":
            blob.close()
            raise HttpError(416, "range not satisfiable", [("Content-Range", "bytes */%d" % size)])
        start, end = byte_range
        headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end, size)))
        return Response(206, content_type=info["type"], headers=headers, file=blob, offset=start,
                        length=end - start + 1)


def parse_range(header: Optional[str], size: int):
    """One ``bytes=`` range as ``(start, end)`` inclusive, ``"unsatisfiable"``, or None (serve it all).

    Malformed or multi-part ranges are ignored, as RFC 7233 allows.
    """
    if not header:
        return None
    header = header.strip()
    if not header.lower().startswith("bytes=") or "," in header:
        return None
    spec = header[6:].strip()
    first, sep, last = spec.partition("-")
    if not sep:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                return "unsatisfiable"
            return (max(size - suffix, 0), size - 1) if size else "unsatisfiable"
        start = int(first)
        end = int(last) if last != "" else size - 1
    except ValueError:
        return None
    if start >= size:
        return "unsatisfiable"
    if end < start:
        return None
    return start, min(end, size - 1)
