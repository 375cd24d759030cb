#!/usr/bin/env python3
"""murano_local holding many long-polling devices at once (issue 16, goal 5), with same-run anchors.

    python3 bench/murano_local_scale.py [--devices 10000] [--rounds 3] [--seconds 3] [--check] [--json OUT]

One scratch data directory gets ``--devices`` activated devices (once, not timed). Each round
starts a fresh ``murano-local serve`` on it and measures, with this process as every device:

| figure | goal | same-run anchor |
|---|---|---|
| RSS with all polls held | <= 150 MiB | the server's RSS before the polls |
| polls registered per second (connect, send, held) | >= 2,000/s | the same client opening as many connections for ``GET /timestamp`` |
| operator set to its device's 200, p99 over 200 sets | <= 20 ms | the same operator set to a device with no poll |
| write throughput (wrk, 8 connections) with all polls held | >= 0.8x | the same without polls, before and after |
| threads and CPU when every poll hangs up at once | no threads left, <= 1 CPU-s, idle after | the threads before the polls |

``--check`` exits 1 when the median of a figure misses its goal. Figures drift with the machine's
load: read the ratios to the anchors and the spread over rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOALS = {  # figure: (comparison, goal)
    "rss_mib": ("<=", 150.0),
    "registered_per_s": (">=", 2000.0),
    "wake_p99_ms": ("<=", 20.0),
    "write_ratio": (">=", 0.8),
    "threads_left": ("<=", 0),
    "hangup_cpu_s": ("<=", 1.0),
    "cpu_after_hangup_percent": ("<=", 2.0),
}
WAKE_SAMPLES = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data: str) -> None:
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = subprocess.Popen([sys.executable, "-m", "murano_local", "serve", "--port", str(self.port),
                                      "--data", data, "--log-level", "WARNING"], env=dict(os.environ, PYTHONPATH=ROOT))
        self.ps = psutil.Process(self.proc.pid)
        end = time.monotonic() + 20
        while True:
            try:
                if requests.get(self.url + "/timestamp", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > end or self.proc.poll() is not None:
                raise SystemExit("murano-local did not start")
            time.sleep(0.05)
        self.session = requests.Session()

    def waiting(self) -> int:
        return self.session.get(self.url + "/api:1/info", timeout=30).json()["long_polls_waiting"]

    def set(self, identity: str, value: str) -> None:
        self.session.patch(self.url + "/api:1/service/localproduct/device2/identity/%s/state" % identity,
                           json={"cmd": value}, timeout=30).raise_for_status()

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def provision(data: str, count: int) -> list:
    """Whitelist and activate ``count`` devices (tokens cached beside the data)."""
    cache = os.path.join(data, "bench-tokens.json")
    if os.path.exists(cache):
        tokens = json.load(open(cache))
        if len(tokens) >= count:
            return tokens[:count]
    server = Server(data)
    try:
        def one(i: int) -> str:
            with requests.Session() as s:
                s.put(server.url + "/api:1/service/localproduct/device2/identity/d%d" % i, json={},
                      timeout=60).raise_for_status()
                r = s.post(server.url + "/provision/activate", data={"id": "d%d" % i}, timeout=60)
                r.raise_for_status()
                return r.text
        with ThreadPoolExecutor(32) as pool:
            tokens = list(pool.map(one, range(count)))
        server.set("d0", "warm")
    finally:
        server.stop()
    with open(cache, "w") as f:
        json.dump(tokens, f)
    return tokens


def open_requests(port: int, raws: list) -> tuple:
    """Connect once per request and send it; returns (sockets, seconds the client spent)."""
    started = time.monotonic()
    socks = []
    for raw in raws:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(raw)
        socks.append(s)
    return socks, time.monotonic() - started


def poll_request(token: str) -> bytes:
    return ("GET /onep:v1/stack/alias?cmd HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: %s\r\nRequest-Timeout: 300000\r\n\r\n"
            % token).encode()


def registration_anchor(server: Server, count: int) -> float:
    """Connections per second for GET /timestamp: the same client, nothing held."""
    raws = [b"GET /timestamp HTTP/1.1\r\nHost: x\r\n\r\n"] * count
    started = time.monotonic()
    socks, _ = open_requests(server.port, raws)
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    left = len(socks)
    while left:
        for key, _ in sel.select(30):
            if key.fileobj.recv(4096):
                sel.unregister(key.fileobj)
                left -= 1
    rate = count / (time.monotonic() - started)
    for s in socks:
        s.close()
    return rate


def wrk_writes(url: str, token: str, seconds: float, work: str) -> float:
    script = os.path.join(work, "write.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = "temp=42"\nwrk.headers["X-Exosite-CIK"] = "%s"\n'
                'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n' % token)
    out = subprocess.run(["wrk", "-t2", "-c8", "-d%gs" % seconds, "-s", script, url + "/onep:v1/stack/alias"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise SystemExit("wrk got %s non-2xx answers" % bad.group(1))
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def wait_until(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.02)


def one_round(data: str, tokens: list, seconds: float, work: str) -> dict:
    server = Server(data)
    writer = tokens[0]
    figures: dict = {}
    try:
        count = len(tokens) - 1  # tokens[0] writes under wrk
        wrk_writes(server.url, writer, 1, work)  # warm-up
        write_before = wrk_writes(server.url, writer, seconds, work)
        figures["registration_anchor_per_s"] = registration_anchor(server, count)
        time.sleep(0.5)
        figures["rss_mib_before"] = server.ps.memory_info().rss / 2 ** 20
        threads_before = server.ps.num_threads()

        raws = [poll_request(t) for t in tokens[1:]]
        started = time.monotonic()
        socks, client_s = open_requests(server.port, raws)
        wait_until(lambda: server.waiting() >= count, 120, "every poll held")
        figures["registered_per_s"] = count / (time.monotonic() - started)
        figures["client_seconds"] = client_s
        time.sleep(1)
        figures["rss_mib"] = server.ps.memory_info().rss / 2 ** 20
        figures["threads_polling"] = server.ps.num_threads()
        cpu0, t0 = server.cpu(), time.monotonic()
        time.sleep(2)
        figures["idle_cpu_percent_polling"] = 100 * (server.cpu() - cpu0) / (time.monotonic() - t0)

        write_polling = wrk_writes(server.url, writer, seconds, work)

        sample = random.Random(16).sample(range(count), WAKE_SAMPLES)
        wakes, sets = [], []
        for n, i in enumerate(sample):
            t = time.perf_counter()
            server.set("d%d" % (i + 1), "go%d" % n)
            sock = socks[i]
            sock.settimeout(10)
            answer = sock.recv(4096)
            wakes.append(time.perf_counter() - t)
            if not answer.startswith(b"HTTP/1.1 200"):
                raise SystemExit("a woken poll answered %r" % answer[:40])
            t = time.perf_counter()
            server.set("d0", "anchor%d" % n)  # the same set to a device without a poll
            sets.append(time.perf_counter() - t)
        echo = requests.Session()  # the devices echo the sets back, as ExoEdge does: nothing stays pending
        for n, i in enumerate(sample):
            echo.post(server.url + "/onep:v1/stack/alias", data="cmd=go%d" % n, timeout=30,
                      headers={"X-Exosite-CIK": tokens[i + 1]}).raise_for_status()
        figures["wake_p50_ms"] = 1000 * statistics.median(wakes)
        figures["wake_p99_ms"] = 1000 * sorted(wakes)[int(len(wakes) * 0.99) - 1]
        figures["set_alone_p99_ms"] = 1000 * sorted(sets)[int(len(sets) * 0.99) - 1]

        cpu0 = server.cpu()
        started = time.monotonic()
        for s in socks:
            s.close()
        wait_until(lambda: server.waiting() == 0, 60, "every hung-up poll released")
        figures["hangup_seconds"] = time.monotonic() - started
        time.sleep(0.5)
        figures["hangup_cpu_s"] = server.cpu() - cpu0
        figures["threads_left"] = server.ps.num_threads() - threads_before
        cpu0, t0 = server.cpu(), time.monotonic()
        time.sleep(2)
        figures["cpu_after_hangup_percent"] = 100 * (server.cpu() - cpu0) / (time.monotonic() - t0)

        write_after = wrk_writes(server.url, writer, seconds, work)
        figures["write_rps_polling"] = write_polling
        figures["write_rps_anchor"] = (write_before + write_after) / 2
        figures["write_ratio"] = write_polling / figures["write_rps_anchor"]
        figures["registration_ratio"] = figures["registered_per_s"] / figures["registration_anchor_per_s"]
    finally:
        server.stop()
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each wrk write run")
    ap.add_argument("--data", help="reuse this data directory (provisioned devices are kept)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a median misses its goal")
    ap.add_argument("--json", help="write every round's figures here")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.devices + 256:
        raise SystemExit("the open-file limit (%d) is too low for %d devices" % (hard, args.devices))
    work = tempfile.mkdtemp(prefix="murano-local-scale-", dir=os.path.expanduser("~"))
    data = args.data or os.path.join(work, "data")
    try:
        tokens = provision(data, args.devices + 1)
        rounds = [one_round(data, tokens, args.seconds, work) for _ in range(args.rounds)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("%d devices, %d rounds (median, min-max)" % (args.devices, len(rounds)))
    print("| figure | median | min - max | goal |")
    print("|---|---:|---:|---|")
    missed = []
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        median = statistics.median(values)
        goal = GOALS.get(key)
        mark = ""
        if goal:
            ok = median <= goal[1] if goal[0] == "<=" else median >= goal[1]
            mark = "%s %g %s" % (goal[0], goal[1], "ok" if ok else "MISSED")
            if not ok:
                missed.append(key)
        print("| %s | %.2f | %.2f - %.2f | %s |" % (key, median, min(values), max(values), mark))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rounds, f, indent=2)
    if missed:
        print("missed: " + ", ".join(missed))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
