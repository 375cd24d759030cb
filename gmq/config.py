"""gmq.cfg: typed settings with defaults, read through atomic_config; reread without restart."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from atomic_config import (
    DEFAULT_MIN_FREE_DISK, AtomicConfigParser, ConfigError as GatewayConfigError, GwePaths, RecoveryError,
    edit_config, load_gateway_config, read_config,
)
from device_api import MAX_VALUES_PER_REQUEST

from .clients import Gateway
from .limits import POLICIES, Limits

log = logging.getLogger(__name__)

MAX_BATCH = MAX_VALUES_PER_REQUEST  # values in one record request (each may add an alias= field: within MAX_FORM_FIELDS)


class ConfigError(ValueError):
    """A gmq.cfg value that cannot be used."""


class DamagedConfig(ConfigError):
    """gmq.cfg is empty or unparsable and has no previous generation to recover."""


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def _seconds(text: str) -> float:
    """A finite number of seconds: float() also takes 'nan' and 'inf' (a nan ttl would expire every value)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("a finite number of seconds, 0 or more")
    return value


def _policy(text: str) -> str:
    if text not in POLICIES:
        raise ValueError("one of " + ", ".join(POLICIES))
    return text


def _transport(text: str) -> str:
    if text not in ("http", "mqtt"):
        raise ValueError("http or mqtt")
    return text


def _level(text: str) -> str:
    up = text.strip().upper()
    if up not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("a logging level")
    return up


# (section, option): (type, default, applied by reread?, what it is)
KEYS: Dict[Tuple[str, str], Tuple[Callable[[str], object], str, bool, str]] = {
    ("server", "host"): (str, "127.0.0.1", False, "address to listen on (loopback by default)"),
    ("server", "port"): (int, "8090", False, "TCP port"),
    ("server", "max_body_bytes"): (int, "1048576", True, "largest request body (413 above)"),
    ("server", "request_timeout"): (_seconds, "10", True, "seconds a connection may sit idle or trickle a request"),
    ("server", "max_connections"): (int, "512", True, "open connections at once (503 above)"),
    ("queue", "max_bytes"): (int, "67108864", True, "queued alias+value bytes at most"),
    ("queue", "min_free_disk"): (int, str(DEFAULT_MIN_FREE_DISK), True,
                                 "free bytes to leave on the queue's filesystem (507); otau keeps it too"),
    ("queue", "policy"): (_policy, "drop_oldest", True, "when full: drop_oldest or reject_new (507)"),
    ("queue", "max_value_bytes"): (int, "65536", True, "largest alias+value (413 above)"),
    ("queue", "ttl"): (_seconds, "0", True, "seconds a value may wait before it expires; 0 = never"),
    ("upstream", "host"): (str, "", True, "Murano base URL; empty = Gateway.cfg [device] host"),
    ("upstream", "batch_size"): (int, "500", True, "values per record request"),
    ("upstream", "backoff_initial"): (_seconds, "1", True, "first retry delay, seconds"),
    ("upstream", "backoff_max"): (_seconds, "300", True, "longest retry delay, seconds"),
    ("upstream", "timeout"): (_seconds, "30", True, "upstream connect/read timeout, seconds"),
    ("upstream", "verify"): (_bool, "true", True, "verify TLS certificates"),
    ("upstream", "ca_file"): (str, "", True, "CA bundle for TLS verification; empty = system"),
    ("upstream", "transport"): (_transport, "http", True, "http or mqtt (records as $resource.batch over MQTT)"),
    ("upstream", "mqtt_url"): (str, "", True, "mqtts://host:port; empty = the upstream host on 8883 (1883 for http)"),
    ("upstream", "probe_interval"): (_seconds, "60", True, "seconds between checks of an idle link (GET /timestamp); "
                                     "0 = never"),
    ("log", "level"): (_level, "INFO", True, "logging level"),
}


@dataclass
class GmqConfig:
    host: str
    port: int
    max_body_bytes: int
    request_timeout: float
    max_connections: int
    limits: Limits
    upstream: Optional[str]
    batch_size: int
    backoff_initial: float
    backoff_max: float
    upstream_timeout: float
    verify: bool
    ca_file: Optional[str]
    log_level: str
    transport: str = "http"
    mqtt_url: Optional[str] = None
    probe_interval: float = 60.0


def parse_value(section: str, option: str, text: str) -> object:
    """Check one value against its key; raises ConfigError naming the key."""
    spec = KEYS.get((section, option))
    if spec is None:
        raise ConfigError("unknown key [%s] %s" % (section, option))
    try:
        return spec[0](text.strip())
    except ValueError as exc:
        raise ConfigError("[%s] %s = %r: %s" % (section, option, text, exc or "bad value")) from None


def _values(cfg: AtomicConfigParser) -> Dict[Tuple[str, str], object]:
    out = {}
    for (section, option), spec in KEYS.items():
        text = cfg.get(section, option, fallback=spec[1])
        if not text.strip() and spec[0] is not str:
            text = spec[1]
        out[(section, option)] = parse_value(section, option, text)
    return out


def upstream_from_gateway(paths: GwePaths, damage: Optional[List[str]] = None) -> Optional[str]:
    """The Murano URL gwe uses (Gateway.cfg), or None when it has no host or product id yet.

    A damaged Gateway.cfg is None too; ``damage`` (a list) gets the reason.
    """
    try:
        gateway = load_gateway_config(paths.gateway_cfg)
    except GatewayConfigError as exc:
        if damage is not None:
            damage.append("%s; no upstream until it is repaired" % exc)
        return None
    try:
        return gateway.murano_url
    except GatewayConfigError:
        return None


