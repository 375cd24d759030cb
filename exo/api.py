"""``ExositeAPI``: the original device-client's Device API class, as a thin layer over ``device_client``.

Each call returns one of :mod:`exo.handlers` (``.success``, ``.code``, ``.body``...) instead of
raising for what the server or the network said, as the original did; bad arguments (no alias,
``None`` as a value) raise ``ValueError`` before anything is sent. Requests are made by
``device_client.Device`` and so logged in the gateway's usage log, under the app's name
(``GWE_APP_NAME``, which otau gives every app) or else the user agent.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, TypeVar, Union
from urllib.parse import urlsplit

from device_client import Device as DeviceClient, errors
from device_client.device import __version__ as CLIENT_VERSION

from .handlers import Http_ReadWriteCodes, ReadHandler, ReadWriteHandler, RecordHandler, Requests_Response, WriteHandler

log = logging.getLogger(__name__)

DEFAULT_LONG_POLL_MS = 30_000
NOT_SENT = "not activated (no CIK): nothing was sent"
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RESERVED_IDENTITIES = ("top_consumer", "dropped")
T = TypeVar("T")
Aliases = Union[str, Iterable[str]]


def base_url(url: Optional[str]) -> str:
    """The Device API base URL for ``url``: the original's ``host:port``, or a full URL.

    ``host:port`` means https, except on a loopback host (gmq, a local dev server), which is
    plain http unless the port is 443: loopback traffic never leaves the machine. None means
    the gateway's own Murano, as gwe uses it (Gateway.cfg ``host``, else
    ``https://<product_id>.m2.exosite.io``).
    """
    if url is None:
        from gwe.config import ConfigError, load_gateway_config

        try:
            return load_gateway_config().murano_url
        except ConfigError as exc:
            raise ValueError("no url given, and the gateway's Murano is not configured: %s" % exc) from None
    url = str(url).strip().rstrip("/")
    if "://" in url:
        return url
    parts = urlsplit("//" + url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or parts.path or parts.query:
        raise ValueError("url must be host:port (or a full http:// or https:// URL), got %r" % url)
    return "%s://%s" % ("http" if _is_loopback(parts.hostname) and port != 443 else "https", url)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def clean_cik(cik: Union[str, bytes, None]) -> str:
    """A CIK as apps hold it: bytes from ``gwe -C``'s output, ``''`` (gwe's empty value) or None mean none."""
    if cik is None:
        return ""
    if isinstance(cik, bytes):
        cik = cik.decode("ascii", errors="replace")
    cik = cik.strip()
    return "" if cik in ("''", '""') else cik


def app_identity(user_agent: str) -> str:
    """Who the usage report names for this app: its otau name, else its user agent."""
    name = os.environ.get("GWE_APP_NAME") or _CONTROL.sub("", user_agent)[:128]
    return "exo" if not name or name in _RESERVED_IDENTITIES else name


def _alias_list(aliases: Aliases) -> List[str]:
    return [aliases] if isinstance(aliases, str) else list(aliases)


def _form_text(values: Mapping[str, str]) -> str:
    """``alias=value&...`` with the values decoded: the original read handler's ``body``."""
    return "&".join("%s=%s" % item for item in values.items())


def _timestamp(ts: object) -> Union[int, float]:
    if isinstance(ts, str):
        text = ts.strip()
        return int(text) if text.isdigit() else float(text)
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        return ts
    raise ValueError("record timestamps are unix seconds, got %r" % (ts,))


