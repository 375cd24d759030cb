"""Murano Device API client library for Gateway Engine.

``Device`` is the face (activate, write, read, long_poll, record, timestamp, content);
``errors`` holds every exception it raises; ``usage_report`` summarises the gateway's
network usage logged by every ``Device``. The form codec is the Device API contract's
(``device_api``), re-exported here; backoff is shared with gmq.
"""
import logging

from atomic_config.version import VERSION as __version__
from device_api import FormError, decode_alias_query, decode_form, decode_form_dict, encode_form

from . import errors
from .backoff import Backoff
from .device import Device, Download, PreparedRecord
from .errors import (
    Conflict, ContentMismatch, DeviceAPIError, Forbidden, NetworkError, NotActivated, NotFound, RequestError,
    ServerError, TLSError,
)
from .usage import UsageLog, UsageSnapshot, usage_report

logging.getLogger(__name__).addHandler(logging.NullHandler())  # the application decides where logs go

__all__ = [
    "Backoff", "Conflict", "ContentMismatch", "Device", "DeviceAPIError", "Download", "Forbidden", "FormError",
    "NetworkError", "NotActivated", "NotFound", "PreparedRecord", "RequestError", "ServerError", "TLSError", "UsageLog",
    "UsageSnapshot", "__version__", "decode_alias_query", "decode_form", "decode_form_dict", "encode_form", "errors",
    "usage_report",
]
