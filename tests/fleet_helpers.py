"""Fleet tests' parts: the murano-local CLI as a subprocess, rollout status over the admin API,
and real gateways (gwe + gmq under their own supervisord and GWE_HOME each)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List, Optional

import requests

from harness import GiveUp, free_port, stop_process, supervisor_proxy, wait_for

PRODUCT = "localproduct"


def cli(murano, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``murano-local --url <server> ARGS`` with the suite's interpreter."""
    return subprocess.run([sys.executable, "-m", "murano_local", "--url", murano.url, *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


def fleet_url(murano, suffix: str = "") -> str:
    return "%s/api:1/service/%s/fleet%s" % (murano.url, PRODUCT, suffix)


def tag(murano, identity: str, *tags: str) -> None:
    resp = requests.post(fleet_url(murano, "/gateways/%s/tags" % identity), json={"add": list(tags)}, timeout=10)
    resp.raise_for_status()


def rollout(murano, name: str) -> dict:
    resp = requests.get(fleet_url(murano, "/rollouts/" + name), timeout=10)
    resp.raise_for_status()
    return resp.json()


def wait_rollout(murano, name: str, states, timeout: float, message: str = "") -> dict:
    def done():
        r = rollout(murano, name)
        return r if r["state"] in states else None
    return wait_for(done, timeout, interval=0.2, message=message or "rollout %s to be %s" % (name, "/".join(states)))


def fetch_statuses(murano, identity: str, package: Optional[str] = None) -> List[dict]:
    """Every fetch_status the gateway wrote (oldest first), for ``package`` if given."""
    found = [json.loads(p["value"]) for p in reversed(murano.history(identity, "fetch_status"))]
    return [s for s in found if package is None or s.get("package") == package]


class RealGateway:
    """One gateway as deployed: GWE_HOME with Gateway.cfg, Engine.config and gmq.cfg, supervisord
    running gwe and gmq from this interpreter's bin directory."""

    def __init__(self, home: str, serial: str, murano, update_interval: int = 3, settle: float = 0.5) -> None:
        from atomic_config import gwe_paths, set_option
        from gwe import config
        from gwe.supervisor_conf import write_suite_configs

        self.home, self.serial = home, serial
        self.paths = gwe_paths(home).ensure()
        config.update_gateway_config({"host": murano.url, "vendor": PRODUCT, "model": PRODUCT, "uuid": serial},
                                     self.paths.gateway_cfg)
        config.update_engine_settings({"update_interval": str(update_interval), "activation_retry_interval": "2"},
                                      self.paths.engine_cfg)
        set_option(self.paths.engine_cfg, "otau", "settle_seconds", str(settle))
        set_option(self.paths.gmq_cfg, "server", "port", str(free_port()))
        set_option(self.paths.gmq_cfg, "upstream", "backoff_max", "3")
        write_suite_configs(self.paths, os.path.dirname(sys.executable))
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "RealGateway":
        env = dict(os.environ, GWE_HOME=self.home)
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c",
                                      self.paths.supervisord_conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=self.home, env=env)
        return self

    def rpc(self):
        return supervisor_proxy(self.paths.supervisor_socket)

    def processes(self) -> dict:
        if self.proc.poll() is not None:
            raise GiveUp("supervisord of %s exited %s" % (self.serial, self.proc.returncode))
        return {p["name"]: p for p in self.rpc().supervisor.getAllProcessInfo()}

    def running_version(self, app: str) -> Optional[str]:
        """The version of ``app`` supervisord runs now (from its environment), None if not RUNNING."""
        info = self.processes().get(app)
        if not info or info["statename"] != "RUNNING":
            return None
        with open("/proc/%d/environ" % info["pid"], "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        return env.get(b"GWE_APP_VERSION", b"").decode()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=30)


def stop_all(gateways) -> None:
    """SIGTERM every gateway's supervisord at once, then wait for each (SIGKILL after 30 s)."""
    for gw in gateways:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.proc.terminate()
    for gw in gateways:
        gw.stop()


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000")


def chromium(profile_dir: str):
    """A real headless Chromium (Debian's chromium + chromium-driver, installed by scripts/test) driven by
    selenium, with a fresh profile; the driver path is given so selenium never looks for one to download."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument("--user-data-dir=" + profile_dir)
    options.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
