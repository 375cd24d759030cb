"""``gwe demo``: the whole suite on one machine, against the embedded murano_local.

A temporary GWE_HOME; murano_local on a free port; supervisord running gwe and gmq; a sample
app built, uploaded and requested through ``engine_fetch``; its data sent through gmq and
seen arriving in the cloud; then the reports. Everything is torn down at the end unless
``--keep-running``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, TypeVar
from urllib.parse import quote

import click

from atomic_config import gwe_paths
from supervisor.states import ProcessStates

from .supervisor_conf import MAX_SOCKET_PATH

T = TypeVar("T")

GATEWAY = "demo-gateway"
SENSOR = "demo-sensor"
APP = "sample_sensor"
SAMPLE_APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_app")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class DemoError(Exception):
    pass


class DemoStopped(BaseException):
    """SIGINT, SIGTERM or SIGHUP, raised in the demo's thread: the demo stops what it started and
    exits 128 + the signal (Python's default for SIGTERM and SIGHUP exits at once, leaving
    murano_local and supervisord, with gwe and gmq, running on their own)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    raise DemoStopped(signum)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, condition: Callable[[], T], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except DemoError:
            raise
        except Exception:  # not up yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.1)


def _step(text: str) -> None:
    click.secho("==> " + text, fg="cyan", bold=True)


def _show(title: str, doc) -> None:
    click.secho("--- %s" % title, fg="green", bold=True)
    click.echo(json.dumps(doc, indent=2, sort_keys=True) if not isinstance(doc, str) else doc)


