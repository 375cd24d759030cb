"""Simulated gateways: many lightweight ones in one process, talking the Device API through
``device_client`` like gwe does, so a fleet of 1,000 or 10,000 runs on one machine.

Each gateway writes ``device_info``, ``engine_report`` and ``usage_report`` in gwe's shapes
every report interval, reads ``engine_fetch`` every poll interval (a read rather than a held
long poll, so a gateway costs no connection while it waits), and answers an install request
with the outcome drawn for it from the mix:

- ``success``: clears ``engine_fetch``, then ``fetch_status`` installed, the app at the new
  version RUNNING and an ``engine_report`` at once;
- ``failed`` / ``rolled_back``: clears it, then that ``fetch_status``; the old version runs on;
- ``crash``: installed, but the new version goes FATAL (the health window catches it);
- ``silent``: never answers (an offline or wedged gateway).

Like gwe, a gateway loses a ``fetch_status`` it cannot write (the server down) and polls on.

A few worker threads share the gateways (each worker its own HTTP session and schedule).
"""
from __future__ import annotations

import hashlib
import heapq
import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote

log = logging.getLogger(__name__)

OUTCOMES = ("success", "failed", "rolled_back", "crash", "silent")
GIB = 1024 ** 3


class SimulationError(Exception):
    """Bad simulation options, or a server that refuses the fleet."""


def parse_mix(text: str) -> List[Tuple[str, float]]:
    """``success=0.9,silent=0.1`` -> cumulative ``[(outcome, upper bound)]`` over [0, 1)."""
    weights: Dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in OUTCOMES:
            raise SimulationError("unknown outcome %r in --mix (use %s)" % (name, ", ".join(OUTCOMES)))
        try:
            weights[name] = float(weight or "1")
        except ValueError:
            raise SimulationError("weight of %s must be a number" % name)
        if not weights[name] >= 0:
            raise SimulationError("weight of %s must not be negative" % name)
    total = sum(weights.values())
    if total <= 0:
        raise SimulationError("--mix needs a positive weight")
    bounds, acc = [], 0.0
    for name, weight in weights.items():
        acc += weight / total
        bounds.append((name, acc))
    return bounds


def draw(bounds: List[Tuple[str, float]], serial: str, seed: int) -> str:
    """The outcome of ``serial``: the same for the same seed, spread as the mix says."""
    u = int.from_bytes(hashlib.sha256(("%d/%s" % (seed, serial)).encode()).digest()[:8], "big") / 2 ** 64
    for name, bound in bounds:
        if u < bound:
            return name
    return bounds[-1][0]


def parse_tag(text: str) -> Tuple[str, float]:
    name, _, share = text.partition("=")
    if not share:
        return name, 1.0
    try:
        value = float(share.rstrip("%")) / (100.0 if share.endswith("%") else 1.0)
    except ValueError:
        raise SimulationError("tag share must look like canary=10%%, not %r" % text)
    return name, min(max(value, 0.0), 1.0)


def parse_app(text: str) -> Tuple[str, str]:
    name, sep, version = text.partition(".v")
    if not sep or not name or not version:
        raise SimulationError("--app must look like NAME.vVERSION, not %r" % text)
    return name, version


