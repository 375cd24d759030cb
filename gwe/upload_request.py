"""What an upload may be: the ``[upload]`` settings of Engine.config and the checked ``upload_request``.

Pure: text in, a checked request (or :class:`UploadRequestError` with the reason) out. The
cloud writes ``{"id", "files": [globs], "max_bytes"?, "compress"?, "url"?, "method"?}``;
every field is checked before anything is read from disk.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from atomic_config import GwePaths, gwe_paths, read_config

log = logging.getLogger(__name__)

SECTION = "upload"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_PATTERNS = 64
MAX_PATTERN = 1024
KEYS = ("id", "files", "max_bytes", "compress", "url", "method")
_WINDOW = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)-([01]?\d|2[0-3]):([0-5]\d)$")


class UploadRequestError(ValueError):
    """The request cannot be carried out as asked; the message says why (for upload_status)."""


@dataclass(frozen=True)
class UploadSettings:
    roots: Tuple[str, ...] = ()          # allowed besides $GWE_HOME/var/log/gwe
    max_bytes: int = 64 * 1024 * 1024    # the largest archive; a request may ask for less, never more
    piece_bytes: int = 1024 * 1024       # bytes per acknowledged piece (resume granularity)
    max_rate: int = 0                    # bytes per second; 0 = no limit
    status_interval: float = 5.0         # seconds between "uploading" statuses
    retry_max: float = 300.0             # longest wait between attempts, seconds
    give_up_after: float = 86400.0       # seconds of failed attempts before the upload is failed
    max_pending: int = 8                 # uploads waiting at once; more are refused
    schedule_interval: float = 0.0       # seconds between scheduled uploads; 0 = none
    schedule_window: str = ""            # "HH:MM-HH:MM" local time (may wrap midnight); empty = any time
    schedule_files: Tuple[str, ...] = ("*.log",)

    def window(self) -> Optional[Tuple[int, int]]:
        """(start, end) in minutes after midnight, or None for any time."""
        return parse_window(self.schedule_window)


@dataclass(frozen=True)
class UploadRequest:
    id: str
    patterns: Tuple[str, ...]
    max_bytes: int
    compress: bool = True
    url: Optional[str] = None
    method: str = "PUT"
    trigger: str = "request"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_window(text: str) -> Optional[Tuple[int, int]]:
    if not text:
        return None
    match = _WINDOW.match(text.replace(" ", ""))
    if not match:
        raise ValueError("schedule_window must be HH:MM-HH:MM, not %r" % text)
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    return h1 * 60 + m1, h2 * 60 + m2


def _split(text: str) -> Tuple[str, ...]:
    return tuple(p for p in re.split(r"[\s,]+", text.strip()) if p)


def load_settings(paths: Optional[GwePaths] = None) -> UploadSettings:
    """Defaults overridden by ``[upload]`` in Engine.config; a bad value is logged and ignored."""
    paths = paths or gwe_paths()
    cfg = read_config(paths.engine_cfg)
    if not cfg.has_section(SECTION):
        return UploadSettings()
    values = {}
    for f in dataclasses.fields(UploadSettings):
        if not cfg.has_option(SECTION, f.name):
            continue
        raw = cfg.get(SECTION, f.name).strip()
        try:
            values[f.name] = _setting(f.name, raw, f.default)
        except ValueError as exc:
            log.warning("ignoring [upload] %s = %r in %s: %s", f.name, raw, paths.engine_cfg, exc)
    return UploadSettings(**values)


def _setting(name: str, raw: str, default: object) -> object:
    if name in ("roots", "schedule_files"):
        items = _split(raw)
        if name == "roots" and any(not os.path.isabs(r) for r in items):
            raise ValueError("roots must be absolute paths")
        return items
    if name == "schedule_window":
        parse_window(raw)
        return raw
    number = float(raw)
    if not number >= 0 or number == float("inf"):
        raise ValueError("a finite number, 0 or more")
    if isinstance(default, int):
        if number < (0 if name == "max_rate" else 1):
            raise ValueError("at least 1")
        return int(number)
    return number


def parse_upload_request(raw: str, settings: UploadSettings) -> UploadRequest:
    """The request in ``raw`` (the ``upload_request`` dataport), checked; UploadRequestError if bad."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise UploadRequestError("upload_request is not JSON: %s" % exc) from None
    if not isinstance(doc, dict):
        raise UploadRequestError('upload_request must be {"id": ..., "files": [...]}')
    return check_request(doc, settings)


def request_id(doc: object) -> Optional[str]:
    """The request's id if it has a usable one (so even a refusal names what it refuses)."""
    value = doc.get("id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and ID_RE.match(value) else None


def check_request(doc: dict, settings: UploadSettings, trigger: str = "request") -> UploadRequest:
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise UploadRequestError("unknown field(s) %s; allowed: %s" % (", ".join(unknown)[:200], ", ".join(KEYS)))
    rid = doc.get("id")
    if not isinstance(rid, str) or not ID_RE.match(rid):
        raise UploadRequestError("id must be 1-64 letters, digits, '.', '_' or '-'")
    files = doc.get("files")
    if not isinstance(files, list) or not files or len(files) > MAX_PATTERNS:
        raise UploadRequestError("files must be a list of 1 to %d paths or globs" % MAX_PATTERNS)
    for pattern in files:
        check_pattern(pattern)
    max_bytes = doc.get("max_bytes", settings.max_bytes)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise UploadRequestError("max_bytes must be a positive integer")
    if max_bytes > settings.max_bytes:
        raise UploadRequestError("max_bytes %d is over this gateway's cap of %d bytes ([upload] max_bytes)"
                                 % (max_bytes, settings.max_bytes))
    compress = doc.get("compress", True)
    if not isinstance(compress, bool):
        raise UploadRequestError("compress must be true or false")
    url = doc.get("url")
    if url is not None:
        from device_client.upload import check_upload_url

        if not isinstance(url, str):
            raise UploadRequestError("url must be a string")
        try:
            check_upload_url(url)
        except ValueError as exc:
            raise UploadRequestError(str(exc)) from None
    method = doc.get("method", "PUT")
    if method not in ("PUT", "POST") or (method != "PUT" and url is None):
        raise UploadRequestError("method must be PUT or POST, and only with a url")
    return UploadRequest(rid, tuple(files), max_bytes, compress, url, method, trigger)


def check_pattern(pattern: object) -> str:
    """A path or glob that names nothing outside its root by itself: no ``..``, no control characters."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
        raise UploadRequestError("each file must be a path or glob of 1 to %d characters" % MAX_PATTERN)
    if any(ord(c) < 32 or ord(c) == 127 for c in pattern):
        raise UploadRequestError("file %r contains control characters" % pattern[:80])
    if ".." in pattern.replace("\\", "/").split("/"):
        raise UploadRequestError("file %r: '..' is not allowed" % pattern[:80])
    return pattern


@dataclass
class Roots:
    """The directories an upload may read, resolved (symlinks followed) once."""

    paths: List[str] = field(default_factory=list)

    @classmethod
    def for_gateway(cls, gwe: GwePaths, settings: UploadSettings) -> "Roots":
        return cls([os.path.realpath(p) for p in (gwe.log,) + tuple(settings.roots)])

    def holding(self, real_path: str) -> Optional[str]:
        for root in self.paths:
            if real_path == root or real_path.startswith(root.rstrip(os.sep) + os.sep):
                return root
        return None