class Demo:
    def __init__(self, home: str) -> None:
        import requests

        self.home = home
        self.paths = gwe_paths(home).ensure()
        self.http = requests.Session()
        self.murano_port = _free_port()
        self.gmq_port = _free_port()
        self.murano_url = "http://127.0.0.1:%d" % self.murano_port
        self.product = "demoproduct"
        self.procs = []
        os.environ["GWE_HOME"] = home  # every path this process touches is the demo's
        self.env = dict(os.environ)

    # --- processes ---

    def _spawn(self, name: str, argv) -> subprocess.Popen:
        log = open(os.path.join(self.paths.log, name + ".log"), "ab")
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.home)
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # --- the cloud side (operator actions through murano_local's admin API) ---

    def _admin(self, method: str, path: str, **kwargs):
        resp = self.http.request(method, "%s/api:1/service/%s%s" % (self.murano_url, self.product, path),
                                 timeout=30, **kwargs)
        if resp.status_code >= 300:
            raise DemoError("murano_local %s %s: %d %s" % (method, path, resp.status_code, resp.text.strip()))
        return resp

    def state(self, identity: str) -> dict:
        return self._admin("GET", "/device2/identity/%s/state" % quote(identity, safe="")).json()

    def reported(self, identity: str, alias: str):
        raw = self.state(identity).get(alias, {}).get("reported")
        return json.loads(raw) if raw else None

    # --- the steps ---

    def start_cloud(self) -> None:
        _step("starting murano_local (the local Murano) on %s" % self.murano_url)
        self._spawn("murano_local", [sys.executable, "-m", "murano_local", "serve", "--port", str(self.murano_port),
                                     "--data", os.path.join(self.home, "murano_local"), "--product-id", self.product])
        _wait("murano_local", lambda: self.http.get(self.murano_url + "/timestamp", timeout=1).ok, 20)
        for identity in (GATEWAY, SENSOR):
            self._admin("PUT", "/device2/identity/%s" % identity, json={})
        click.echo("    whitelisted %s and %s in product %s" % (GATEWAY, SENSOR, self.product))

    def configure_gateway(self) -> None:
        from atomic_config import set_option

        from . import config
        from .supervisor_conf import write_suite_configs

        _step("configuring the gateway in GWE_HOME=%s" % self.home)
        config.update_gateway_config({"host": self.murano_url, "vendor": self.product, "model": self.product,
                                      "uuid": GATEWAY})
        config.update_engine_settings({"update_interval": "10", "activation_retry_interval": "2"})
        set_option(config.engine_config_path(), "otau", "settle_seconds", "1")
        set_option(self.paths.gmq_cfg, "server", "port", str(self.gmq_port))
        set_option(self.paths.gmq_cfg, "upstream", "backoff_max", "5")
        bin_dir = os.path.dirname(sys.executable)
        if not os.path.exists(os.path.join(bin_dir, "gwe")):
            raise DemoError("gwe is not installed beside %s: install the package (scripts/demo does)" % sys.executable)
        write_suite_configs(self.paths, bin_dir)

    def start_supervisord(self) -> None:
        from otau.supervisord import Supervisor

        _step("starting supervisord with gwe and gmq")
        proc = self._spawn("supervisord.out", [sys.executable, "-m", "supervisor.supervisord", "-n",
                                               "-c", self.paths.supervisord_conf])
        sup = Supervisor(self.paths.supervisor_socket)
        self.supervisor = sup

        def suite_running() -> bool:
            if proc.poll() is not None:
                with open(os.path.join(self.paths.log, "supervisord.out.log"), errors="replace") as f:
                    raise DemoError("supervisord exited: %s" % f.read().strip().splitlines()[-2:])
            return {p["name"]: p["state"] for p in sup.all_processes()} == {"gwe": ProcessStates.RUNNING,
                                                                            "gmq": ProcessStates.RUNNING}
        _wait("gwe and gmq RUNNING", suite_running, 30)
        _wait("gwe to activate and report", lambda: self.reported(GATEWAY, "engine_report"), 30)
        click.echo("    gwe activated as %s and wrote engine_report, device_info, usage_report" % GATEWAY)

    def build_and_upload(self, workdir: str) -> str:
        import otau

        _step("building the sample app %s and uploading it to the content area" % APP)
        src = os.path.join(workdir, "app")
        shutil.copytree(SAMPLE_APP, src)
        with open(os.path.join(src, "supervisor.conf"), "w") as f:  # this demo's python and gmq port
            f.write("[supervisord]\ncommand = %s sensor.py\nstartsecs = 1\n"
                    "environment = GMQ_URL=\"http://127.0.0.1:%d\",SENSOR_VMS=\"%s %s %s\"\n"
                    % (sys.executable, self.gmq_port, self.product, self.product, SENSOR))
        buildfile = os.path.join(src, "build.json")
        tarball = otau.build_app(buildfile, output_dir=workdir)
        with open(tarball, "rb") as f:
            self._admin("PUT", "/content/item/%s" % os.path.basename(tarball), data=f,
                        headers={"Content-Type": "application/gzip"})
        click.echo("    built %s (gwe --build-app) and uploaded it" % os.path.basename(tarball))
        return os.path.basename(tarball)

    def request_install(self, package: str) -> float:
        _step("operator writes engine_fetch = {\"install\": [{\"name\": \"%s\"}]}" % package)
        asked = time.monotonic()
        self._admin("PATCH", "/device2/identity/%s/state" % GATEWAY,
                    json={"engine_fetch": json.dumps({"install": [{"name": package}]})})
        _wait("%s RUNNING" % APP, lambda: any(p["name"] == APP and p["state"] == ProcessStates.RUNNING
                                             for p in self.supervisor.all_processes()), 30)
        running_after = time.monotonic() - asked
        click.echo("    %s RUNNING under supervisord %.1f s after the request" % (APP, running_after))
        status = _wait("fetch_status", lambda: (lambda s: s if s and s.get("package") == package else None)(
            self.reported(GATEWAY, "fetch_status")), 30)
        click.echo("    fetch_status: %s" % status["status"])
        return running_after

    def show_data(self) -> None:
        _step("app data: %s -> gmq (durable queue) -> murano_local" % APP)
        history = _wait("temperature readings in the cloud", lambda: (lambda h: h if len(h) >= 3 else None)(
            self._admin("GET", "/device2/identity/%s/history/temperature?limit=5" % SENSOR).json()), 30)
        for point in history[:5]:
            when = time.strftime("%H:%M:%S", time.localtime(point["timestamp"] / 1e6))
            click.echo("    %s.%03d  temperature = %s" % (when, point["timestamp"] // 1000 % 1000, point["value"]))

    def show_reports(self) -> None:
        _step("the reports gwe wrote to the cloud")
        self._admin("PATCH", "/device2/identity/%s/state" % GATEWAY, json={"update_interval": "10"})
        _wait("a report listing the app", lambda: APP in json.dumps(self.reported(GATEWAY, "engine_report")), 30)
        _show("engine_report", self.reported(GATEWAY, "engine_report"))
        info = self.reported(GATEWAY, "device_info")
        _show("device_info (abridged)", {k: info[k] for k in ("uname", "date", "ipaddrs", "cpu", "memory", "uptime_s")})
        _show("usage_report", self.reported(GATEWAY, "usage_report"))
        _show("fetch_status", self.reported(GATEWAY, "fetch_status"))


def run_demo(keep_running: bool = False) -> int:
    started = time.monotonic()
    home = tempfile.mkdtemp(prefix="gwe-demo-")
    if len(gwe_paths(home).supervisor_socket) > MAX_SOCKET_PATH:
        os.rmdir(home)
        home = tempfile.mkdtemp(prefix="gwe-demo-", dir="/tmp")
    previous_home = os.environ.get("GWE_HOME")
    previous_handlers = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS}
    demo = Demo(home)
    try:
        demo.start_cloud()
        demo.configure_gateway()
        demo.start_supervisord()
        package = demo.build_and_upload(home)
        demo.request_install(package)
        demo.show_data()
        demo.show_reports()
        click.secho("demo finished in %.1f s" % (time.monotonic() - started), fg="green", bold=True)
        if keep_running:
            click.echo("still running: GWE_HOME=%s, murano_local at %s, gmq at http://127.0.0.1:%d. Ctrl-C stops."
                       % (home, demo.murano_url, demo.gmq_port))
            signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
            signal.sigwait(set(STOP_SIGNALS))
            click.echo("stopping; GWE_HOME=%s is kept (its logs are in %s)" % (home, demo.paths.log))
        return 0
    except DemoError as exc:
        click.secho("demo failed: %s (logs in %s)" % (exc, demo.paths.log), fg="red", err=True)
        keep_running = True  # keep the logs for a look
        return 1
    except DemoStopped as stopped:
        click.secho("demo stopped (%s): stopping what it started" % stopped, fg="red", err=True)
        keep_running = False
        return 128 + stopped.signum
    finally:
        for signum in STOP_SIGNALS:  # a second signal must not cut the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        demo.stop()
        if previous_home is None:
            os.environ.pop("GWE_HOME", None)
        else:
            os.environ["GWE_HOME"] = previous_home
        if not keep_running:
            shutil.rmtree(home, ignore_errors=True)
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