class SimulatedGateway:
    """One gateway's state and the reports gwe would write for it (no I/O here)."""

    def __init__(self, serial: str, outcome: str, apps: Sequence[Tuple[str, str]], rng: random.Random) -> None:
        self.serial = serial
        self.outcome = outcome
        self.rng = rng
        now = time.time()
        self.booted = now - rng.uniform(3600, 30 * 86400)
        self.apps: Dict[str, dict] = {"gwe": {"version": "0.1.0", "status": "RUNNING", "started": now},
                                      "gmq": {"version": "0.1.0", "status": "RUNNING", "started": now}}
        for name, version in apps:
            self.apps[name] = {"version": version, "status": "RUNNING", "started": now}
        self.cpu = rng.uniform(2, 30)
        self.memory = rng.uniform(20, 60)
        self.disk = rng.uniform(10, 70)
        self.depth = 0
        self.accepted = 0
        self.delivered = 0
        self.requests = 0
        self.device = None  # device_client.Device, set when activated
        self.installing: Optional[str] = None

    def _walk(self, value: float, step: float, low: float = 0.0, high: float = 100.0) -> float:
        return min(high, max(low, value + self.rng.uniform(-step, step)))

    def device_info(self, now: float) -> dict:
        self.cpu = self._walk(self.cpu, 8)
        self.memory = self._walk(self.memory, 2, 5, 95)
        self.disk = self._walk(self.disk, 0.3, 1, 99)
        total_mem, total_disk = 1 * GIB, 16 * GIB
        used_disk = int(total_disk * self.disk / 100)
        return {
            "uname": "Linux %s 6.1.0-sim #1 SMP armv7l GNU/Linux" % self.serial,
            "df": "Filesystem     1K-blocks     Used Available Use%% Mounted on\n/dev/root %d %d %d %d%% /\n"
                  % (total_disk // 1024, used_disk // 1024, (total_disk - used_disk) // 1024, round(self.disk)),
            "free": "              total        used        free\nMem: %14d %11d %11d\n"
                    % (total_mem // 1024, int(total_mem * self.memory / 100) // 1024,
                       int(total_mem * (100 - self.memory) / 100) // 1024),
            "ipaddrs": {"lo": ["127.0.0.1"], "eth0": ["10.0.0.%d" % (hash(self.serial) % 250 + 2)]},
            "date": time.strftime("%a %b %d %H:%M:%S %Z %Y", time.localtime(now)),
            "hostname": self.serial, "timestamp": int(now), "uptime_s": int(now - self.booted),
            "cpu": {"count": 4, "percent": round(self.cpu, 1), "load_avg": [round(self.cpu / 25, 2), 0.5, 0.4]},
            "memory": {"total": total_mem, "available": int(total_mem * (100 - self.memory) / 100),
                       "used": int(total_mem * self.memory / 100), "percent": round(self.memory, 1)},
            "disks": [{"device": "/dev/root", "mount": "/", "fstype": "ext4", "total": total_disk, "used": used_disk,
                       "free": total_disk - used_disk, "percent": round(self.disk, 1)}],
        }

    def engine_report(self, now: float) -> dict:
        new = self.rng.randint(0, 40)
        self.accepted += new
        self.depth = max(0, self.depth + new - self.rng.randint(0, 45))
        self.delivered = self.accepted - self.depth
        apps = []
        for name in sorted(self.apps):
            app = self.apps[name]
            running = app["status"] == "RUNNING"
            apps.append({name: {"exitstatus": 0 if running else 1, "status": app["status"],
                                "uptime": int(now - app["started"]) if running else 0, "version": app["version"]}})
        return {"apps": apps, "gwe_version": "0.1.0", "gmq_version": "0.1.0", "device_client_version": "0.1.0",
                "build_id": "simulated", "timestamp": int(now),
                "connection": {"state": "connected", "since": self.booted, "checked": now, "last_error": None,
                               "last_error_at": None, "next_retry": None, "retry_in": None},
                "gmq": {"version": "0.1.0", "counters": {"accepted": self.accepted, "delivered": self.delivered},
                        "alarms": [], "queue": {"depth": self.depth, "bytes": self.depth * 40}}}

    def usage_report(self) -> dict:
        calls, self.requests = self.requests, 0
        return {"eth0": {"gwe": {"write:['device_info', 'engine_report', 'usage_report']": {
            "num": max(calls, 1), "type": "post", "tot_rx": 180 * max(calls, 1), "max_rx": 180,
            "tot_tx": 5200 * max(calls, 1), "max_tx": 5200, "rq_time_avg": 0.004, "rq_time_max": 0.01}},
            "top_consumer": "gwe"}}

    def install(self, package: str, now: float) -> Optional[dict]:
        """Finish an install of ``package``: the new state and the fetch_status (None: stay silent)."""
        name, _, rest = package.partition(".v")
        version = rest[:-len(".tar.gz")] if rest.endswith(".tar.gz") else rest
        previous = self.apps.get(name, {}).get("version")
        status = {"name": name, "version": version, "package": package, "exit_code": 0, "output": "",
                  "error": None, "step": None, "previous_version": previous, "running_version": version,
                  "timings": {"total": 1.0}, "started_at": now - 1, "finished_at": now, "status": "installed"}
        if previous == version:  # as otau answers a repeated request
            status.update(output="%s %s is already installed; nothing done" % (name, version))
        elif self.outcome == "failed":
            status.update(status="failed", exit_code=1, step="install", error="install.sh exited 1",
                          running_version=previous)
        elif self.outcome == "rolled_back":
            status.update(status="rolled_back", step="health", running_version=previous,
                          error="%s %s did not stay RUNNING; rolled back to %s" % (name, version, previous))
        else:
            self.apps[name] = {"version": version, "started": now,
                               "status": "FATAL" if self.outcome == "crash" else "RUNNING"}
        return status


class Simulator:
    """``count`` simulated gateways against the murano_local at ``url`` (product ``pid``)."""

    def __init__(self, url: str, pid: str, count: int, prefix: str = "sim-", tags: Sequence[str] = (),
                 mix: str = "success=1", apps: Sequence[str] = ("sensor.v1",), report_interval: float = 60.0,
                 poll_interval: float = 5.0, install_seconds: float = 2.0, threads: int = 16, seed: int = 1) -> None:
        if report_interval <= 0 or poll_interval <= 0 or install_seconds < 0:
            raise SimulationError("intervals must be positive")
        self.url = url.rstrip("/")
        self.pid = pid
        self.bounds = parse_mix(mix)
        self.tags = [parse_tag(t) for t in tags]
        self.report_interval = report_interval
        self.poll_interval = poll_interval
        self.install_seconds = install_seconds
        self.threads = min(threads, count)
        self.seed = seed
        app_list = [parse_app(a) for a in apps]
        width = max(5, len(str(count)))
        serials = ["%s%0*d" % (prefix, width, i + 1) for i in range(count)]
        self.gateways = [SimulatedGateway(serial, draw(self.bounds, serial, seed), app_list,
                                          random.Random("%d/%s" % (seed, serial))) for serial in serials]
        self._threads: List[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.counts = {"reports": 0, "polls": 0, "installs": 0, "errors": 0}

    # -- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Whitelist, tag and activate every gateway (in parallel)."""
        import requests

        try:
            self._setup(requests.Session())
        except requests.RequestException as exc:
            raise SimulationError("cannot set the fleet up on %s: %s" % (self.url, exc.__class__.__name__))

    def _setup(self, session) -> None:
        admin = "%s/api:1/service/%s" % (self.url, quote(self.pid, safe=""))
        rng = random.Random(self.seed)

        def prepare(gw: SimulatedGateway) -> None:
            ident = quote(gw.serial, safe="")
            resp = session.put("%s/device2/identity/%s" % (admin, ident), json={}, timeout=30)
            if resp.status_code not in (201, 204):
                raise SimulationError("cannot whitelist %s: %d %s" % (gw.serial, resp.status_code, resp.text[:80]))
            if resp.status_code == 204:  # there from an earlier run: let it activate again
                session.patch("%s/device2/identity/%s" % (admin, ident), json={"reprovision": True}, timeout=30)

        tag_of = {gw.serial: [name for name, share in self.tags if rng.random() < share] for gw in self.gateways}

        def tag(gw: SimulatedGateway) -> None:
            if tag_of[gw.serial]:
                session.post("%s/fleet/gateways/%s/tags" % (admin, quote(gw.serial, safe="")),
                             json={"add": tag_of[gw.serial]}, timeout=30).raise_for_status()

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(prepare, self.gateways))
            list(pool.map(tag, self.gateways))
        self._workers = [self._gateways_of(i) for i in range(self.threads)]
        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(self._activate_all, range(self.threads)))

    def _gateways_of(self, worker: int) -> List[SimulatedGateway]:
        return self.gateways[worker::self.threads]

    def _transport(self):
        from device_client.transport_http import HttpTransport

        return HttpTransport(self.url, user_agent="murano-local-simulator", read_timeout=30.0)

    def _activate_all(self, worker: int) -> None:
        from device_client import Device

        transport = self._transport()
        for gw in self._workers[worker]:
            gw.device = Device(self.url, product_id=self.pid, serial=gw.serial, identity="gwe", usage_db=False,
                               transport=transport)
            try:
                gw.device.activate()
            except Exception as exc:
                raise SimulationError("%s cannot activate: %s" % (gw.serial, exc))

    # -- running -------------------------------------------------------------------------
    def run(self, duration: Optional[float] = None) -> None:
        """Run until ``duration`` seconds passed or :meth:`stop`."""
        self.start()
        try:
            self._stop.wait(duration)
        finally:
            self.stop()

    def start(self) -> None:
        """Run the gateways in worker threads until :meth:`stop`."""
        self._threads = [threading.Thread(target=self._work, args=(i,), name="sim-%d" % i, daemon=True)
                         for i in range(self.threads)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _work(self, worker: int) -> None:
        gateways = self._workers[worker]
        rng = random.Random("%d/worker/%d" % (self.seed, worker))
        now = time.monotonic()
        schedule: list = []
        for n, gw in enumerate(gateways):  # spread the first reports and polls over their intervals
            heapq.heappush(schedule, (now + rng.uniform(0, min(self.report_interval, 5.0)), n, "report", gw, None))
            heapq.heappush(schedule, (now + rng.uniform(0, self.poll_interval), n, "poll", gw, None))
        seq = len(gateways)
        while not self._stop.is_set():
            due, _n, what, gw, arg = schedule[0]
            wait = due - time.monotonic()
            if wait > 0:
                if self._stop.wait(min(wait, 0.5)):
                    return
                continue
            heapq.heappop(schedule)
            try:
                follow = self._act(what, gw, arg)
            except Exception as exc:  # a refused or failed call: count it and go on, as a gateway would retry
                log.debug("%s %s failed: %s", gw.serial, what, exc)
                self._count("errors")
                # a fetch_status that could not be written is lost, as gwe loses it; polling goes on
                follow = [(self.poll_interval, "poll", None)] if what == "installed" else []
            if what == "report":
                follow.append((self.report_interval, "report", None))
            elif what == "poll" and gw.installing is None:
                follow.append((self.poll_interval, "poll", None))
            for delay, next_what, next_arg in follow:
                seq += 1
                heapq.heappush(schedule, (time.monotonic() + delay, seq, next_what, gw, next_arg))

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def _report(self, gw: SimulatedGateway) -> None:
        now = time.time()
        gw.requests += 1
        gw.device.write({"device_info": json.dumps(gw.device_info(now), sort_keys=True),
                         "engine_report": json.dumps(gw.engine_report(now), sort_keys=True),
                         "usage_report": json.dumps(gw.usage_report(), sort_keys=True)})
        self._count("reports")

    def _act(self, what: str, gw: SimulatedGateway, arg) -> list:
        if what == "report":
            self._report(gw)
            return []
        if what == "poll":
            self._count("polls")
            raw = gw.device.read("engine_fetch").get("engine_fetch", "")
            package = _requested_package(raw)
            if package is None or gw.outcome == "silent":
                return []
            gw.device.write({"engine_fetch": ""})  # taken, as gwe signals it
            gw.installing = package
            return [(self.install_seconds, "installed", package)]
        if what == "installed":
            status = gw.install(arg, time.time())
            gw.installing = None
            gw.device.write({"fetch_status": json.dumps(status, sort_keys=True)})
            self._count("installs")
            self._report(gw)  # at once after an install, as gwe does
            return [(self.poll_interval, "poll", None)]
        raise ValueError(what)

    def stats_line(self) -> str:
        outcomes: Dict[str, int] = {}
        for gw in self.gateways:
            outcomes[gw.outcome] = outcomes.get(gw.outcome, 0) + 1
        return "simulated %d gateways (%s): %d reports, %d polls, %d installs, %d errors" % (
            len(self.gateways), ", ".join("%s %d" % kv for kv in sorted(outcomes.items())),
            self.counts["reports"], self.counts["polls"], self.counts["installs"], self.counts["errors"])


def _requested_package(raw: str) -> Optional[str]:
    if not raw or not raw.strip():
        return None
    try:
        request = json.loads(raw)
        return str(request["install"][0]["name"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
