"""Gateway.cfg: the gateway's identity and its Murano address, read by gwe, gmq, gdc and legacy apps.

The file lives at ``GWE_HOME/etc/gwe/Gateway.cfg``, section ``[device]``; it holds the
token (``cik``), so it is created 0600 and only rewritten through ``edit_config``.
Empty values are written as ``''`` as the original GWE did. It is here, in the shared
layer, so that gmq and gdc read it without importing the gwe daemon.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional
from urllib.parse import urlsplit

from .files import RecoveryError
from .locking import edit_config, read_config
from .paths import gwe_paths

DEVICE = "device"
EMPTY = "''"
DEVICE_KEYS = ("cik", "model", "vendor", "uuid", "iface", "host")


class ConfigError(Exception):
    """A setting is missing or invalid, or its file is unreadable; the message says which and how to fix it."""


def clean_value(value: Optional[str]) -> str:
    """A config value as meant: stripped, and the original's ``''`` for empty."""
    if value is None:
        return ""
    value = value.strip()
    return "" if value in (EMPTY, '""') else value


def stored_value(value: str) -> str:
    return value if value else EMPTY


def check_host(host: str) -> str:
    """``host`` if it can be a Murano base URL (http:// or https:// and a host), else a ConfigError."""
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("Gateway.cfg: host = %r is not an http:// or https:// URL: fix it with gwe --set-host URL "
                          "('' for https://<product_id>.m2.exosite.io)" % host)
    return host


@dataclass(frozen=True)
class GatewayConfig:
    cik: str = ""
    model: str = ""
    vendor: str = ""
    uuid: str = ""
    iface: str = ""
    host: str = ""

    @property
    def product_id(self) -> str:
        return self.model or self.vendor

    @property
    def murano_url(self) -> str:
        """``host`` if set, else Murano's address for the product."""
        if self.host:
            return check_host(self.host).rstrip("/")
        if not self.product_id:
            raise ConfigError("no product id: run gwe --set-product-id PRODUCT_ID (or set [device] host)")
        return "https://%s.m2.exosite.io" % self.product_id


def load_gateway_config(path: Optional[str] = None) -> GatewayConfig:
    """The ``[device]`` section (an absent file is an empty one); a damaged file is a ConfigError."""
    path = path or gwe_paths().gateway_cfg
    try:
        cfg = read_config(path)
    except RecoveryError as exc:
        raise ConfigError("Gateway.cfg unreadable: %s" % exc) from None
    return GatewayConfig(**{k: clean_value(cfg.get(DEVICE, k, fallback="")) for k in DEVICE_KEYS})


def update_gateway_config(changes: Dict[str, str], path: Optional[str] = None) -> GatewayConfig:
    """Set ``[device]`` options atomically (``""`` clears one) and return the new config."""
    unknown = set(changes) - set(DEVICE_KEYS)
    if unknown:
        raise ConfigError("unknown Gateway.cfg option(s): %s" % ", ".join(sorted(unknown)))
    path = path or gwe_paths().gateway_cfg
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with edit_config(path, mode=0o600) as cfg:
            if not cfg.has_section(DEVICE):
                cfg.add_section(DEVICE)
            for key in DEVICE_KEYS:
                if not cfg.has_option(DEVICE, key):
                    cfg.set(DEVICE, key, EMPTY)
            for key, value in changes.items():
                cfg.set(DEVICE, key, stored_value(clean_value(value)))
    except RecoveryError as exc:
        raise ConfigError("Gateway.cfg unreadable, nothing changed: %s" % exc) from None
    return load_gateway_config(path)