class ExositeAPI:
    """The Device API for one CIK: ``ExositeAPI(cik=..., url='host:port')``.

    Without ``url``: the gateway's Murano (see :func:`base_url`). With an empty CIK (``gwe_cik()``
    before activation) every call answers 401 without sending anything. A 401 is reported in
    the handler and the same CIK is sent again next time, as the original did.
    """

    def __init__(self, cik: Union[str, bytes, None] = "", url: Optional[str] = None,
                 user_agent: Optional[str] = None) -> None:
        self._user_agent = user_agent or "ExositeAPI-%s" % CLIENT_VERSION
        self._identity = app_identity(self._user_agent)
        self._host = base_url(url)
        self._product_id: Optional[str] = None
        self._cik = clean_cik(cik)
        self._client: Optional[DeviceClient] = None

    def cik(self) -> str:
        return self._cik

    # -- what Device changes ----------------------------------------------------------------

    def _usable_cik(self) -> str:
        return self._cik

    def _rejected(self, cik: str) -> None:
        self._drop_client()

    # -- plumbing -----------------------------------------------------------------------------

    def _client_for(self, cik: str) -> DeviceClient:
        if self._client is None or self._client.token != (cik or None):
            self._drop_client()
            self._client = DeviceClient(self._host, product_id=self._product_id, token=cik or None,
                                        identity=self._identity, user_agent=self._user_agent)
        return self._client

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _call(self, operation: Callable[[DeviceClient], T]) -> Tuple[Optional[Requests_Response], Optional[T]]:
        """``(None, result)``, or ``(what went wrong, None)`` as a response for a handler."""
        cik = self._usable_cik()
        if not cik:
            return Requests_Response(Http_ReadWriteCodes.Unauthorized, NOT_SENT), None
        try:
            return None, operation(self._client_for(cik))
        except errors.NotActivated as exc:
            self._rejected(cik)
            return Requests_Response(Http_ReadWriteCodes.Unauthorized, exc.body), None
        except errors.NetworkError as exc:
            return Requests_Response(Http_ReadWriteCodes.Timeout, str(exc)), None
        except errors.DeviceAPIError as exc:
            return Requests_Response(exc.status or Http_ReadWriteCodes.Timeout, exc.body or str(exc)), None

    def _write(self, values: Dict[str, object]) -> WriteHandler:
        failed, _ = self._call(lambda client: client.write(values))
        return WriteHandler(failed or Requests_Response(Http_ReadWriteCodes.NoContent))

    @staticmethod
    def _read_answer(handler, failed: Optional[Requests_Response], values: Optional[Dict[str, str]],
                     last_modified: Optional[str] = None):
        if failed is not None:
            return handler(failed)
        code = Http_ReadWriteCodes.OK if values else Http_ReadWriteCodes.NoContent
        return handler(Requests_Response(code, _form_text(values or {})), values, last_modified)

    # -- the original's calls -----------------------------------------------------------------

    def http_write(self, dataport: str, value: object) -> WriteHandler:
        """Write one value (numbers as text, dicts and lists as JSON)."""
        return self._write({dataport: value})

    def http_write_multiple(self, write_dict: Mapping[str, object]) -> WriteHandler:
        """Write several values in one request."""
        return self._write(dict(write_dict))

    def http_read(self, read_list: Aliases) -> ReadHandler:
        """Read the current values of one alias or a list of them."""
        aliases = _alias_list(read_list)
        failed, values = self._call(lambda client: client.read(aliases))
        return self._read_answer(ReadHandler, failed, values)

    def http_read_write(self, read_list: Aliases, write_dict: Mapping[str, object]) -> ReadWriteHandler:
        """Write ``write_dict``, then read ``read_list``, in one request."""
        aliases = _alias_list(read_list)
        failed, values = self._call(lambda client: client.read_write(dict(write_dict), aliases))
        return self._read_answer(ReadWriteHandler, failed, values)

    def http_long_poll(self, dataport: Aliases, timeout_ms: Optional[int] = None,
                       modify_ts: Union[None, int, float, str] = None) -> ReadHandler:
        """Wait up to ``timeout_ms`` (default 30 s, at most 300 s) for a value set after ``modify_ts``.

        Code 200 with the values, or 304 ("Not modified") when the wait ran out; the handler's
        ``last_modified`` is what to pass as ``modify_ts`` next.
        """
        aliases = _alias_list(dataport)
        timeout = DEFAULT_LONG_POLL_MS if timeout_ms is None else int(timeout_ms)
        failed, polled = self._call(lambda client: client.long_poll(aliases, timeout_ms=timeout, since=modify_ts))
        if failed is not None:
            return ReadHandler(failed)
        values, last_modified = polled
        if not values:
            return ReadHandler(Requests_Response(Http_ReadWriteCodes.NotModified), last_modified=last_modified)
        return self._read_answer(ReadHandler, None, values, last_modified)

    _http_long_poll = http_long_poll  # the name Exosite's example apps call

    def http_record(self, record_dict: Mapping[str, Union[Mapping[object, object], Iterable[Tuple[object, object]]]]
                    ) -> RecordHandler:
        """Record values at given times: ``{alias: {unix_ts: value, ...}}`` (or lists of (ts, value))."""
        points = {alias: [(_timestamp(ts), value) for ts, value in
                          (series.items() if isinstance(series, Mapping) else series)]
                  for alias, series in record_dict.items()}
        failed, _ = self._call(lambda client: client.record(points))
        return RecordHandler(failed or Requests_Response(Http_ReadWriteCodes.NoContent))

    def exosite_timestamp(self) -> Optional[int]:
        """The server's clock in unix seconds; None when it could not be asked (logged)."""
        try:
            return self._client_for(self._usable_cik()).timestamp()
        except errors.DeviceAPIError as exc:
            log.warning("timestamp: %s", exc)
            return None

    def close(self) -> None:
        self._drop_client()
