"""Gateway.cfg and Engine.config: the gateway's identity and the engine's settings.

Both files live under ``GWE_HOME/etc/gwe`` and are only ever rewritten through
``atomic_config`` (locked read-modify-write). The Gateway.cfg model is the shared
layer's (``atomic_config.gateway_cfg``: gmq and gdc read it too), re-exported here
under its old names; Engine.config is gwe's own.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Tuple

from atomic_config import RecoveryError, edit_config, gwe_paths, read_config
from atomic_config.gateway_cfg import (  # noqa: F401  (gwe's public names for the Gateway.cfg model)
    DEVICE, DEVICE_KEYS, EMPTY, ConfigError, GatewayConfig, check_host, clean_value, load_gateway_config,
    stored_value, update_gateway_config,
)

log = logging.getLogger(__name__)

ENGINE = "engine"
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


def engine_config_path() -> str:
    return gwe_paths().engine_cfg


# the flag that sets each engine setting, for messages that say how to fix one
ENGINE_FLAGS = {"update_interval": "-t SECONDS", "debug_level": "-d LEVEL", "user_agent": "-a USER_AGENT",
                "activation_retry_interval": "-l SECONDS", "transport": "--set-transport http|mqtt",
                "mqtt_url": "--set-mqtt-url URL"}


def read_engine_settings(path: Optional[str] = None) -> Tuple[Dict[str, str], List[str]]:
    """Engine.config as written (defaults for what is absent), and a line for each value that
    cannot be used, saying how to fix it. A damaged file is a ConfigError."""
    path = path or engine_config_path()
    try:
        cfg = read_config(path)
    except RecoveryError as exc:
        raise ConfigError("Engine.config unreadable: %s" % exc) from None
    written = {k: clean_value(cfg.get(ENGINE, k, fallback=d)) or d for k, d in ENGINE_DEFAULTS.items()}
    problems = []
    for key, value in written.items():
        try:
            validate_engine_setting(key, value)
        except ConfigError as exc:
            problems.append("%s: %s; fix it with gwe %s (gwe uses %s until then)"
                            % (path, exc, ENGINE_FLAGS[key], ENGINE_DEFAULTS[key] or "the default"))
    return written, problems


def load_engine_settings(path: Optional[str] = None) -> Dict[str, str]:
    """The settings gwe runs with: a value that cannot be used is replaced by its default
    (and logged), so a bad hand edit never keeps the gateway from reporting."""
    written, problems = read_engine_settings(path)
    for line in problems:
        log.warning("%s", line)
    return _usable(written)


def _usable(written: Dict[str, str]) -> Dict[str, str]:
    settings = {}
    for key, value in written.items():
        try:
            settings[key] = validate_engine_setting(key, value)
        except ConfigError:
            settings[key] = ENGINE_DEFAULTS[key]
    return settings


def validate_engine_setting(key: str, value: str) -> str:
    """The normalised value, or ConfigError saying what is wrong."""
    if key not in ENGINE_DEFAULTS:
        raise ConfigError("unknown engine setting %r" % key)
    value = clean_value(value)
    if key in ("update_interval", "activation_retry_interval"):
        try:
            seconds = int(float(value))
        except (ValueError, OverflowError):  # "nan", "inf", "1e999"
            raise ConfigError("%s must be a number of seconds, not %r" % (key, value)) from None
        if seconds < 1:
            raise ConfigError("%s must be at least 1 second, not %r" % (key, value))
        return str(seconds)
    if key == "transport":
        if value.lower() not in TRANSPORTS:
            raise ConfigError("transport must be http or mqtt, not %r" % value)
        return value.lower()
    if key == "mqtt_url" and value and not value.startswith(("mqtt://", "mqtts://")):
        raise ConfigError("mqtt_url must look like mqtts://host:8883 or mqtt://host:1883, not %r" % value)
    if key == "debug_level":
        if value.upper() not in DEBUG_LEVELS:
            raise ConfigError("debug_level must be one of %s, not %r" % (", ".join(DEBUG_LEVELS), value))
        return value.upper()
    return value


def update_engine_settings(changes: Dict[str, str], path: Optional[str] = None) -> Dict[str, str]:
    checked = {k: validate_engine_setting(k, v) for k, v in changes.items()}
    path = path or engine_config_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with edit_config(path) as cfg:
            if not cfg.has_section(ENGINE):
                cfg.add_section(ENGINE)
            for key, value in checked.items():
                cfg.set(ENGINE, key, stored_value(value))
    except RecoveryError as exc:
        raise ConfigError("Engine.config unreadable, nothing changed: %s" % exc) from None
    return _usable(read_engine_settings(path)[0])  # what is still wrong is the caller's to show


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
