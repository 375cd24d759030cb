"""What gwe's legacy configuration flags do: set Gateway.cfg / Engine.config, then echo them.

As in the original, every configuring command prints the resulting configuration.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import click

from atomic_config import gwe_paths

from . import config

log = logging.getLogger(__name__)

# legacy flag destination -> (file, key)
GATEWAY_FLAGS = {"set_cik": "cik", "set_model": "model", "set_vendor": "vendor", "set_uuid": "uuid",
                 "set_iface": "iface", "set_host": "host"}
ENGINE_FLAGS = {"set_update_interval": "update_interval", "set_debug_level": "debug_level",
                "set_user_agent": "user_agent", "set_act_retry_interval": "activation_retry_interval",
                "set_transport": "transport", "set_mqtt_url": "mqtt_url"}


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def echo_gateway_cfg() -> None:
    path = gwe_paths().gateway_cfg
    click.echo(_read_text(path).rstrip("\n") or "(no %s yet)" % path)


def echo_engine_cfg() -> None:
    path = config.engine_config_path()
    settings = config.load_engine_settings()
    click.echo("[engine]")
    for key, value in settings.items():
        click.echo("%s = %s" % (key, value if value else "''"))
    extra = _read_text(path)
    if "[otau]" in extra:
        click.echo(extra[extra.index("[otau]"):].rstrip("\n"))


def apply_settings(flags: Dict[str, Optional[str]], product_id: Optional[str]) -> bool:
    """Apply every configuring flag given; returns whether any was."""
    gateway = {GATEWAY_FLAGS[k]: v for k, v in flags.items() if k in GATEWAY_FLAGS and v is not None}
    if product_id is not None:  # legacy: the product id is both vendor and model
        gateway.update(vendor=product_id, model=product_id)
    engine = {ENGINE_FLAGS[k]: v for k, v in flags.items() if k in ENGINE_FLAGS and v is not None}
    if engine:
        config.update_engine_settings(engine)
    if gateway:
        if gateway.get("iface"):
            mac = config.interface_mac(gateway["iface"])
            if mac is None:
                log.warning("interface %r not found on this machine", gateway["iface"])
            else:
                click.echo("Found interface '%s' with MAC address (serial/uuid): %s" % (gateway["iface"], mac))
        config.update_gateway_config(gateway)
    if engine:
        echo_engine_cfg()
    if gateway:
        echo_gateway_cfg()
    return bool(gateway or engine)


def print_cik() -> None:
    click.echo(config.load_gateway_config().cik or "''")


def print_mac(iface: str) -> None:
    mac = config.interface_mac(iface)
    if mac is None:
        raise config.ConfigError("interface %r not found" % iface)
    click.echo(mac)
