#!/usr/bin/env python3
"""gmq's ingest against a fair ceiling and against itself without fsync (issue 16, goal 2).

    python3 bench/gmq_ceiling_bench.py [--rounds 3] [--seconds 3] [--python VENV_PYTHON] [--check] [--json OUT]

Three servers, the same load as bench/gmq_bench.py (wrk, ``post.lua``'s POST ``temp=42`` to
``/onep:v1/stack/alias``, ``X-Exosite-VMS``, keep-alive) at 8 and 32 producers:

- **gmq durable**: gmq as shipped (sqlite WAL, synchronous=FULL: a 204 after the fsync);
- **gmq non-durable**: the same gmq with ``GWE_GMQ_BENCH_NO_FSYNC=1`` (synchronous=OFF, bench
  only, see docs/gmq.md), so the difference is what the fsync costs;
- **ceiling**: bench/event_loop_ceiling.py, a minimal one-thread ``selectors`` server that frames
  requests and answers 204, storing nothing: what any Python event-loop server can reach here.

Each round starts the three afresh and runs them one after the other per level (the order
alternates between rounds), 1 s of warm-up then ``--seconds`` each. Ratios are taken within a
round (the machine drifts by up to 65 % an hour) and reported as median, min and max over the
rounds, beside the req/s and p99 of each server.

Goals (``--check`` exits 1 on a miss, on the median of the per-round ratios): at 8 and at 32
producers, gmq durable >= 0.9x gmq non-durable (durability costs <= 10 %) and >= 0.7x the ceiling.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gmq_bench  # noqa: E402
from gmq_bench import Gmq, Proc, free_port, wrk  # noqa: E402
from goals import exit_status, met  # noqa: E402

LEVELS = (8, 32)
SERVERS = ("durable", "nondurable", "ceiling")
VMS = "X-Exosite-VMS: bench bench bench-1"
GOALS = [  # (figure, comparison, limit)
    ("durable_vs_nondurable_8", ">=", 0.9), ("durable_vs_nondurable_32", ">=", 0.9),
    ("durable_vs_ceiling_8", ">=", 0.7), ("durable_vs_ceiling_32", ">=", 0.7),
]


def commit_latency_us(work: str, commits: int = 300) -> float:
    """Median latency of a one-row sqlite commit, WAL, synchronous=FULL (anchors-bench.md §1), on the
    disk under test, now: the fsync every durable group commit waits for."""
    path = os.path.join(work, "anchor.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, ts REAL, body BLOB)")
        body = b"x" * 200
        times = []
        for _ in range(commits):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO t (ts, body) VALUES (?, ?)", (t0, body))
            times.append(time.perf_counter() - t0)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
    return statistics.median(times) * 1e6


def start(work: str, rnd: int) -> dict:
    servers = {}
    try:
        port = free_port()
        servers["ceiling"] = Proc([gmq_bench.GMQ_PYTHON[0], os.path.join(HERE, "event_loop_ceiling.py"),
                                   "--serve", str(port)], port)
        servers["durable"] = Gmq(work, "durable-%d" % rnd)
        servers["nondurable"] = Gmq(work, "nondurable-%d" % rnd, env={"GWE_GMQ_BENCH_NO_FSYNC": "1"})
        for name, want in (("durable", "FULL"), ("nondurable", "OFF")):
            got = servers[name].status()["queue"]["synchronous"]
            if got != want:
                raise SystemExit("gmq %s runs with synchronous=%s, not %s" % (name, got, want))
    except BaseException:
        for s in servers.values():
            s.stop()
        raise
    return servers


def one_round(work: str, rnd: int, args) -> dict:
    post = os.path.join(args.anchors, "post.lua")
    servers = start(work, rnd)
    fig = {}
    try:
        for lvl in LEVELS:
            order = list(SERVERS) if rnd % 2 == 0 else list(reversed(SERVERS))
            fig["commit_us_%d" % lvl] = commit_latency_us(work)
            for name in order:
                url = "http://127.0.0.1:%d/onep:v1/stack/alias" % servers[name].port
                wrk(url, lvl, 1, post, [VMS])  # warm-up
                r = wrk(url, lvl, args.seconds, post, [VMS])
                if r["non2xx"] or r["socket_errors"]:
                    raise SystemExit("%s at %d: %d non-2xx answers, socket errors %r"
                                     % (name, lvl, r["non2xx"], r["socket_errors"]))
                fig["%s_%d" % (name, lvl)] = r
                print("  round %d  %-10s %2d producers  %8.0f req/s  p50 %6.2f ms  p99 %7.2f ms" % (
                    rnd + 1, name, lvl, r["rps"], r["p50"], r["p99"]), flush=True)
        for name in ("durable", "nondurable"):
            fig["%s_accepted" % name] = servers[name].status()["counters"]["accepted"]
    finally:
        for s in servers.values():
            s.stop()
    for lvl in LEVELS:
        d = fig["durable_%d" % lvl]["rps"]
        fig["durable_vs_nondurable_%d" % lvl] = d / fig["nondurable_%d" % lvl]["rps"]
        fig["durable_vs_ceiling_%d" % lvl] = d / fig["ceiling_%d" % lvl]["rps"]
        fig["nondurable_vs_ceiling_%d" % lvl] = fig["nondurable_%d" % lvl]["rps"] / fig["ceiling_%d" % lvl]["rps"]
        # closed loop, one commit at a time: each group of ~lvl requests costs their CPU (1/nondurable
        # req/s each) plus one fsynced commit, so durable / non-durable ~ 1 / (1 + commit * nd / lvl)
        fig["model_%d" % lvl] = 1 / (1 + fig["commit_us_%d" % lvl] * 1e-6 * fig["nondurable_%d" % lvl]["rps"] / lvl)
    return fig


def spread(values) -> str:
    return "%s (%s-%s)" % tuple(_fmt(v) for v in (statistics.median(values), min(values), max(values)))


def _fmt(v: float) -> str:
    return format(round(v), ",") if abs(v) >= 100 else "%.2f" % v


def report(rounds: list) -> list:
    print("\nmedian (min-max) over %d rounds:" % len(rounds))
    print("\n| producers | gmq durable req/s | gmq non-durable req/s | ceiling req/s | durable / non-durable | "
          "durable / ceiling | non-durable / ceiling | p99 ms durable / non-durable / ceiling |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for lvl in LEVELS:
        cells = [spread([r["%s_%d" % (s, lvl)]["rps"] for r in rounds]) for s in SERVERS]
        cells += [spread([r["%s_%d" % (k, lvl)] for r in rounds])
                  for k in ("durable_vs_nondurable", "durable_vs_ceiling", "nondurable_vs_ceiling")]
        p99 = " / ".join("%.2f" % statistics.median(r["%s_%d" % (s, lvl)]["p99"] for r in rounds) for s in SERVERS)
        print("| %d | %s | %s |" % (lvl, " | ".join(cells), p99))
    print("\nsame-round anchor, a one-row sqlite FULL commit on this disk (median of 300, per round): " + "; ".join(
        "%d producers %s us" % (lvl, ", ".join("%.0f" % r["commit_us_%d" % lvl] for r in rounds)) for lvl in LEVELS))
    print("durable / non-durable expected from it if each group waits for one commit (1 / (1 + commit x "
          "non-durable req/s / producers)): " + "; ".join(
              "%d producers %s" % (lvl, spread([r["model_%d" % lvl] for r in rounds])) for lvl in LEVELS))
    missed = []
    print("\n| goal | median | per round | target | met |\n|---|---:|---|---:|---|")
    for key, op, limit in GOALS:
        values = [r[key] for r in rounds]
        v = statistics.median(values)
        ok = met(v, op, limit)
        print("| %s | %.2f | %s | %s %g | %s |" % (key, v, ", ".join("%.2f" % x for x in values), op, limit,
                                                 "yes" if ok else "NO"))
        if not ok:
            missed.append(key)
    return missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--anchors", default="/work/shared/bench-anchors", help="where post.lua is")
    ap.add_argument("--dir", default=os.path.expanduser("~/anchor-work/ceiling-bench"),
                    help="scratch directory on the disk under test (not tmpfs)")
    ap.add_argument("--python", default=sys.executable, help="interpreter to run gmq and the ceiling under")
    ap.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    ap.add_argument("--json", dest="json_out", help="write every round's figures to this file")
    args = ap.parse_args()
    gmq_bench.GMQ_PYTHON[0] = args.python
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (Debian package wrk)")
    os.makedirs(args.dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="run-", dir=args.dir)
    rounds = []
    try:
        for rnd in range(args.rounds):
            rounds.append(one_round(work, rnd, args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    missed = report(rounds)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": rounds}, f, indent=1)
    return exit_status(missed, args.check)


if __name__ == "__main__":
    sys.exit(main())
