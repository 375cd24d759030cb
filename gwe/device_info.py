"""The ``device_info`` report: what the original sent (command text) plus structured figures.

The original's four keys come first and in the original's order, ``df, uname, ipaddrs, free``:
the order Python 2 gave the original's dict (its string hashes put them in slots 0, 1, 2 and 6
of an 8-slot table, on 32- and 64-bit alike). Exosite's own dashboard (GWE-MrMurano-Example-App,
``modules/GWE.lua``) parses the JSON text positionally: it reads disk rows from the first
escaped newline (df's header) up to the first ``uname`` and the addresses from the first ``[``
after ``ipaddrs``. The report is therefore written with its keys in this order, never sorted.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from typing import Dict, List, Optional

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 10


def _command_text(argv: List[str]) -> Optional[str]:
    """stdout of a fixed command (never a shell) without its final newline, or None when it is
    missing or fails. GWE.lua finds df's last row by the absence of a newline after it."""
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              timeout=COMMAND_TIMEOUT_S, check=False, env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("%s failed: %s", argv[0], exc)
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", errors="replace").rstrip("\n")


def _uname_text() -> str:
    text = _command_text(["uname", "-a"])
    if text is not None:
        return text.strip()
    u = os.uname()
    return " ".join((u.sysname, u.nodename, u.release, u.version, u.machine))


def _free_text(psutil) -> str:
    text = _command_text(["free"])
    if text is not None:
        return text
    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    kib = lambda n: n // 1024  # noqa: E731
    return ("              total        used        free      shared  buff/cache   available\n"
            "Mem: %14d %11d %11d %11d %11d %11d\nSwap: %13d %11d %11d"
            % (kib(vm.total), kib(vm.used), kib(vm.free), kib(getattr(vm, "shared", 0)),
               kib(getattr(vm, "buffers", 0) + getattr(vm, "cached", 0)), kib(vm.available),
               kib(sw.total), kib(sw.used), kib(sw.free)))


def _df_text(disks: List[dict]) -> str:
    text = _command_text(["df"])
    if text is not None:
        return text
    lines = ["Filesystem     1K-blocks     Used Available Use% Mounted on"]
    for d in disks:
        lines.append("%-14s %9d %8d %9d %3d%% %s" % (d["device"], d["total"] // 1024, d["used"] // 1024,
                                                  d["free"] // 1024, round(d["percent"]), d["mount"]))
    return "\n".join(lines)


def ip_addresses(psutil) -> Dict[str, List[str]]:
    """``{iface: [addresses]}`` for IPv4 and IPv6 addresses of every interface."""
    result: Dict[str, List[str]] = {}
    for iface, addrs in sorted(psutil.net_if_addrs().items()):
        result[iface] = [a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
    return result


def _disks(psutil) -> List[dict]:
    disks = []
    for part in psutil.disk_partitions(all=False):
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError:
            continue
        disks.append({"device": part.device, "mount": part.mountpoint, "fstype": part.fstype,
                      "total": usage.total, "used": usage.used, "free": usage.free, "percent": usage.percent})
    return disks


def device_info() -> dict:
    """Collect the report, keys in wire order (module docstring). Every field is best effort: a
    missing tool never fails it."""
    import psutil

    disks = _disks(psutil)
    vm = psutil.virtual_memory()
    boot = psutil.boot_time()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "df": _df_text(disks),
        "uname": _uname_text(),
        "ipaddrs": ip_addresses(psutil),
        "free": _free_text(psutil),
        "date": time.strftime("%a %b %d %H:%M:%S %Z %Y"),
        "hostname": socket.gethostname(),
        "timestamp": int(time.time()),
        "uptime_s": int(time.time() - boot),
        "cpu": {"count": psutil.cpu_count() or 1, "percent": psutil.cpu_percent(interval=None), "load_avg": load},
        "memory": {"total": vm.total, "available": vm.available, "used": vm.used, "percent": vm.percent},
        "disks": disks,
    }
