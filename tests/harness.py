"""Reusable test parts: waiting for conditions, free ports, real supervisord and mosquitto."""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from typing import Callable, Optional, TypeVar
from urllib.parse import quote

import requests
from supervisor.xmlrpc import SupervisorTransport

T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


class GiveUp(Exception):
    """Raised by a ``wait_for`` condition when what it waits for can no longer happen (the server
    exited): the wait ends at once with this error instead of running out its timeout."""


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except GiveUp:
            raise
        except Exception as exc:  # the condition may be unready (connection refused...)
            last_exc = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout("timed out after %.1fs waiting for %s (last error: %r)" % (timeout, message, last_exc))
        time.sleep(interval)


# Ports for servers a test starts come from below the kernel's ephemeral range (32768+ here), a block per
# xdist worker, each handed out once: a port from bind(0) could be handed by the kernel again, to
# another worker's bind(0) or as an outgoing connection's local port, before the server bound it
# (seen under load: a test's gmq port answered by another test's murano_local).
PORTS_PER_WORKER, WORKER_BLOCKS = 1500, 8


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


PORT_BASE = max(1024, _ephemeral_low() - PORTS_PER_WORKER * WORKER_BLOCKS)
_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0) % WORKER_BLOCKS
_first_port = PORT_BASE + _worker * PORTS_PER_WORKER
_ports = itertools.cycle(range(_first_port, _first_port + PORTS_PER_WORKER))
_ports_lock = threading.Lock()


def free_port() -> int:
    """A loopback TCP port nothing holds, the next of this worker's block (round again after its last)."""
    with _ports_lock:
        for _ in range(PORTS_PER_WORKER):
            port = next(_ports)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port in %d-%d" % (_first_port, _first_port + PORTS_PER_WORKER - 1))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes the connection."""
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class ManagedProcess:
    """A server subprocess a test starts: ``kill()`` is a power cut, ``stop()`` a clean SIGTERM."""

    proc: Optional[subprocess.Popen] = None

    def kill(self) -> None:
        """SIGKILL, as a power cut would; nothing is flushed on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class CountingRelay:
    """A TCP relay on 127.0.0.1 in front of a server, counting the bytes each way."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.to_server = 0
        self.to_client = 0
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, "to_server"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "to_client"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counter: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    setattr(self, counter, getattr(self, counter) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def take(self) -> int:
        """Bytes carried both ways since the last call."""
        with self._lock:
            total, self.to_server, self.to_client = self.to_server + self.to_client, 0, 0
        return total

    def close(self) -> None:
        self.listener.close()
        for s in self._sockets:
            s.close()


def supervisor_proxy(socket_path: str) -> xmlrpc.client.ServerProxy:
    """An XML-RPC proxy to supervisord over its unix socket, using supervisor's own transport."""
    transport = SupervisorTransport(None, None, serverurl="unix://" + socket_path)
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


class Supervisord:
    """A real supervisord in the foreground, configured under ``home`` (a GWE_HOME)."""

    def __init__(self, home: str) -> None:
        self.home = home
        self.etc = os.path.join(home, "etc", "supervisor")
        self.include = os.path.join(self.etc, "conf.d")
        self.run = os.path.join(home, "run", "gwe")
        self.log = os.path.join(home, "var", "log", "gwe")
        self.socket = os.path.join(self.run, "supervisord.sock")
        self.conf = os.path.join(self.etc, "supervisord.conf")
        self.proc: Optional[subprocess.Popen] = None

    def write_config(self) -> None:
        """The configuration gwe generates for this GWE_HOME (run in the foreground by ``-n``)."""
        from atomic_config import atomic_write, gwe_paths
        from gwe.supervisor_conf import supervisord_conf

        paths = gwe_paths(self.home).ensure()
        atomic_write(self.conf, supervisord_conf(paths))

    def start(self, timeout: float = 15.0) -> "Supervisord":
        if not os.path.exists(self.conf):
            self.write_config()
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", self.conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.home)
        wait_for(lambda: self._running(), timeout, message="supervisord to answer on %s" % self.socket)
        return self

    def _running(self) -> bool:
        if self.proc.poll() is not None:
            raise GiveUp("supervisord exited %s: %s" % (self.proc.returncode,
                                                        self.proc.stderr.read().decode(errors="replace")))
        return self.rpc().supervisor.getState()["statename"] == "RUNNING"

    def rpc(self) -> xmlrpc.client.ServerProxy:
        return supervisor_proxy(self.socket)

    def state(self, name: str) -> str:
        return self.rpc().supervisor.getProcessInfo(name)["statename"]

    def add_program(self, name: str, command: str, **options: object) -> None:
        """Write ``[program:name]`` into the include directory and apply it via XML-RPC."""
        lines = ["[program:%s]" % name, "command = %s" % command]
        lines += ["%s = %s" % (k, v) for k, v in options.items()]
        with open(os.path.join(self.include, name + ".conf"), "w") as f:
            f.write("\n".join(lines) + "\n")
        rpc = self.rpc()
        rpc.supervisor.reloadConfig()
        rpc.supervisor.addProcessGroup(name)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=20)
            if self.proc.stderr:
                self.proc.stderr.close()


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/bin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("mosquitto is not installed; run scripts/test, which installs it")


