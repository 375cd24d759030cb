#!/usr/bin/env python3
"""gmq's drain of a large backlog to murano_local, beside a bare client in the same run (issue 16, goals 1, 4).

    python3 bench/drain_bench.py [--size 1000000] [--rounds 3] [--anchor-size 200000] [--transport mqtt]
                                 [--check] [--json OUT]

Per round, on a fresh murano_local: the anchor, a bare ``device_client.Device`` posting the same
record batches gmq sends (``batch_size`` values of one alias, original timestamps) one after the
other; then gmq is filled with ``--size`` values while it has no upstream, pointed at murano_local
(``gmq reread``) and timed until its queue is empty; the anchor again. The drain rate is over the
whole backlog and per tenth of it (first vs last tenth: "flat"). ``--transport mqtt`` runs
both over murano_local's MQTT port instead (gmq ``[upstream] transport = mqtt``, the bare client
``Device(transport="mqtt")``: records as ``$resource.batch``). gmq's RSS is sampled idle, at every
quarter of the fill, and while draining, beside the same round's ``import requests`` floor.

Goals (``--check`` exits 1 on a miss): drain >= 0.8x the anchor (median of per-round ratios),
last tenth >= 0.8x the first, gmq RSS at every sample <= 1.10x the floor.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gmq_bench import Gmq, Proc, free_port, rss_mib, settled_rss  # noqa: E402
from goals import exit_status, met  # noqa: E402

PER_REQUEST = 500  # values per fill request
BATCH = 500        # gmq's default batch_size, and the anchor's batch
MIN_SIZE = 50000   # drains in ~2 s here: each tenth spans several of the 50 ms depth samples


def add_device(murl: str, serial: str) -> None:
    req = urllib.request.Request(murl + "/api:1/service/localproduct/device2/identity/" + serial, data=b"{}",
                                 method="PUT", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).close()


def stamp(base: int, i: int) -> float:
    return base + i / 1000.0  # a millisecond apart


def anchor(murl: str, serial: str, size: int, base: int, mqtt_url: Optional[str], work: str) -> float:
    """Values/s murano_local accepts from a bare Device posting BATCH-value records back to back.

    It logs its requests as gmq's Device does, into a usage log of its own in ``work`` (not the
    machine's gateway home)."""
    from device_client import Device

    dev = Device(host=murl, product_id="localproduct", serial=serial, identity="bench",
                 usage_db=os.path.join(work, "anchor-usage.db"),
                 transport="mqtt" if mqtt_url else None, mqtt_url=mqtt_url)
    dev.activate()
    batches = [{"v": [(round(stamp(base, i), 6), str(i)) for i in range(b, min(b + BATCH, size))]}
               for b in range(0, size, BATCH)]
    start = time.monotonic()
    for payload in batches:
        dev.record(payload)
    elapsed = time.monotonic() - start
    dev.close()
    return size / elapsed