class GatewayIdentity:
    """Gateway.cfg's identity, read again whenever gwe rewrites the file (it activates, or re-activates
    after a 401, while gmq runs): gmq forwards the gateway's own values with gwe's token and never
    activates that serial itself (gwe holds its one activation)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: object = ()
        self._gateway = Gateway()

    def current(self) -> Gateway:
        try:
            st = os.stat(self.path)
            stamp: object = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                g = load_gateway_config(self.path)
                self._gateway = Gateway(g.uuid or None, g.cik or None, g.vendor or None, g.model or None)
            except GatewayConfigError as exc:  # the last identity read stays (the damage is alarmed at start)
                log.warning("%s; the gateway's identity as read before is kept", exc)
        return self._gateway


def local_url(cfg: "GmqConfig", path: str) -> str:
    """URL of the running gmq's ``path`` on this machine."""
    host = "127.0.0.1" if cfg.host in ("", "0.0.0.0") else ("[%s]" % cfg.host if ":" in cfg.host else cfg.host)
    return "http://%s:%d%s" % (host, cfg.port, path)


def _read(paths: GwePaths) -> AtomicConfigParser:
    """gmq.cfg parsed; damaged beyond recovery is a DamagedConfig (one line, saying what to do)."""
    try:
        return read_config(paths.gmq_cfg)
    except RecoveryError as exc:
        raise DamagedConfig("gmq.cfg unreadable: %s" % exc) from None


def load(paths: GwePaths, damage: Optional[List[str]] = None) -> GmqConfig:
    """Read gmq.cfg (defaults for what is missing) and resolve the upstream URL.

    ``damage`` (a list): a gmq.cfg or Gateway.cfg damaged beyond recovery (empty or unparsable,
    no previous generation: what a power cut leaves of a hand edit) is no error: gmq.cfg's
    defaults are used, or no upstream, and the reason is appended (gmq raises an alarm).
    Without it, a damaged gmq.cfg is a DamagedConfig.
    """
    try:
        parsed = _read(paths)
    except DamagedConfig as exc:
        if damage is None:
            raise
        damage.append("%s; running on the defaults until it is repaired" % exc)
        parsed = AtomicConfigParser()
    return _build(_values(parsed), paths, damage)


def _build(v: Dict[Tuple[str, str], object], paths: GwePaths, damage: Optional[List[str]] = None) -> GmqConfig:
    limits = Limits(max_bytes=v["queue", "max_bytes"], min_free_disk=v["queue", "min_free_disk"],
                    policy=v["queue", "policy"], max_value_bytes=v["queue", "max_value_bytes"],
                    ttl=v["queue", "ttl"])
    try:
        limits.validate()
    except ValueError as exc:
        raise ConfigError("[queue] %s" % exc) from None
    if v["upstream", "backoff_initial"] <= 0 or v["upstream", "backoff_max"] < v["upstream", "backoff_initial"]:
        raise ConfigError("[upstream] backoff_initial must be > 0 and <= backoff_max")
    if not 1 <= v["upstream", "batch_size"] <= MAX_BATCH:
        raise ConfigError("[upstream] batch_size must be 1-%d (the most values one request may hold)" % MAX_BATCH)
    if not 1 <= v["server", "port"] <= 65535:
        raise ConfigError("[server] port must be 1-65535")
    for section, option in (("server", "max_body_bytes"), ("server", "max_connections")):
        if v[section, option] < 1:
            raise ConfigError("[%s] %s must be at least 1" % (section, option))
    for section, option in (("server", "request_timeout"), ("upstream", "timeout")):
        if v[section, option] <= 0:
            raise ConfigError("[%s] %s must be more than 0 seconds" % (section, option))
    upstream = (v["upstream", "host"] or "").strip() or upstream_from_gateway(paths, damage)
    return GmqConfig(
        host=v["server", "host"], port=v["server", "port"], max_body_bytes=v["server", "max_body_bytes"],
        request_timeout=v["server", "request_timeout"], max_connections=v["server", "max_connections"],
        limits=limits, upstream=upstream.rstrip("/") if upstream else None,
        batch_size=v["upstream", "batch_size"], backoff_initial=v["upstream", "backoff_initial"],
        backoff_max=v["upstream", "backoff_max"], upstream_timeout=v["upstream", "timeout"],
        verify=v["upstream", "verify"], ca_file=v["upstream", "ca_file"] or None, log_level=v["log", "level"],
        transport=v["upstream", "transport"], mqtt_url=(v["upstream", "mqtt_url"] or "").strip() or None,
        probe_interval=v["upstream", "probe_interval"])


def get(paths: GwePaths, section: str, option: str) -> str:
    """The effective value of one key (the default when unset)."""
    if (section, option) not in KEYS:
        raise ConfigError("unknown key [%s] %s" % (section, option))
    return _text(_values(_read(paths))[(section, option)])


def set_value(paths: GwePaths, section: str, option: str, value: str) -> None:
    """Check and store one key in gmq.cfg (atomically, under the file lock)."""
    parse_value(section, option, value)
    paths.ensure()
    try:
        with edit_config(paths.gmq_cfg) as cfg:
            if not cfg.has_section(section):
                cfg.add_section(section)
            cfg.set(section, option, value)
            _build(_values(cfg), paths)  # the file as a whole must still make sense, or nothing is written
    except RecoveryError as exc:
        raise ConfigError("gmq.cfg unreadable, nothing changed: %s" % exc) from None


def effective(paths: GwePaths) -> Dict[str, Dict[str, str]]:
    """Every key with its effective value, by section."""
    out: Dict[str, Dict[str, str]] = {}
    for (section, option), value in _values(_read(paths)).items():
        out.setdefault(section, {})[option] = _text(value)
    return out


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
