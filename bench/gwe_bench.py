"""gwe benchmark: operator's engine_fetch write -> app RUNNING, idle CPU and RSS of gwe and gmq.

Runs the real suite in a scratch GWE_HOME: murano_local, supervisord running gwe and gmq (the
generated program files), and, per run, a new app version uploaded and requested through
``engine_fetch``; the clock stops when supervisord reports the new version RUNNING.

Anchors measured in the same run (this machine drifts): ``supervisord_start_s``, supervisord
adding and starting one program through XML-RPC (the floor of any install), and the RSS floors
of ``python -c 'import time'`` and ``python -c 'import requests'`` (anchors-bench.md §5).

    python3 bench/gwe_bench.py [--runs 5] [--idle-seconds 30] [--json out.json] [--baseline old.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import psutil  # noqa: E402

from atomic_config import gwe_paths, set_option  # noqa: E402
from gwe_helpers import SERIAL, configure_gateway, reported, upload  # noqa: E402
from harness import MuranoLocal, Supervisord, wait_for  # noqa: E402
from otau_helpers import make_app  # noqa: E402

TARGETS = {"fetch_to_running_s": 2.0, "gwe_idle_cpu_pct": 0.2, "gmq_idle_cpu_pct": 0.2, "gwe_rss_mib": 40.0}


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1 << 20)


def settled_rss(argv) -> float:
    proc = subprocess.Popen(argv)
    try:
        last = None
        while True:
            time.sleep(0.5)
            now = rss_mib(proc.pid)
            if now == last:
                return now
            last = now
    finally:
        proc.kill()
        proc.wait()


def idle_cpu_pct(pids, seconds: float) -> dict:
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    before = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
    start = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    return {name: 100.0 * (sum(p.cpu_times()[:2]) - before[name]) / wall for name, p in procs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--baseline", help="a previous --json file to compare with")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="gwe-bench-", dir="/tmp")
    home = os.path.join(work, "home")
    os.makedirs(home)
    os.environ["GWE_HOME"] = home
    paths = gwe_paths(home).ensure()
    murano = MuranoLocal(os.path.join(work, "murano")).start()
    sup = Supervisord(home)
    results = {}
    try:
        from gwe.supervisor_conf import write_suite_configs

        configure_gateway(murano, update_interval=3600, settle=0.5)
        set_option(paths.gmq_cfg, "server", "port", str(_free_port()))
        write_suite_configs(paths, os.path.dirname(sys.executable))
        sup.start()
        rpc = sup.rpc().supervisor
        wait_for(lambda: reported(murano, "engine_report"), 30, message="gwe reporting")

        anchor = []
        for i in range(args.runs):
            t0 = time.monotonic()
            sup.add_program("anchor%d" % i, "/bin/sleep 600", startsecs=0)
            wait_for(lambda n=i: rpc.getProcessInfo("anchor%d" % n)["statename"] == "RUNNING", 10, interval=0.005)
            anchor.append(time.monotonic() - t0)

        latencies = []
        for version in range(1, args.runs + 1):
            pkg = make_app(work, "benchapp", str(version), startsecs=0)
            upload(murano, pkg)
            t0 = time.monotonic()
            murano.set(SERIAL, "engine_fetch", json.dumps({"install": [{"name": os.path.basename(pkg)}]}))

            def running_new(v=str(version)):
                info = rpc.getProcessInfo("benchapp")
                return info["statename"] == "RUNNING" and ("/%s" % v) in _cwd(info["pid"])
            wait_for(running_new, 60, interval=0.005, message="benchapp v%d RUNNING" % version)
            latencies.append(time.monotonic() - t0)
            wait_for(lambda v=str(version): json.loads(reported(murano, "fetch_status") or "{}").get("version") == v,
                     60, message="fetch_status v%d" % version)

        pids = {p["name"]: p["pid"] for p in rpc.getAllProcessInfo() if p["name"] in ("gwe", "gmq")}
        time.sleep(2)
        cpu = idle_cpu_pct(pids, args.idle_seconds)
        results = {
            "fetch_to_running_s": statistics.median(latencies),
            "fetch_to_running_max_s": max(latencies),
            "supervisord_start_s": statistics.median(anchor),
            "gwe_idle_cpu_pct": cpu["gwe"],
            "gmq_idle_cpu_pct": cpu["gmq"],
            "gwe_rss_mib": rss_mib(pids["gwe"]),
            "gmq_rss_mib": rss_mib(pids["gmq"]),
            "anchor_bare_python_rss_mib": settled_rss([sys.executable, "-S", "-c", "import time; time.sleep(60)"]),
            "anchor_requests_rss_mib": settled_rss([sys.executable, "-c", "import requests, time; time.sleep(60)"]),
        }
    finally:
        sup.stop()
        murano.stop()

    baseline = {}
    if args.baseline:
        with open(args.baseline) as f:
            baseline = json.load(f)
    for key, value in results.items():
        line = "%-28s %10.3f" % (key, value)
        if key in TARGETS:
            line += "   target <= %-6g %s" % (TARGETS[key], "ok" if value <= TARGETS[key] else "MISSED")
        if baseline.get(key):
            line += "   (x%.2f of baseline)" % (value / baseline[key])
        print(line)
    print("ratios: fetch_to_running / supervisord_start = %.1f; gwe RSS / import-requests floor = %.2f"
          % (results["fetch_to_running_s"] / results["supervisord_start_s"],
             results["gwe_rss_mib"] / results["anchor_requests_rss_mib"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)


def _cwd(pid: int) -> str:
    try:
        return os.readlink("/proc/%d/cwd" % pid)
    except OSError:
        return ""


def _free_port() -> int:
    from harness import free_port

    return free_port()


if __name__ == "__main__":
    main()
