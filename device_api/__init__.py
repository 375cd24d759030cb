"""The Murano Device API contract, shared by device_client, gmq and murano_local (docs/device_api.md).

A leaf: it imports nothing of the suite. Everything is in :mod:`device_api.contract`.
"""
from .contract import (
    ACTIVATE_PATH, ALIAS_PATH, CONTENT_PATH, MAX_BODY_BYTES, FORM_CONTENT_TYPE, FORM_TYPE, MAX_ALIAS_CHARS, MAX_IDENTITY_CHARS,
    MAX_FORM_FIELDS, MAX_LONG_POLL_MS, MAX_READ_ALIASES, MAX_TIMESTAMP_US, MAX_VALUE_BYTES, MAX_VALUES_PER_REQUEST, RECORD_PATH, SECONDS_LIMIT,
    TIMESTAMP_PATH, TOKEN_HEADER, TOKEN_LENGTH, ContractError, FormError, Invalid, Pairs, Point, TooLarge,
    activation_identity, alias_from_path, check_alias, check_count, check_identity, check_value, decode_alias_query, decode_form, decode_form_dict,
    decode_record, decode_write, encode_form, form_type_ok, format_timestamp, timestamp_us, token_shaped,
)

__all__ = [
    "ACTIVATE_PATH", "ALIAS_PATH", "CONTENT_PATH", "MAX_BODY_BYTES", "FORM_CONTENT_TYPE", "FORM_TYPE", "MAX_ALIAS_CHARS",
    "MAX_IDENTITY_CHARS", "MAX_FORM_FIELDS", "MAX_LONG_POLL_MS", "MAX_READ_ALIASES", "MAX_TIMESTAMP_US", "MAX_VALUE_BYTES", "MAX_VALUES_PER_REQUEST",
    "RECORD_PATH", "SECONDS_LIMIT", "TIMESTAMP_PATH", "TOKEN_HEADER", "TOKEN_LENGTH", "ContractError", "FormError",
    "Invalid", "Pairs", "Point", "TooLarge", "activation_identity", "alias_from_path", "check_alias", "check_count", "check_identity", "check_value",
    "decode_alias_query", "decode_form", "decode_form_dict", "decode_record", "decode_write", "encode_form",
    "form_type_ok", "format_timestamp", "timestamp_us", "token_shaped",
]
