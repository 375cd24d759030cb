"""The Murano Device API contract: paths, what a request may hold, the form codec, size limits.

The one home of every rule that the client (``device_client``), the queue (``gmq``) and the
local cloud (``murano_local``) must agree on: gmq answers 204 only for what this module
accepts, so a 204 from gmq means "Murano will take it" as well as "it is on disk". It
imports nothing of the suite, so every part can depend on it and it on none of them.
Where real Murano's rule is not known (``reference/murano-device-api.md``), the choice is
ours and ``docs/device_api.md`` says so.

Errors carry the HTTP status Murano answers them with (``ContractError.status``).
"""
from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote_plus, unquote, unquote_plus

# -- paths and headers ---------------------------------------------------------------------
ACTIVATE_PATH = "/provision/activate"
ALIAS_PATH = "/onep:v1/stack/alias"            # write (POST), read and long poll (GET), hybrid (POST ?a&b)
RECORD_PATH = "/onep:v1/stack/record"          # alias=<a>&<ts>=<v>...
TIMESTAMP_PATH = "/timestamp"
CONTENT_PATH = "/provision/download"
TOKEN_HEADER = "X-Exosite-CIK"
FORM_TYPE = "application/x-www-form-urlencoded"
FORM_CONTENT_TYPE = FORM_TYPE + "; charset=utf-8"

# -- limits ----------------------------------------------------------------------------------
MAX_VALUE_BYTES = 1024 * 1024      # one value, UTF-8 [C: Murano's MQTT docs]; more is 413
MAX_ALIAS_CHARS = 256              # [our choice: Murano's is unknown]
MAX_IDENTITY_CHARS = 256           # [our choice]
MAX_VALUES_PER_REQUEST = 10_000    # values one request applies [our choice]: bounds its transaction; more is 413
MAX_FORM_FIELDS = 2 * MAX_VALUES_PER_REQUEST  # '&'-separated fields of a body (a record has an alias= per point)
MAX_READ_ALIASES = 1_000           # aliases one read or long poll names [our choice]
MAX_BODY_BYTES = 8 * 1024 * 1024   # one request body [our choice]; more is 413
MAX_LONG_POLL_MS = 300_000         # Request-Timeout cap [C]
SECONDS_LIMIT = 10 ** 11           # a timestamp below it is Unix seconds, at or above it microseconds [I]
MAX_TIMESTAMP_US = 10 ** 17        # (year 5138) larger is 400
MAX_TIMESTAMP_CHARS = 32
TOKEN_LENGTH = 40                  # what Murano issues [C]

_ALIAS = re.compile(r"^[^.$\x00-\x1f\x7f]+$")   # Murano: ^[^.$]+$ [C]; control characters: our choice
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN = re.compile(r"^[A-Za-z0-9]{20,64}$")   # Murano's 40, old One Platform CIKs, a margin either side
_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]{1,2})?$")
_ENCODED = re.compile(r"^[A-Za-z0-9_.\-~*+%]*$")

Pairs = List[Tuple[str, str]]
Point = Tuple[str, int, str]  # alias, timestamp in µs, value


class ContractError(ValueError):
    """A request Murano refuses; ``status`` is its answer."""

    status = 400


class Invalid(ContractError):
    """Malformed: a bad alias, identity, timestamp or form (400)."""


class FormError(Invalid):
    """A body or query that cannot be decoded (400)."""


class TooLarge(ContractError):
    """Over a size limit: a value, or too many values in one request (413)."""

    status = 413


# -- identities, aliases, values, tokens ----------------------------------------------------
def check_alias(alias: object) -> str:
    """An alias Murano accepts: 1-256 characters, no ``.`` or ``$``, no control characters."""
    if not isinstance(alias, str) or not _ALIAS.match(alias) or len(alias) > MAX_ALIAS_CHARS:
        raise Invalid("invalid alias %r: 1-%d characters, no '.', '$' or control characters"
                      % (str(alias)[:40], MAX_ALIAS_CHARS))
    return alias


def check_identity(identity: object) -> str:
    """A device identity (serial): 1-256 characters, no control characters."""
    if not isinstance(identity, str) or not identity or len(identity) > MAX_IDENTITY_CHARS \
            or _CONTROL.search(identity):
        raise Invalid("invalid identity: 1-%d characters, no control characters" % MAX_IDENTITY_CHARS)
    return identity


