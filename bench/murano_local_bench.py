#!/usr/bin/env python3
"""murano_local figures: write/read throughput under wrk, and what idle long polls cost.

    python3 bench/murano_local_bench.py [--levels 1,8,32] [--seconds 3] [--repeat 3] [--polls 500]
                                        [--no-anchor] [--json OUT] [--baseline OLD.json]

Runs a real ``murano-local serve`` on 127.0.0.1 with a scratch data directory, then:

1. ``POST /onep:v1/stack/alias`` (``temp=42``, one durable sqlite commit per request) and
   ``GET /onep:v1/stack/alias?temp`` with wrk at each connection level;
2. holds ``--polls`` long polls open (Request-Timeout 300000) and samples the server's CPU
   time and RSS over 5 s of idleness, then wakes them all with operator sets and times that.

This machine drifts, so unless ``--no-anchor`` the anchor ``http_ceiling.py --durable
--backlog 128`` (a naive durable ThreadingHTTPServer, reference anchors-bench.md §4b) runs in
the same invocation and write throughput is also reported as a ratio to it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHOR = "/work/shared/bench-anchors/http_ceiling.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if requests.get(url + "/timestamp", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise SystemExit("murano-local did not start")


def to_ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", value)
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def wrk(url: str, script: str, conns: int, seconds: float) -> dict:
    cmd = ["wrk", "-t%d" % min(2, conns), "-c%d" % conns, "-d%gs" % seconds, "--latency", "-s", script, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": to_ms(lat["50"]), "p99": to_ms(lat["99"]), "non2xx": int(bad.group(1)) if bad else 0}


def lua(path: str, method: str, token: str, body: str = "") -> str:
    with open(path, "w") as f:
        f.write('wrk.method = "%s"\nwrk.headers["X-Exosite-CIK"] = "%s"\n' % (method, token))
        if body:
            f.write('wrk.body = "%s"\nwrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n' % body)
    return path


def summarize(runs: list) -> dict:
    rps = [r["rps"] for r in runs]
    return {"rps_min": min(rps), "rps_median": statistics.median(rps), "rps_max": max(rps),
            "p50_ms": statistics.median(r["p50"] for r in runs), "p99_ms": statistics.median(r["p99"] for r in runs),
            "non2xx": sum(r["non2xx"] for r in runs)}


def throughput(url: str, token: str, work: str, levels: list, seconds: float, repeat: int) -> dict:
    scripts = {"write": lua(os.path.join(work, "write.lua"), "POST", token, "temp=42"),
               "read": lua(os.path.join(work, "read.lua"), "GET", token)}
    paths = {"write": "/onep:v1/stack/alias", "read": "/onep:v1/stack/alias?temp"}
    result = {}
    for kind in ("write", "read"):
        for level in levels:
            wrk(url + paths[kind], scripts[kind], level, 1)
            result["%s_c%d" % (kind, level)] = summarize(
                [wrk(url + paths[kind], scripts[kind], level, seconds) for _ in range(repeat)])
    return result


def idle_polls(url: str, proc: psutil.Process, count: int) -> dict:
    """Hold ``count`` long polls, sample the server's CPU and RSS while idle, then wake them all."""
    tokens = []
    for i in range(count):
        requests.put(url + "/api:1/service/localproduct/device2/identity/poll%d" % i, json={}, timeout=30).raise_for_status()
        tokens.append(requests.post(url + "/provision/activate", data={"id": "poll%d" % i}, timeout=30).text)
    rss_before = proc.memory_info().rss
    socks = []
    for token in tokens:
        s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        s.sendall(("GET /onep:v1/stack/alias?cmd HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: %s\r\n"
                   "Request-Timeout: 300000\r\n\r\n" % token).encode())
        socks.append(s)
    end = time.monotonic() + 30
    while requests.get(url + "/api:1/info", timeout=30).json()["long_polls_waiting"] < count:
        if time.monotonic() > end:
            raise SystemExit("long polls did not all block")
        time.sleep(0.1)
    cpu0, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(5)
    cpu1, t1 = proc.cpu_times(), time.monotonic()
    idle_cpu = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / (t1 - t0)
    rss_polling = proc.memory_info().rss
    started = time.monotonic()
    session = requests.Session()
    for i in range(count):
        session.patch(url + "/api:1/service/localproduct/device2/identity/poll%d/state" % i,
                      json={"cmd": "go"}).raise_for_status()
    answered = 0
    for s in socks:
        s.settimeout(30)
        if s.recv(4096).startswith(b"HTTP/1.1 200"):
            answered += 1
        s.close()
    return {"polls": count, "idle_cpu_percent": round(100 * idle_cpu, 3),
            "rss_mib_before": round(rss_before / 2 ** 20, 1), "rss_mib_polling": round(rss_polling / 2 ** 20, 1),
            "threads_polling": proc.num_threads(), "wake_all_seconds": round(time.monotonic() - started, 3),
            "answered_200": answered}


