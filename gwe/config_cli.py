"""What gwe's legacy configuration flags do: set Gateway.cfg / Engine.config, then echo them.

As in the original, every configuring command prints the resulting configuration.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Tuple

import click

from atomic_config import RecoveryError, gwe_paths, read_config

from . import config

CIK_MASK = "********"  # the token is a secret: echoed masked, printed only by gwe -C

# legacy flag destination -> (file, key)
GATEWAY_FLAGS = {"set_cik": "cik", "set_model": "model", "set_vendor": "vendor", "set_uuid": "uuid",
                 "set_iface": "iface", "set_host": "host"}
ENGINE_FLAGS = {"set_update_interval": "update_interval", "set_debug_level": "debug_level",
                "set_user_agent": "user_agent", "set_act_retry_interval": "activation_retry_interval",
                "set_transport": "transport", "set_mqtt_url": "mqtt_url"}


def _read_sections(path: str, name: str) -> Dict[str, Dict[str, str]]:
    """Every section of ``path`` as written; a damaged file is a ConfigError."""
    try:
        cfg = read_config(path)
    except RecoveryError as exc:
        raise config.ConfigError("%s unreadable: %s" % (name, exc)) from None
    return {section: dict(cfg.items(section)) for section in cfg.sections()}


def _echo(sections: Dict[str, Dict[str, str]], as_json: bool) -> None:
    if as_json:  # the values as meant: "" for the original's ''
        click.echo(json.dumps({name: {k: config.clean_value(v) for k, v in options.items()}
                               for name, options in sections.items()}, sort_keys=True))
        return
    click.echo("\n\n".join("[%s]\n" % name + "\n".join("%s = %s" % item for item in options.items())
                           for name, options in sections.items()))


def echo_gateway_cfg(as_json: bool = False) -> List[str]:
    """Print Gateway.cfg with the token masked (only ``gwe -C`` prints it); returns its problems."""
    path = gwe_paths().gateway_cfg
    sections = _read_sections(path, "Gateway.cfg")
    if not sections and not as_json:
        click.echo("(no %s yet)" % path)
        return []
    device = sections.get(config.DEVICE, {})
    if config.clean_value(device.get("cik")):
        device["cik"] = CIK_MASK
    _echo(sections, as_json)
    host = config.clean_value(device.get("host"))
    try:
        if host:
            config.check_host(host)
    except config.ConfigError as exc:
        return [str(exc)]
    return []


def echo_engine_cfg(as_json: bool = False) -> List[str]:
    """Print Engine.config as written (defaults for what is absent); returns what cannot be used."""
    path = config.engine_config_path()
    written, problems = config.read_engine_settings(path)
    sections = _read_sections(path, "Engine.config")
    sections[config.ENGINE] = {k: config.stored_value(v) for k, v in written.items()}
    _echo(dict([(config.ENGINE, sections.pop(config.ENGINE))] + list(sections.items())), as_json)
    return problems


def _check_gateway_changes(gateway: Dict[str, str]) -> Optional[str]:
    """Refuse what cannot work before anything is written; the MAC address of a given iface."""
    host = config.clean_value(gateway.get("host"))
    if host:
        config.check_host(host)
    iface = config.clean_value(gateway.get("iface"))
    if not iface:
        return None
    mac = config.interface_mac(iface)
    if mac is None:
        import psutil

        raise config.ConfigError("interface %r not found on this machine (it has %s); nothing changed: name one of "
                                 "them, or give the serial itself with gwe --set-uuid SERIAL"
                                 % (iface, ", ".join(sorted(psutil.net_if_addrs())) or "none"))
    return mac


def apply_settings(flags: Dict[str, Optional[str]], product_id: Optional[str],
                   as_json: bool = False) -> Tuple[bool, List[str]]:
    """Apply every configuring flag given and echo the files changed; returns whether any flag
    was given, and the problems the files still have."""
    gateway = {GATEWAY_FLAGS[k]: v for k, v in flags.items() if k in GATEWAY_FLAGS and v is not None}
    if product_id is not None:  # legacy: the product id is both vendor and model
        gateway.update(vendor=product_id, model=product_id)
    engine = {ENGINE_FLAGS[k]: v for k, v in flags.items() if k in ENGINE_FLAGS and v is not None}
    mac = _check_gateway_changes(gateway)
    if engine:
        config.update_engine_settings(engine)
    if gateway:
        if mac and not as_json:
            click.echo("Found interface '%s' with MAC address (serial/uuid): %s" % (gateway["iface"], mac))
        config.update_gateway_config(gateway)
    problems: List[str] = []
    if engine:
        problems += echo_engine_cfg(as_json)
    if gateway:
        problems += echo_gateway_cfg(as_json)
    return bool(gateway or engine), problems


def print_cik(as_json: bool = False) -> None:
    cik = config.load_gateway_config().cik
    click.echo(json.dumps({"cik": cik}) if as_json else cik or "''")


def print_mac(iface: str) -> None:
    mac = config.interface_mac(iface)
    if mac is None:
        raise config.ConfigError("interface %r not found" % iface)
    click.echo(mac)
