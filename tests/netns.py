"""murano_local in its own network namespace, joined to the gateway's (the test's) by a veth pair.

The namespace and the pair are created by the test and removed afterwards (``ip netns``; root
only). The link can be flapped for real (``ip link set ... down``). Where namespaces cannot be
made (no root), ``cloud_network`` falls back to loopback and the flap is the fault proxy's.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from typing import Optional

from harness import MuranoLocal, free_port, wait_for

_counter = itertools.count()


def _ip(*args: str, ns: Optional[str] = None) -> None:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip"] + list(args)
    subprocess.run(cmd, check=True, capture_output=True)


class CloudNamespace:
    """A namespace ``name`` holding one end of a veth pair (``address``); the host end is
    ``host_address``. Addresses are in 10.231.0.0/16, one /30 per namespace."""

    def __init__(self) -> None:
        n = (os.getpid() * 64 + next(_counter)) % 16384
        self.name = "gwelab%d" % n
        self.host_if, self.ns_if = "glh%d" % n, "gln%d" % n
        base = n * 4
        self.host_address = "10.231.%d.%d" % (base // 256, base % 256 + 1)
        self.address = "10.231.%d.%d" % (base // 256, base % 256 + 2)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", self.host_address + "/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("addr", "add", self.address + "/30", "dev", self.ns_if, ns=self.name)
            _ip("link", "set", self.ns_if, "up", ns=self.name)
            _ip("link", "set", "lo", "up", ns=self.name)
        except BaseException:
            self.close()
            raise

    def link(self, up: bool) -> None:
        _ip("link", "set", self.host_if, "up" if up else "down")

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def namespaces_available() -> bool:
    if os.geteuid() != 0:
        return False
    probe = "gwelabprobe%d" % os.getpid()
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ok


class NamespacedMurano(MuranoLocal):
    """murano_local serving inside ``ns`` on its veth address (reached from the host over the pair)."""

    def __init__(self, workdir: str, ns: Optional[CloudNamespace]) -> None:
        super().__init__(workdir)
        self.ns = ns
        if ns is not None:
            self.port = free_port()
            self.host = ns.address
            self.url = "http://%s:%d" % (ns.address, self.port)
        else:
            self.host = "127.0.0.1"

    def start(self, timeout: float = 15.0) -> "NamespacedMurano":
        os.makedirs(self.workdir, exist_ok=True)
        cmd = [sys.executable, "-m", "murano_local", "serve", "--port", str(self.port), "--data", self.data,
               "--product-id", self.product_id, "--host", self.host]
        if self.ns is not None:
            cmd = ["ip", "netns", "exec", self.ns.name] + cmd
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        wait_for(self._answers, timeout, message="murano_local at %s (log: %s)" % (self.url, self.log))
        return self
