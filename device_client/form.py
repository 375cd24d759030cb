"""The Device API's form codec, shared by the client, gmq and murano_local.

Bodies are ``application/x-www-form-urlencoded``. Exosite's own client sends values
unescaped (``data_in={"some": "json data"}``), so decoding is lenient: a value holding
characters that form encoding never leaves bare (space, quotes, braces...) is taken
raw, and a piece without ``=`` after such a value is rejoined with ``&``.
"""
from __future__ import annotations

import re
from typing import Iterable, List, Mapping, Tuple, Union
from urllib.parse import quote_plus, unquote_plus

Pairs = List[Tuple[str, str]]

_ENCODED = re.compile(r"^[A-Za-z0-9_.\-~*+%]*$")


class FormError(ValueError):
    """A body or query that cannot be decoded."""


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


def _unquote(text: str) -> str:
    if _ENCODED.match(text):
        return unquote_plus(text, errors="strict")
    return text


def decode_form(body: Union[str, bytes]) -> Pairs:
    """Decode a form body into ordered ``(key, value)`` pairs (duplicates kept)."""
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
            value = _unquote(value)
        except UnicodeDecodeError as exc:
            raise FormError("percent-encoding is not UTF-8") from exc
        if key == "":
            raise FormError("form field with an empty name")
        pairs.append((key, value))
    return pairs


def decode_form_dict(body: Union[str, bytes]) -> dict:
    """Decode a form body into a dict (a repeated key keeps its last value)."""
    return dict(decode_form(body))


def decode_alias_query(query: str) -> List[str]:
    """The aliases of a read query ``a&b&c`` (``a=`` is tolerated), in order, without repeats."""
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