class Mosquitto:
    """A real mosquitto broker on a free loopback port, anonymous, no persistence."""

    def __init__(self, workdir: str, port: Optional[int] = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.conf = os.path.join(workdir, "mosquitto.conf")
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.conf, "w") as f:
            f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n" % self.port)
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", self.conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self._exited() or port_open(self.port), timeout,
                 message="mosquitto on port %d" % self.port)
        return self

    def _exited(self) -> bool:
        if self.proc.poll() is not None:
            raise GiveUp("mosquitto exited %s" % self.proc.returncode)
        return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class MuranoLocal(ManagedProcess):
    """A real ``murano_local`` server subprocess on a free loopback port, data under ``workdir``.

    ``start()`` after ``kill()`` or ``stop()`` restarts it on the same port and data directory.
    The helpers use the admin HTTP API on the server's default product. ``mqtt_port``
    (``True`` picks a free one) also serves MQTT, at ``mqtt_url``; with ``mqtt_cert``
    and ``mqtt_key`` over TLS (``mqtts://``). ``args`` go to ``murano-local serve`` as they are.
    """

    def __init__(self, workdir: str, port: Optional[int] = None, *, product_id: str = "localproduct",
                 allow_self_register: bool = False, mqtt_port=None, mqtt_cert: Optional[str] = None,
                 mqtt_key: Optional[str] = None, args=()) -> None:
        self.args = list(args)
        self.workdir = workdir
        self.port = port or free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.mqtt_port: Optional[int] = free_port() if mqtt_port is True else mqtt_port
        self.mqtt_cert, self.mqtt_key = mqtt_cert, mqtt_key
        self.mqtt_url = None if self.mqtt_port is None else "%s://127.0.0.1:%d" % (
            "mqtts" if mqtt_cert else "mqtt", self.mqtt_port)
        self.data = os.path.join(workdir, "data")
        self.log = os.path.join(workdir, "murano_local.log")
        self.product_id = product_id
        self.allow_self_register = allow_self_register
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 15.0) -> "MuranoLocal":
        os.makedirs(self.workdir, exist_ok=True)
        cmd = [sys.executable, "-m", "murano_local", "serve", "--port", str(self.port), "--data", self.data,
               "--product-id", self.product_id]
        if self.allow_self_register:
            cmd.append("--allow-self-register")
        cmd += self.args
        if self.mqtt_port is not None:
            cmd += ["--mqtt-port", str(self.mqtt_port)]
            if self.mqtt_cert:
                cmd += ["--mqtt-cert", self.mqtt_cert, "--mqtt-key", self.mqtt_key]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        wait_for(self._answers, timeout, message="murano_local on port %d (log: %s)" % (self.port, self.log))
        return self

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            with open(self.log, errors="replace") as f:
                raise GiveUp("murano_local exited %s: %s" % (self.proc.returncode, f.read()[-2000:]))
        return requests.get(self.url + "/timestamp", timeout=1).status_code == 200  # MQTT listens before HTTP

    def _admin(self, method: str, path: str, **kwargs):
        resp = requests.request(method, "%s/api:1/service/%s/device2%s" % (self.url, self.product_id, path),
                                timeout=10, **kwargs)
        resp.raise_for_status()
        return resp

    def info(self) -> dict:
        """Server facts: version, default product, how many long polls are blocked now."""
        resp = requests.get(self.url + "/api:1/info", timeout=10)
        resp.raise_for_status()
        return resp.json()

    def add_device(self, identity: str) -> None:
        """Whitelist ``identity`` so it can activate."""
        self._admin("PUT", "/identity/%s" % quote(identity, safe=""), json={})

    def set(self, identity: str, alias: str, value: str) -> None:
        """Set ``alias`` from the cloud side (only ``set`` changes; long polls wake)."""
        self._admin("PATCH", "/identity/%s/state" % quote(identity, safe=""), json={alias: value})

    def state(self, identity: str) -> dict:
        """``{alias: {"reported", "set", "timestamp"}}``."""
        return self._admin("GET", "/identity/%s/state" % quote(identity, safe="")).json()

    def history(self, identity: str, alias: str, limit: int = 1000) -> list:
        """``[{"timestamp": µs, "value"}]``, newest first."""
        return self._admin("GET", "/identity/%s/history/%s" % (quote(identity, safe=""), quote(alias, safe="")),
                           params={"limit": limit}).json()
