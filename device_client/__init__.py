"""Murano Device API client library for Gateway Engine."""
from .backoff import Backoff
from .form import FormError, decode_alias_query, decode_form, decode_form_dict, encode_form

__all__ = ["Backoff", "FormError", "decode_alias_query", "decode_form", "decode_form_dict", "encode_form"]