def fill(gmq: Gmq, serial: str, size: int, base: int, rss: list) -> None:
    sock = socket.create_connection(("127.0.0.1", gmq.port))
    quarter = max(1, size // PER_REQUEST // 4)
    for n in range(size // PER_REQUEST):
        first = n * PER_REQUEST
        body = "&".join("%.3f=%d" % (stamp(base, first + i), first + i) for i in range(PER_REQUEST)).encode()
        sock.sendall(b"POST /onep:v1/stack/alias/v HTTP/1.1\r\nHost: gmq\r\nX-Exosite-VMS: localproduct "
                     b"localproduct %s\r\nContent-Length: %d\r\n\r\n" % (serial.encode(), len(body)) + body)
        answer = sock.recv(4096)
        if not answer.startswith(b"HTTP/1.1 204"):
            raise SystemExit("fill failed: %r" % answer[:200])
        if (n + 1) % quarter == 0:
            rss.append(("%d queued" % ((n + 1) * PER_REQUEST), rss_mib(gmq.pid)))
    sock.close()


def drain(gmq: Gmq, murl: str, size: int, rss: list, timeout: float, mqtt_url: Optional[str] = None) -> dict:
    gmq.set("upstream", "host", murl)
    if mqtt_url:
        gmq.set("upstream", "transport", "mqtt")
        gmq.set("upstream", "mqtt_url", mqtt_url)
    gmq.set("upstream", "backoff_initial", "0.05")
    gmq.set("upstream", "backoff_max", "1")
    marks = [size - size * k // 10 for k in range(1, 11)]  # depth at the end of each tenth
    times = []
    start = time.monotonic()
    gmq.reread()
    peak = 0.0
    while marks:
        depth = gmq.status()["queue"]["depth"]
        peak = max(peak, rss_mib(gmq.pid))
        now = time.monotonic()
        while marks and depth <= marks[0]:
            marks.pop(0)
            times.append(now - start)
        if now - start > timeout:
            raise SystemExit("drain did not finish in %g s (depth %d)" % (timeout, depth))
        time.sleep(0.05)
    rss.append(("draining (max)", peak))
    tenths = tenth_rates(size, times)
    st = gmq.status()
    return {"drain_s": times[-1], "drain_values_s": size / times[-1], "first_tenth_s": tenths[0],
            "last_tenth_s": tenths[-1], "tenths": [round(t) for t in tenths],
            "delivered": st["counters"]["delivered"], "resent": st["counters"]["resent"]}


def tenth_rates(size: int, times: list) -> list:
    """Values/s of each tenth from the times its end was seen; tenths seen in one sample share its interval."""
    rates, start, i = [], 0.0, 0
    while i < len(times):
        j = i
        while j + 1 < len(times) and times[j + 1] == times[i]:
            j += 1
        n = j - i + 1
        rates += [size / 10 * n / max(times[i] - start, 1e-9)] * n
        start, i = times[i], j + 1
    return rates


def one_round(work: str, rnd: int, args) -> dict:
    mport = free_port()
    mdir = os.path.join(work, "murano-%d" % rnd)
    serve = [sys.executable, "-m", "murano_local", "serve", "--port", str(mport), "--data", mdir,
             "--log-level", "WARNING"]
    mqtt_url = None
    if args.transport == "mqtt":
        qport = free_port()
        serve += ["--mqtt-port", str(qport)]
        mqtt_url = "mqtt://127.0.0.1:%d" % qport
    murano = Proc(serve, mport, dict(os.environ, PYTHONPATH=ROOT), os.path.join(work, "ml.log"))
    murl = "http://127.0.0.1:%d" % mport
    gmq = None
    try:
        for serial in ("anchor-1", "anchor-2", "drain-1"):
            add_device(murl, serial)
        base = 1600000000 + rnd * 100000
        before = anchor(murl, "anchor-1", args.anchor_size, base, mqtt_url, work)
        gmq = Gmq(work, "gmq-drain-%d" % rnd, {("queue", "max_bytes"): 1 << 30})
        time.sleep(1.0)
        rss = [("idle", rss_mib(gmq.pid))]
        fill(gmq, "drain-1", args.size, base, rss)
        fig = drain(gmq, murl, args.size, rss, args.timeout, mqtt_url)
        gmq.stop()
        gmq = None
        after = anchor(murl, "anchor-2", args.anchor_size, base, mqtt_url, work)
    finally:
        if gmq is not None:
            gmq.stop()
        murano.stop()
        shutil.rmtree(mdir, ignore_errors=True)
    floor = settled_rss([sys.executable, "-c", "import requests, time; time.sleep(60)"])
    fig.update({"anchor_values_s": statistics.mean([before, after]), "anchor_before": before, "anchor_after": after,
                "rss": rss, "rss_max_mib": max(v for _, v in rss), "requests_floor_mib": floor})
    fig["ratio"] = fig["drain_values_s"] / fig["anchor_values_s"]
    fig["flat"] = fig["last_tenth_s"] / fig["first_tenth_s"]
    fig["rss_ratio"] = fig["rss_max_mib"] / floor
    return fig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1000000, help="backlog values (default 1,000,000)")
    ap.add_argument("--anchor-size", type=int, default=200000, help="values the bare client posts, before and after")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--transport", choices=("http", "mqtt"), default="http",
                    help="gmq and the bare client both over this (mqtt: murano_local's MQTT port, plain TCP)")
    ap.add_argument("--dir", default=os.path.expanduser("~/anchor-work/drain-bench"),
                    help="scratch directory on the disk under test (not tmpfs)")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    if args.size < MIN_SIZE or args.size % PER_REQUEST:
        ap.error("--size must be a multiple of %d and at least %d (smaller backlogs drain between two samples)"
                 % (PER_REQUEST, MIN_SIZE))
    os.makedirs(args.dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="run-", dir=args.dir)
    rounds = []
    try:
        for rnd in range(args.rounds):
            fig = one_round(work, rnd, args)
            rounds.append(fig)
            print("round %d: drain %s values/s (tenths %s), bare client %s values/s (before %s, after %s): %.2fx; "
                  "last/first tenth %.2f; RSS %s; floor %.1f MiB (%.2fx); resent %d" % (
                      rnd + 1, format(round(fig["drain_values_s"]), ","), fig["tenths"],
                      format(round(fig["anchor_values_s"]), ","), format(round(fig["anchor_before"]), ","),
                      format(round(fig["anchor_after"]), ","), fig["ratio"], fig["flat"],
                      ", ".join("%s %.1f" % r for r in fig["rss"]), fig["requests_floor_mib"], fig["rss_ratio"],
                      fig["resent"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = ("drain_values_s", "anchor_values_s", "ratio", "flat", "rss_max_mib", "requests_floor_mib", "rss_ratio")
    print("\n| figure | median | min | max |\n|---|---:|---:|---:|")
    for k in keys:
        vals = [r[k] for r in rounds]
        print("| %s | %.4g | %.4g | %.4g |" % (k, statistics.median(vals), min(vals), max(vals)))
    goals = [("ratio", ">=", 0.8), ("flat", ">=", 0.8), ("rss_ratio", "<=", 1.10)]
    missed = []
    print("\n| goal | median | target | met |\n|---|---:|---:|---|")
    for k, op, limit in goals:
        v = statistics.median(r[k] for r in rounds)
        ok = met(v, op, limit)
        print("| %s | %.3g | %s %g | %s |" % (k, v, op, limit, "yes" if ok else "NO"))
        if not ok:
            missed.append(k)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rounds, f, indent=1)
    return exit_status(missed, args.check)


if __name__ == "__main__":
    sys.exit(main())
