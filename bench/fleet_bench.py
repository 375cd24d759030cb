#!/usr/bin/env python3
"""Fleet figures: a simulated fleet against a real murano-local, read by the CLI and the page.

    python3 bench/fleet_bench.py [--gateways 1000] [--rollout] [--check] [--json OUT]
                                 [--report-interval 30] [--poll-interval 5] [--threads 16] [--repeat 3]

Starts ``murano-local serve`` (scratch data directory) and ``murano-local simulate --gateways N``
(one process, a thread pool), waits until every gateway has reported, then measures:

1. ``murano-local fleet status --json`` wall time (the CLI process included), median of
   ``--repeat``, and the server's answer alone (``GET fleet/gateways`` from this process);
   anchor: ``murano-local device list --json`` in the same run (the same CLI start-up and one
   admin request, without the fleet read model);
2. the fleet page in headless Chromium: navigation start to the table drawn (every gateway
   counted, the first page of 500 rows drawn; ``window.dashboardReadyMs``), median of
   ``--repeat`` fresh loads; anchor: the same browser loading the page's static stylesheet;
3. murano-local's RSS and CPU while the fleet reports and polls (over 20 s), and with
   ``--rollout`` a rollout to the whole fleet (batches of 10 %, 2 % of gateways rolling back,
   max failures 5 %): its duration and the server's CPU meanwhile.

Goals (``--check`` exits 1 when one is missed, at 1,000 gateways): fleet status ≤ 1 s, page ≤ 2 s.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
GOALS = {"fleet_status_s": 1.0, "page_load_s": 2.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(condition, timeout: float, what: str, interval: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = condition()
            if value:
                return value
        except requests.RequestException:
            pass
        time.sleep(interval)
    raise SystemExit("timed out waiting for %s" % what)


def cli_seconds(url: str, *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "murano_local", "--url", url, *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit("murano-local %s failed: %s" % (" ".join(args), done.stderr.strip()))
    return time.monotonic() - started


def cpu_rss(proc: psutil.Process, seconds: float) -> dict:
    cpu0, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = proc.cpu_times(), time.monotonic()
    used = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {"cpu_percent": round(100 * used / (t1 - t0), 1), "rss_mib": round(proc.memory_info().rss / 2 ** 20, 1),
            "threads": proc.num_threads()}


def page_loads(url: str, count: int, repeat: int, profile: str) -> dict:
    from fleet_helpers import chromium

    driver = chromium(profile)
    try:
        driver.set_page_load_timeout(120)
        driver.set_script_timeout(120)
        anchor, loads = [], []
        for _ in range(repeat):
            driver.get(url + "/ui/static/style.css")
            anchor.append(driver.execute_script(
                "const t = performance.getEntriesByType('navigation')[0]; return t.responseEnd;") / 1000.0)
            driver.get("about:blank")
            driver.get(url + "/ui/")
            wait(lambda: driver.execute_script(
                "return window.dashboardReadyMs && document.getElementById('fleet-count').textContent"
            ) == "%d gateways" % count, 120, "the fleet page with %d rows" % count, interval=0.05)
            loads.append(driver.execute_script("return window.dashboardReadyMs") / 1000.0)
        return {"page_load_s": round(statistics.median(loads), 3), "page_load_runs": [round(x, 3) for x in loads],
                "anchor_static_css_s": round(statistics.median(anchor), 3)}
    finally:
        driver.quit()


def rollout(url: str, server: psutil.Process, tmp: str, count: int) -> dict:
    from otau_helpers import make_app

    package = make_app(tmp, "sensor", "2")
    cpu0, started = server.cpu_times(), time.monotonic()
    done = subprocess.run([sys.executable, "-m", "murano_local", "--url", url, "rollout", "create", "bench",
                           "--package", package, "--tag", "bench", "--batch-size", "10%", "--max-failures", "5%",
                           "--health-window", "2", "--fetch-timeout", "120"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit("rollout create failed: %s" % done.stderr.strip())
    base = "%s/api:1/service/localproduct/fleet/rollouts/bench" % url
    final = wait(lambda: (lambda r: r if r["state"] not in ("running", "paused") else None)(
        requests.get(base, timeout=30).json()), 1800, "the rollout to finish", interval=1.0)
    cpu1, seconds = server.cpu_times(), time.monotonic() - started
    used = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {"rollout_state": final["state"], "rollout_seconds": round(seconds, 1),
            "rollout_healthy": final["counts"]["healthy"], "rollout_failed": final["counts"]["failed"],
            "rollout_server_cpu_percent": round(100 * used / seconds, 1), "rollout_reason": final["reason"][:120]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--report-interval", type=float, default=30.0)
    ap.add_argument("--poll-interval", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rollout", action="store_true", help="also roll a package out to the whole fleet")
    ap.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="fleet-bench-")
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    procs = []
    figures: dict = {"gateways": args.gateways}
    try:
        server = subprocess.Popen([sys.executable, "-m", "murano_local", "serve", "--port", str(port), "--data",
                                   os.path.join(tmp, "data"), "--log-level", "WARNING",
                                   "--max-connections", str(max(1000, args.threads * 8))],
                                  env=env, stderr=open(os.path.join(tmp, "serve.log"), "wb"))
        procs.append(server)
        wait(lambda: requests.get(url + "/timestamp", timeout=1).ok, 20, "murano-local", interval=0.1)
        started = time.monotonic()
        sim = subprocess.Popen([sys.executable, "-m", "murano_local", "--url", url, "simulate", "--gateways",
                                str(args.gateways), "--tag", "bench", "--mix", "success=0.98,rolled_back=0.02",
                                "--report-interval", str(args.report_interval), "--poll-interval",
                                str(args.poll_interval), "--threads", str(args.threads), "--install-seconds", "1"],
                               env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "sim.log"), "wb"))
        procs.append(sim)
        rows_url = "%s/api:1/service/localproduct/fleet/gateways" % url
        wait(lambda: sum(1 for g in requests.get(rows_url, timeout=60).json()["gateways"] if g["gwe_version"])
             == args.gateways, 600, "every simulated gateway's first report", interval=2.0)
        figures.update({"load_average": round(os.getloadavg()[0], 1), "setup_s": round(time.monotonic() - started, 1),
                        "report_interval": args.report_interval, "poll_interval": args.poll_interval})
        proc = psutil.Process(server.pid)
        figures.update({"server_" + k: v for k, v in cpu_rss(proc, 20.0).items()})
        figures["fleet_status_runs"] = [round(cli_seconds(url, "fleet", "status", "--json"), 3)
                                        for _ in range(args.repeat)]
        figures["fleet_status_s"] = statistics.median(figures["fleet_status_runs"])
        api_runs = []
        for _ in range(args.repeat):
            mark = time.monotonic()
            requests.get(rows_url, timeout=60).raise_for_status()
            api_runs.append(time.monotonic() - mark)
        figures["fleet_api_s"] = round(statistics.median(api_runs), 3)
        figures["anchor_device_list_s"] = round(statistics.median(
            cli_seconds(url, "device", "list", "--json") for _ in range(args.repeat)), 3)
        for name, measure in (("page", lambda: page_loads(url, args.gateways, args.repeat,
                                                           os.path.join(tmp, "chromium"))),
                              ("rollout", lambda: rollout(url, proc, tmp, args.gateways) if args.rollout else {})):
            try:
                figures.update(measure())
            except Exception as exc:  # one failed measurement must not lose the others' figures
                figures["%s_error" % name] = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0][:200])
        figures["server_rss_mib_end"] = round(proc.memory_info().rss / 2 ** 20, 1)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    for key, value in figures.items():
        print("%-28s %s" % (key, value))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(figures, f, indent=2)
    missed = [k for k, goal in GOALS.items() if figures.get(k) is None or figures[k] > goal]
    if args.check and args.gateways <= 1000 and missed:
        print("missed: %s" % ", ".join("%s %s > %.1f" % (k, figures.get(k), GOALS[k]) for k in missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