def check_value(value: str, alias: str = "") -> str:
    """A value of at most 1 MiB in UTF-8 (``TooLarge`` above)."""
    if len(value) * 4 > MAX_VALUE_BYTES and len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise TooLarge("value%s larger than %d bytes" % (" of %r" % alias[:40] if alias else "", MAX_VALUE_BYTES))
    return value


def activation_identity(fields: Mapping[str, str]) -> str:
    """The identity an activation form names: ``id=`` (Murano's form) or ``sn=`` (with vendor and model)."""
    identity = fields.get("id", fields.get("sn"))
    if identity is None:
        raise Invalid("activation needs id=<identity> or vendor, model and sn")
    return check_identity(identity)


def check_count(values: Sequence[object]) -> None:
    """At most ``MAX_VALUES_PER_REQUEST`` values in one request (``TooLarge`` above)."""
    if len(values) > MAX_VALUES_PER_REQUEST:
        raise TooLarge("more than %d values in one request" % MAX_VALUES_PER_REQUEST)


def token_shaped(token: Optional[str]) -> bool:
    """Whether ``token`` can be a device token (CIK) at all; one that cannot is a 401."""
    return bool(token) and bool(_TOKEN.match(token))


# -- timestamps ------------------------------------------------------------------------------
def timestamp_us(ts: Union[str, int, float, Decimal]) -> int:
    """A record timestamp as integer microseconds.

    Unix seconds (int, float or decimal text, fraction kept to the µs) below ``SECONDS_LIMIT``,
    microseconds at or above it (what MQTT batches send). Negative, non-finite, non-numeric
    and past ``MAX_TIMESTAMP_US`` are ``Invalid``. Any time in the future is accepted: the
    only clock a gateway can check against is its own (see docs/device_api.md).
    """
    if isinstance(ts, str):
        text = ts.strip()
        if len(text) > MAX_TIMESTAMP_CHARS or not _DECIMAL.match(text):
            raise Invalid("bad timestamp %r: Unix seconds or microseconds expected" % ts[:40])
        number: Union[Decimal, int, float] = Decimal(text)
    elif isinstance(ts, bool) or not isinstance(ts, (int, float, Decimal)):
        raise Invalid("bad timestamp %r: a number expected" % (ts,))
    else:
        number = ts
        if isinstance(ts, float) and not math.isfinite(ts):
            raise Invalid("bad timestamp %r: a finite number expected" % ts)
        if isinstance(ts, Decimal) and not ts.is_finite():
            raise Invalid("bad timestamp %r: a finite number expected" % ts)
    if number < 0:
        raise Invalid("bad timestamp %s: negative" % number)
    try:
        if number >= SECONDS_LIMIT:
            us = int(number)
        elif isinstance(number, float):
            us = round(number * 1_000_000)  # 1554975272.470659 * 1e6 is ...658.8 in binary
        else:
            us = int(number * 1_000_000)  # exact for decimal text and ints; finer than 1 µs is cut
    except (InvalidOperation, OverflowError, ValueError):
        raise Invalid("bad timestamp %r" % (ts,)) from None
    if us >= MAX_TIMESTAMP_US:
        raise Invalid("timestamp %s out of range (microseconds below %d)" % (number, MAX_TIMESTAMP_US))
    return us