def anchor(levels: list, seconds: float, repeat: int) -> dict:
    out = subprocess.run([sys.executable, ANCHOR, "--durable", "--backlog", "128", "--levels",
                          ",".join(map(str, levels)), "--seconds", str(seconds), "--repeat", str(repeat)],
                         capture_output=True, text=True, timeout=600).stdout
    result = {}
    for row in re.findall(r"^\| (\d+) \| [\d,]+ \| ([\d,]+) \|", out, re.M):
        result["write_c%s" % row[0]] = float(row[1].replace(",", ""))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--polls", type=int, default=500)
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--baseline", help="a previous --json output to compare medians with")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    work = tempfile.mkdtemp(prefix="murano-local-bench-", dir=os.path.expanduser("~"))
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    env = dict(os.environ, PYTHONPATH=ROOT)
    server = subprocess.Popen([sys.executable, "-m", "murano_local", "serve", "--port", str(port),
                               "--data", os.path.join(work, "data"), "--log-level", "WARNING"], env=env)
    figures = {}
    try:
        wait_up(url)
        requests.put(url + "/api:1/service/localproduct/device2/identity/bench", json={}, timeout=30).raise_for_status()
        token = requests.post(url + "/provision/activate", data={"id": "bench"}, timeout=30).text
        figures.update(throughput(url, token, work, levels, args.seconds, args.repeat))
        figures["long_polls"] = idle_polls(url, psutil.Process(server.pid), args.polls)
    finally:
        server.terminate()
        server.wait(10)
        subprocess.run(["rm", "-rf", work])
    if not args.no_anchor:
        anchors = anchor(levels, args.seconds, args.repeat)
        figures["anchor_durable_rps"] = anchors
        for key, rps in anchors.items():
            figures[key]["ratio_to_anchor"] = round(figures[key]["rps_median"] / rps, 3)

    print("| case | req/s min / median / max | p50 ms | p99 ms | ratio to anchor | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, row in figures.items():
        if key.startswith(("write_", "read_")):
            print("| %s | %s / %s / %s | %.2f | %.2f | %s | %d |" % (
                key, "{:,.0f}".format(row["rps_min"]), "{:,.0f}".format(row["rps_median"]),
                "{:,.0f}".format(row["rps_max"]), row["p50_ms"], row["p99_ms"],
                row.get("ratio_to_anchor", "-"), row["non2xx"]))
    print("long polls:", json.dumps(figures["long_polls"]))
    if "anchor_durable_rps" in figures:
        print("anchor (naive durable server, same run) req/s medians:", json.dumps(figures["anchor_durable_rps"]))
    if args.baseline:
        with open(args.baseline) as f:
            old = json.load(f)
        for key, row in figures.items():
            if key.startswith(("write_", "read_")) and key in old:
                print("%s: median %.0f vs baseline %.0f (x%.2f)" % (
                    key, row["rps_median"], old[key]["rps_median"], row["rps_median"] / old[key]["rps_median"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
