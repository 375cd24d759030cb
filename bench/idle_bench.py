#!/usr/bin/env python3
"""Idle cost and footprint of gwe and gmq (issue 16, goals 3 and 4), beside same-run anchors.

Runs the real suite in a scratch GWE_HOME (murano_local, supervisord running the generated gwe and
gmq programs, one app), lets it settle, then per round counts over ``--seconds`` (60) every
thread's context switches (``voluntary_ctxt_switches + nonvoluntary_ctxt_switches`` in
``/proc/PID/task/*/status``: each one is a wake-up) and its CPU time (``/proc/PID/task/*/schedstat``,
nanoseconds: ``ps`` ticks are 10 ms, too coarse for "0.00 %"). RSS is read at the end of each round
beside the anchors of the same round: ``python -c 'import requests'`` and a bare interpreter
(anchors-bench.md §5). ``python -X importtime`` of each daemon's start-up imports is summarised.

    python3 bench/idle_bench.py [--rounds 3] [--seconds 60] [--check] [--json OUT]

Goals (``--check`` exits 1 when one is missed): gwe and gmq each <= 1 wake-up/s and < 0.005 % CPU
(prints as 0.00 %) idle; gwe RSS <= 1.15x and gmq RSS <= 1.10x the import-requests floor.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from atomic_config import gwe_paths, set_option  # noqa: E402
from gwe_helpers import configure_gateway, reported  # noqa: E402
from gmq_bench import rss_mib, settled_rss  # noqa: E402
from goals import exit_status, met  # noqa: E402
from harness import MuranoLocal, Supervisord, free_port, wait_for  # noqa: E402

GOALS = [  # (figure, comparison, limit)
    ("gwe_wakeups_s", "<=", 1.0), ("gmq_wakeups_s", "<=", 1.0),
    ("gwe_cpu_pct", "<", 0.005), ("gmq_cpu_pct", "<", 0.005),
    ("gwe_rss_ratio", "<=", 1.15), ("gmq_rss_ratio", "<=", 1.10),
]


def threads(pid: int) -> dict:
    """{tid: (name, context switches, cpu ns)} of every thread of ``pid``."""
    out = {}
    for task in glob.glob("/proc/%d/task/*" % pid):
        try:
            with open(task + "/status") as f:
                status = f.read()
            with open(task + "/schedstat") as f:
                cpu_ns = int(f.read().split()[0])
        except OSError:
            continue  # the thread ended
        switches = sum(int(n) for n in re.findall(r"^(?:non)?voluntary_ctxt_switches:\s+(\d+)", status, re.M))
        name = re.search(r"^Name:\s+(.*)$", status, re.M).group(1)
        out[int(os.path.basename(task))] = (name, switches, cpu_ns)
    return out


def idle_round(pids: dict, seconds: float) -> dict:
    before = {name: threads(pid) for name, pid in pids.items()}
    start = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    after = {name: threads(pid) for name, pid in pids.items()}
    out = {}
    for name in pids:
        per_thread = []
        for tid, (tname, sw, ns) in after[name].items():
            _, sw0, ns0 = before[name].get(tid, (tname, 0, 0))
            per_thread.append((tid, tname, sw - sw0, ns - ns0))
        out[name + "_wakeups_s"] = sum(t[2] for t in per_thread) / wall
        out[name + "_cpu_pct"] = 100.0 * sum(t[3] for t in per_thread) / 1e9 / wall
        out[name + "_threads"] = [(tid, tname, round(sw / wall, 3), round(ns / 1e6, 2)) for tid, tname, sw, ns in
                                  sorted(per_thread)]
    return out


def importtime(module_args, env) -> dict:
    """Modules and cumulative import time (ms) of a daemon's start-up imports (``python -X importtime``)."""
    code = "import %s" % ", ".join(module_args)
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True,
                         text=True, timeout=60).stderr
    rows = re.findall(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$", err, re.M)
    top = sorted(((int(cum), name) for _, cum, indent, name in rows if len(indent) <= 1), reverse=True)[:6]
    return {"modules": len(rows), "total_ms": sum(int(s) for s, _, _, _ in rows) / 1000.0,
            "top": [(name, cum / 1000.0) for cum, name in top]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after gwe's first report before measuring")
    ap.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="idle-bench-")
    home = os.path.join(work, "home")
    os.makedirs(home)
    os.environ["GWE_HOME"] = home
    paths = gwe_paths(home).ensure()
    murano = MuranoLocal(os.path.join(work, "murano")).start()
    sup = Supervisord(home)
    rounds = []
    try:
        from gwe.supervisor_conf import write_suite_configs

        configure_gateway(murano, update_interval=3600, settle=0.5)
        set_option(paths.gmq_cfg, "server", "port", str(free_port()))
        write_suite_configs(paths, os.path.dirname(sys.executable))
        sup.start()
        rpc = sup.rpc().supervisor
        sup.add_program("idleapp", "/bin/sleep 100000", startsecs=0)
        wait_for(lambda: reported(murano, "engine_report"), 30, message="gwe reporting")
        pids = {p["name"]: p["pid"] for p in rpc.getAllProcessInfo() if p["name"] in ("gwe", "gmq")}
        time.sleep(args.settle)
        for rnd in range(args.rounds):
            fig = idle_round(pids, args.seconds)
            for name, pid in pids.items():
                fig[name + "_rss_mib"] = rss_mib(pid)
            fig["requests_floor_mib"] = settled_rss([sys.executable, "-c", "import requests, time; time.sleep(60)"])
            fig["bare_floor_mib"] = settled_rss([sys.executable, "-c", "import time; time.sleep(60)"])
            for name in pids:
                fig[name + "_rss_ratio"] = fig[name + "_rss_mib"] / fig["requests_floor_mib"]
            rounds.append(fig)
            print("round %d: gwe %.2f wake-ups/s %.4f %% CPU %.1f MiB; gmq %.2f wake-ups/s %.4f %% CPU %.1f MiB; "
                  "import-requests floor %.1f MiB" % (
                      rnd + 1, fig["gwe_wakeups_s"], fig["gwe_cpu_pct"], fig["gwe_rss_mib"], fig["gmq_wakeups_s"],
                      fig["gmq_cpu_pct"], fig["gmq_rss_mib"], fig["requests_floor_mib"]), flush=True)
            for name in pids:
                print("   %s threads (tid, name, wake-ups/s, cpu ms): %s" % (name, fig[name + "_threads"]))
        alive = {p["name"]: p["statename"] for p in rpc.getAllProcessInfo()}
    finally:
        sup.stop()
        murano.stop()
    env = dict(os.environ, PYTHONPATH=ROOT)
    imports = {"gwe": importtime(["gwe.cli", "gwe.daemon_cli", "gwe.daemon"], env),
               "gmq": importtime(["gmq.cli", "gmq.serve_cli", "gmq.server"], env)}

    keys = [k for k in rounds[0] if not k.endswith("_threads")]
    summary = {k: statistics.median(r[k] for r in rounds) for k in keys}
    spread = {k: (min(r[k] for r in rounds), max(r[k] for r in rounds)) for k in keys}
    print("\n| figure | median | min | max |\n|---|---:|---:|---:|")
    for k in keys:
        print("| %s | %.4g | %.4g | %.4g |" % (k, summary[k], spread[k][0], spread[k][1]))
    for name, imp in imports.items():
        print("start-up imports of %s: %d modules, %.0f ms (self times summed); heaviest: %s" % (
            name, imp["modules"], imp["total_ms"], ", ".join("%s %.0f ms" % t for t in imp["top"])))
    print("process states at the end: %s" % alive)
    missed = []
    print("\n| goal | median | target | met |\n|---|---:|---:|---|")
    for key, op, limit in GOALS:
        value = summary[key]
        ok = met(value, op, limit)
        print("| %s | %.4g | %s %g | %s |" % (key, value, op, limit, "yes" if ok else "NO"))
        if not ok:
            missed.append(key)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"rounds": rounds, "median": summary, "spread": spread, "imports": imports}, f, indent=1)
    return exit_status(missed, args.check)


if __name__ == "__main__":
    sys.exit(main())
