"""Every exception the Device API client raises, in one place.

Callers branch on the class (re-activate on :class:`NotActivated`, back off on
:class:`NetworkError` and :class:`ServerError`, give up on :class:`RequestError`);
``status`` and ``body`` keep what the server said for logs.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from device_api import FormError, decode_form

BODY_LIMIT = 512


class DeviceAPIError(Exception):
    """A Device API call failed. ``status`` is the HTTP status (None: no response)."""

    def __init__(self, message: str, status: Optional[int] = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body[:BODY_LIMIT]


class NotActivated(DeviceAPIError):
    """No token yet, or the server rejected it (401); the token has been dropped."""


class Forbidden(DeviceAPIError):
    """403: e.g. the device is not in the product, or a bad vendor/model."""


class NotFound(DeviceAPIError):
    """404: unknown identity on activation, unknown content or alias."""


class Conflict(DeviceAPIError):
    """409: already activated, or record timestamps that clash.

    ``conflicts`` maps each alias to the clashing timestamps of a record 409 body
    (``alias=ts1,ts2&...``); it is empty for other 409s.
    """

    def __init__(self, message: str, status: Optional[int] = 409, body: str = "") -> None:
        super().__init__(message, status, body)
        self.conflicts = parse_conflicts(body)


class RequestError(DeviceAPIError):
    """Another 4xx: the request itself is wrong; retrying it will not help."""


class ServerError(DeviceAPIError):
    """5xx: the server failed; retry later."""


class NetworkError(DeviceAPIError):
    """No usable answer: connection refused, DNS, timeout, a body cut short."""


class TLSError(NetworkError):
    """The TLS handshake failed (certificate not trusted, wrong host...): never retried in plaintext."""


class ContentMismatch(DeviceAPIError):
    """A downloaded file's size or sha256 differs from what was expected; the partial file is removed."""


def parse_conflicts(body: str) -> Dict[str, List[str]]:
    """``alias=ts1,ts2&alias2=ts3`` -> ``{alias: [ts1, ts2], alias2: [ts3]}`` (lenient)."""
    conflicts: Dict[str, List[str]] = {}
    try:
        pairs = decode_form(body)
    except FormError:
        return conflicts
    for alias, stamps in pairs:
        conflicts.setdefault(alias, []).extend(s.strip() for s in stamps.split(",") if s.strip())
    return conflicts


def error_for_status(status: int, body: str, what: str) -> DeviceAPIError:
    """The exception for an unexpected HTTP ``status`` answering request ``what``."""
    text = body.strip().splitlines()[0][:200] if body.strip() else ""
    message = "%s: HTTP %d%s" % (what, status, (" " + text) if text else "")
    if status == 401:
        return NotActivated(message, status, body)
    if status == 403:
        return Forbidden(message, status, body)
    if status == 404:
        return NotFound(message, status, body)
    if status == 409:
        return Conflict(message, status, body)
    if 400 <= status < 500:
        return RequestError(message, status, body)
    if status >= 500:
        return ServerError(message, status, body)
    return DeviceAPIError(message, status, body)
