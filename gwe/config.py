"""Gateway.cfg and Engine.config: the gateway's identity and the engine's settings.

Both files live under ``GWE_HOME/etc/gwe`` and are only ever rewritten through
``atomic_config`` (locked read-modify-write). Gateway.cfg holds the token (``cik``),
so it is created 0600. Empty values are written as ``''`` as the original did.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, Optional

from atomic_config import edit_config, gwe_paths, read_config

log = logging.getLogger(__name__)

DEVICE = "device"
ENGINE = "engine"
EMPTY = "''"
DEVICE_KEYS = ("cik", "model", "vendor", "uuid", "iface", "host")
ENGINE_DEFAULTS = {
    "update_interval": "14400",
    "debug_level": "INFO",
    "user_agent": "",
    "activation_retry_interval": "60",
    "transport": "http",
    "mqtt_url": "",
}
TRANSPORTS = ("http", "mqtt")
DEBUG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """A setting is missing or invalid; the message says which and how to fix it."""


def engine_config_path() -> str:
    return gwe_paths().engine_cfg


def _clean(value: Optional[str]) -> str:
    if value is None:
        return ""
    value = value.strip()
    return "" if value in (EMPTY, '""') else value


def _stored(value: str) -> str:
    return value if value else EMPTY


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
            return self.host.rstrip("/")
        if not self.product_id:
            raise ConfigError("no product id: run gwe --set-product-id PRODUCT_ID (or set [device] host)")
        return "https://%s.m2.exosite.io" % self.product_id


def load_gateway_config(path: Optional[str] = None) -> GatewayConfig:
    cfg = read_config(path or gwe_paths().gateway_cfg)
    values = {k: _clean(cfg.get(DEVICE, k, fallback="")) for k in DEVICE_KEYS}
    return GatewayConfig(**values)


def update_gateway_config(changes: Dict[str, str], path: Optional[str] = None) -> GatewayConfig:
    """Set ``[device]`` options atomically (``""`` clears one) and return the new config."""
    unknown = set(changes) - set(DEVICE_KEYS)
    if unknown:
        raise ConfigError("unknown Gateway.cfg option(s): %s" % ", ".join(sorted(unknown)))
    path = path or gwe_paths().gateway_cfg
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with edit_config(path, mode=0o600) as cfg:
        if not cfg.has_section(DEVICE):
            cfg.add_section(DEVICE)
        for key in DEVICE_KEYS:
            if not cfg.has_option(DEVICE, key):
                cfg.set(DEVICE, key, EMPTY)
        for key, value in changes.items():
            cfg.set(DEVICE, key, _stored(_clean(value)))
    return load_gateway_config(path)


def load_engine_settings(path: Optional[str] = None) -> Dict[str, str]:
    cfg = read_config(path or engine_config_path())
    return {k: _clean(cfg.get(ENGINE, k, fallback=d)) or d for k, d in ENGINE_DEFAULTS.items()}


def validate_engine_setting(key: str, value: str) -> str:
    """The normalised value, or ConfigError saying what is wrong."""
    if key not in ENGINE_DEFAULTS:
        raise ConfigError("unknown engine setting %r" % key)
    value = _clean(value)
    if key in ("update_interval", "activation_retry_interval"):
        try:
            seconds = int(float(value))
        except (ValueError, OverflowError):  # "nan", "inf", "1e999"
            raise ConfigError("%s must be a number of seconds, not %r" % (key, value)) from None
        if seconds < 1:
            raise ConfigError("%s must be at least 1 second" % key)
        return str(seconds)
    if key == "transport":
        if value.lower() not in TRANSPORTS:
            raise ConfigError("transport must be http or mqtt, not %r" % value)
        return value.lower()
    if key == "mqtt_url" and value and not value.startswith(("mqtt://", "mqtts://")):
        raise ConfigError("mqtt_url must look like mqtts://host:8883 or mqtt://host:1883")
    if key == "debug_level":
        if value.upper() not in DEBUG_LEVELS:
            raise ConfigError("debug level must be one of %s" % ", ".join(DEBUG_LEVELS))
        return value.upper()
    return value


def update_engine_settings(changes: Dict[str, str], path: Optional[str] = None) -> Dict[str, str]:
    checked = {k: validate_engine_setting(k, v) for k, v in changes.items()}
    path = path or engine_config_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with edit_config(path) as cfg:
        if not cfg.has_section(ENGINE):
            cfg.add_section(ENGINE)
        for key, value in checked.items():
            cfg.set(ENGINE, key, _stored(value))
    return load_engine_settings(path)


def interface_mac(iface: str) -> Optional[str]:
    """The MAC address of ``iface`` in upper case with colons, or None if unknown."""
    import psutil

    for addr in psutil.net_if_addrs().get(iface, ()):
        if addr.family == psutil.AF_LINK and addr.address:
            return addr.address.upper().replace("-", ":")
    return None


def resolve_serial(path: Optional[str] = None) -> str:
    """The gateway's serial: ``uuid``, else the MAC of ``iface`` (stored into ``uuid``).

    Mirrors the original start-up rule; neither set is a ConfigError.
    """
    config = load_gateway_config(path)
    if config.uuid:
        return config.uuid
    if not config.iface:
        raise ConfigError("no serial: set one with gwe --set-uuid UUID or gwe --set-iface IFACE")
    mac = interface_mac(config.iface)
    if mac is None:
        raise ConfigError("interface %r not found: cannot read its MAC address for the serial" % config.iface)
    update_gateway_config({"uuid": mac}, path)
    log.info("Found interface '%s' with MAC address (serial/uuid): %s", config.iface, mac)
    return mac