def format_timestamp(seconds: Union[int, float]) -> str:
    """Unix seconds as a record key: ints as they are, floats to the microsecond."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or \
            (isinstance(seconds, float) and not math.isfinite(seconds)) or seconds < 0:
        raise Invalid("record timestamps are Unix seconds (int or float), got %r" % (seconds,))
    if isinstance(seconds, int):
        return str(seconds)
    return ("%.6f" % seconds).rstrip("0").rstrip(".")


# -- request bodies ------------------------------------------------------------------------
def decode_write(pairs: Pairs) -> Pairs:
    """The ``alias=value`` pairs of a write, each checked (alias, then value)."""
    check_count(pairs)
    for alias, value in pairs:
        check_alias(alias)
        check_value(value, alias)
    if not pairs:
        raise Invalid("nothing to write")
    return pairs


def decode_record(pairs: Pairs, alias: Optional[str] = None) -> List[Point]:
    """The points of a record body ``alias=<a>&<ts>=<v>&...&alias=<b>&...``, checked in body order.

    ``alias`` given: the body of ``POST /onep:v1/stack/alias/<alias>``, ``<ts>=<v>&...`` only.
    """
    switches = alias is None
    if alias is not None:
        check_alias(alias)
    points: List[Point] = []
    for key, value in pairs:
        if switches and key == "alias":
            alias = check_alias(value)
            continue
        if alias is None:
            raise Invalid("record body must start with alias=<alias>")
        points.append((alias, timestamp_us(key), check_value(value, alias)))
    if not points:
        raise Invalid("nothing to record")
    check_count(points)
    return points


def alias_from_path(segment: str) -> str:
    """The alias of ``/onep:v1/stack/alias/<alias>``: percent-decoded (``+`` is a plus in a path)."""
    try:
        alias = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise Invalid("alias in the path is not UTF-8") from None
    return check_alias(alias)


# -- the form codec ------------------------------------------------------------------------
# Bodies are application/x-www-form-urlencoded. Exosite's own client sends values unescaped
# (``data_in={"some": "json data"}``), so decoding is lenient: a value holding characters that
# form encoding never leaves bare (space, quotes, braces...) is taken raw, and a piece
# without ``=`` after such a value is rejoined with ``&``.

def encode_form(pairs: Union[Mapping[str, object], Iterable[Tuple[str, object]]]) -> str:
    """Percent-encode ``alias=value`` pairs, keeping their order."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return "&".join("%s=%s" % (quote_plus(str(k)), quote_plus(_text(v))) for k, v in items)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _count_fields(body: Union[str, bytes], limit: int, what: str) -> None:
    """Counted before decoding: a body of a million tiny fields is refused before it takes memory."""
    if body.count(b"&" if isinstance(body, bytes) else "&") >= limit:
        raise TooLarge("more than %d %s in one request" % (limit, what))


def decode_form(body: Union[str, bytes], max_fields: int = MAX_FORM_FIELDS) -> Pairs:
    """Decode a form body into ordered ``(key, value)`` pairs (duplicates kept).

    More than ``max_fields`` ``&``-separated fields is ``TooLarge``, whatever they hold.
    """
    _count_fields(body, max_fields, "form fields")
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormError("body is not UTF-8") from exc
    pairs: Pairs = []
    raw_tail = False
    for piece in body.split("&"):
        if "=" not in piece:
            if raw_tail and pairs:
                key, value = pairs[-1]
                pairs[-1] = (key, value + "&" + piece)
                continue
            if piece.strip() == "":
                continue
            raise FormError("form field without '=': %r" % piece[:40])
        key, value = piece.split("=", 1)
        try:
            key = unquote_plus(key, errors="strict")
            raw_tail = not _ENCODED.match(value)
            if not raw_tail:
                value = unquote_plus(value, errors="strict")
        except UnicodeDecodeError as exc:
            raise FormError("percent-encoding is not UTF-8") from exc
        if key == "":
            raise FormError("form field with an empty name")
        pairs.append((key, value))
    return pairs


def decode_form_dict(body: Union[str, bytes]) -> dict:
    """Decode a form body into a dict (a repeated key keeps its last value)."""
    return dict(decode_form(body))


def decode_alias_query(query: str, max_aliases: int = MAX_READ_ALIASES) -> List[str]:
    """The aliases of a read query ``a&b&c`` (``a=`` is tolerated), in order, without repeats."""
    _count_fields(query, max_aliases, "aliases")
    aliases: List[str] = []
    for piece in query.split("&"):
        name = piece.split("=", 1)[0]
        try:
            name = unquote_plus(name, errors="strict")
        except UnicodeDecodeError as exc:
            raise FormError("percent-encoding is not UTF-8") from exc
        if name and name not in aliases:
            aliases.append(name)
    return aliases


def form_type_ok(content_type: Optional[str]) -> bool:
    """A Device API body is form-encoded: no Content-Type, or the form type (else 415)."""
    if not content_type:
        return True
    return content_type.split(";", 1)[0].strip().lower() == FORM_TYPE
