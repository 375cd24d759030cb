"""A configured gateway for gwe tests: GWE_HOME, a whitelisted device on murano_local, and gwe itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional

import requests

from harness import wait_for

SERIAL = "gw-0001"
PRODUCT = "localproduct"


def configure_gateway(murano, update_interval: int = 60, settle: float = 0.5, transport: str = "http") -> None:
    from atomic_config import set_option
    from gwe import config

    config.update_gateway_config({"host": murano.url, "vendor": PRODUCT, "model": PRODUCT, "uuid": SERIAL})
    config.update_engine_settings({"update_interval": str(update_interval), "activation_retry_interval": "2",
                                   "debug_level": "DEBUG", "transport": transport,
                                   "mqtt_url": murano.mqtt_url if transport == "mqtt" else ""})
    set_option(config.engine_config_path(), "otau", "settle_seconds", str(settle))
    murano.add_device(SERIAL)


def start_gwe(home, *args: str, log_name: str = "gwe.log") -> subprocess.Popen:
    log = open(os.path.join(str(home), log_name), "ab")
    env = dict(os.environ, GWE_HOME=str(home))
    try:
        return subprocess.Popen([sys.executable, "-m", "gwe", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    finally:
        log.close()


def upload(murano, path: str) -> None:
    with open(path, "rb") as f:
        r = requests.put("%s/api:1/service/%s/content/item/%s" % (murano.url, PRODUCT, os.path.basename(path)),
                         data=f, headers={"Content-Type": "application/gzip"}, timeout=30)
    r.raise_for_status()


def reported(murano, alias: str) -> Optional[str]:
    return murano.state(SERIAL).get(alias, {}).get("reported")


def reported_json(murano, alias: str):
    raw = reported(murano, alias)
    return json.loads(raw) if raw else None


def wait_fetch_status(murano, package: str, timeout: float = 60.0) -> dict:
    def done():
        status = reported_json(murano, "fetch_status")
        return status if status and status.get("package") == package else None
    return wait_for(done, timeout, interval=0.1, message="fetch_status of %s" % package)
