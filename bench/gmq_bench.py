#!/usr/bin/env python3
"""gmq benchmark, side by side with the anchors of reference/anchors-bench.md in the same run.

    python3 bench/gmq_bench.py [--quick] [--rounds 3] [--seconds 3] [--json OUT] [--baseline FILE]

This machine drifts by up to 65 % within an hour, so only ratios measured in one run mean
anything. Each round runs, level by level (1, 8, 32 keep-alive producers, wrk with
``post.lua``'s POST ``temp=42``), the anchors' plain ``ThreadingHTTPServer`` (listen backlog
128; and 5 at 32 producers), the anchors' naive durable server (sqlite FULL, one commit
per request) and gmq, interleaved; figures are medians over the rounds. Then: batched
writes (100 values a request, 8 producers), persist-queue's ``SQLiteAckQueue`` (the
anchors' ``pq_bench.py`` in a venv, in-process), the drain of a 100,000-value backlog to
murano_local, and gmq's RSS as that backlog grows and drains.

Needs wrk, the anchor scripts (``--anchors``, default /work/shared/bench-anchors) and, for
persist-queue, ``~/anchor-work/venv-pq`` (``python3 -m venv ~/anchor-work/venv-pq &&
~/anchor-work/venv-pq/bin/pip install persist-queue==1.1.0``; skipped with a note if absent).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GMQ_PYTHON = [sys.executable]  # the interpreter gmq runs under (--python)
TARGETS = [  # (name, figure key, comparison, threshold, description)
    ("8 producers vs plain ceiling", "ratio_8_plain", ">=", 0.8, "gmq req/s / plain req/s at 8"),
    ("8 producers vs naive durable", "ratio_8_naive", ">=", 2.0, "gmq req/s / naive durable req/s at 8"),
    ("1 producer vs naive durable", "ratio_1_naive", ">=", 0.9, "gmq req/s / naive durable req/s at 1"),
    ("p99 at 32 vs plain", "ratio_p99_32", "<=", 2.0, "gmq p99 / plain p99 at 32"),
    ("batched durable values/s", "batched_values_s", ">=", 50000, "100 values a request, 8 producers"),
    ("drain values/s", "drain_values_s", ">=", 20000, "100,000-value backlog to murano_local"),
    ("max RSS MiB", "rss_max_mib", "<=", 33.0, "gmq VmRSS while the backlog grows and drains"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server on port %d did not start" % port)


def to_ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", value)
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def wrk(url: str, conns: int, seconds: float, script: str, headers=()) -> dict:
    cmd = ["wrk", "-t%d" % min(2, conns), "-c%d" % conns, "-d%gs" % seconds, "--latency", "-s", script]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": to_ms(lat["50"]), "p99": to_ms(lat["99"]),
            "non2xx": int(bad.group(1)) if bad else 0, "socket_errors": errors.group(1) if errors else ""}


def rss_mib(pid: int) -> float:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def settled_rss(argv) -> float:
    """VmRSS of a process once it has been unchanged for 1 s (as the anchors' mem_floor.py)."""
    proc = subprocess.Popen(argv)
    try:
        last, same_since = None, time.monotonic()
        while True:
            time.sleep(0.25)
            now = rss_mib(proc.pid)
            if now != last:
                last, same_since = now, time.monotonic()
            elif time.monotonic() - same_since >= 1.0:
                return now
    finally:
        proc.kill()
        proc.wait()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read().decode())


class Proc:
    """A server subprocess on a port, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, cmd, port: int, env=None, log=None) -> None:
        self.port = port
        self.log = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        wait_port(port)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.log is not subprocess.DEVNULL:
            self.log.close()


class Gmq:
    """gmq under its own GWE_HOME, configured through ``gmq cfg set``."""

    def __init__(self, work: str, name: str, settings: Optional[dict] = None, env: Optional[dict] = None) -> None:
        self.home = os.path.join(work, name)
        shutil.rmtree(self.home, ignore_errors=True)
        os.makedirs(self.home)
        # MALLOC_ARENA_MAX=2 as in supervisor/gmq.conf: glibc's per-thread arenas cost ~2.5 MiB of RSS
        self.env = dict(os.environ, GWE_HOME=self.home, PYTHONPATH=ROOT, MALLOC_ARENA_MAX="2", **(env or {}))
        self.port = free_port()
        self.set("server", "port", self.port)
        for (section, option), value in (settings or {}).items():
            self.set(section, option, value)
        self.url = "http://127.0.0.1:%d" % self.port
        self.server = Proc([GMQ_PYTHON[0], "-m", "gmq", "serve"], self.port, self.env,
                           os.path.join(self.home, "gmq.log"))
        self.pid = self.server.proc.pid

    def set(self, section: str, option: str, value) -> None:
        subprocess.run([sys.executable, "-m", "gmq", "cfg", "set", section, option, str(value)], env=self.env,
                       check=True, capture_output=True, timeout=30)

    def reread(self) -> None:
        subprocess.run([sys.executable, "-m", "gmq", "reread"], env=self.env, check=True, capture_output=True,
                       timeout=30)

    def status(self) -> dict:
        return get_json(self.url + "/status")

    def stop(self) -> None:
        self.server.stop()


def anchor_server(anchors: str, backlog: int, db: str = "") -> Proc:
    port = free_port()
    cmd = [sys.executable, os.path.join(anchors, "http_ceiling.py"), "--serve", str(port), "--backlog", str(backlog)]
    if db:
        cmd += ["--db", db]
    return Proc(cmd, port)


def batch_script(work: str, values: int) -> str:
    body = "&".join("v%d=%d" % (i, i) for i in range(values))
    path = os.path.join(work, "batch%d.lua" % values)
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = "%s"\n'
                'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n' % body)
    return path


def median_of(runs, key):
    return statistics.median(r[key] for r in runs)


def http_levels(args, work) -> dict:
    post = os.path.join(args.anchors, "post.lua")
    vms = ["X-Exosite-VMS: bench bench bench-1"]
    levels = [1, 8, 32]
    runs = {(name, lvl): [] for name in ("plain", "naive", "gmq") for lvl in levels}
    runs[("plain_b5", 32)] = []
    db = os.path.join(work, "naive.db")
    for rnd in range(args.rounds):
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)
        procs = []
        try:
            plain = anchor_server(args.anchors, 128)
            procs.append(plain)
            plain5 = anchor_server(args.anchors, 5)
            procs.append(plain5)
            naive = anchor_server(args.anchors, 128, db)
            procs.append(naive)
            gmq = Gmq(work, "gmq-http")
            procs.append(gmq)
            for lvl in levels:
                targets = [("plain", "http://127.0.0.1:%d/" % plain.port, ()),
                           ("naive", "http://127.0.0.1:%d/" % naive.port, ()),
                           ("gmq", gmq.url + "/onep:v1/stack/alias", vms)]
                if lvl == 32:
                    targets.append(("plain_b5", "http://127.0.0.1:%d/" % plain5.port, ()))
                if rnd % 2:
                    targets.reverse()  # alternate who goes first
                for name, url, headers in targets:
                    wrk(url, lvl, 1, post, headers)  # warm-up
                    runs[(name, lvl)].append(wrk(url, lvl, args.seconds, post, headers))
                    print("  round %d  %-8s %2d conns  %8.0f req/s  p99 %7.2f ms" % (
                        rnd + 1, name, lvl, runs[(name, lvl)][-1]["rps"], runs[(name, lvl)][-1]["p99"]), flush=True)
        finally:
            for p in procs:
                p.stop()
    out = {}
    for (name, lvl), r in runs.items():
        out["%s_%d" % (name, lvl)] = {"rps": median_of(r, "rps"), "p50": median_of(r, "p50"),
                                      "p99": median_of(r, "p99"), "non2xx": sum(x["non2xx"] for x in r)}

    def ratio(key, a, b, field="rps"):  # median of the per-round ratios: each round's pair ran minutes apart at most
        per_round = [x[field] / y[field] for x, y in zip(runs[a], runs[b])]
        out[key] = statistics.median(per_round)
        out[key + "_rounds"] = per_round

    ratio("ratio_8_plain", ("gmq", 8), ("plain", 8))
    ratio("ratio_8_naive", ("gmq", 8), ("naive", 8))
    ratio("ratio_1_naive", ("gmq", 1), ("naive", 1))
    ratio("ratio_p99_32", ("gmq", 32), ("plain", 32), "p99")
    return out


def batched(args, work) -> dict:
    gmq = Gmq(work, "gmq-batched")
    script = batch_script(work, 100)
    try:
        wrk(gmq.url + "/onep:v1/stack/alias", 8, 1, script, ["X-Exosite-VMS: bench bench batched"])
        runs = [wrk(gmq.url + "/onep:v1/stack/alias", 8, args.seconds, script,
                    ["X-Exosite-VMS: bench bench batched"]) for _ in range(args.rounds)]
        stored = gmq.status()["counters"]["accepted"]
    finally:
        gmq.stop()
    rps = median_of(runs, "rps")
    return {"batched_rps": rps, "batched_values_s": rps * 100, "batched_p99": median_of(runs, "p99"),
            "batched_stored": stored, "batched_non2xx": sum(r["non2xx"] for r in runs)}


def persist_queue(args) -> dict:
    py = os.path.expanduser("~/anchor-work/venv-pq/bin/python")
    if not os.path.exists(py):
        print("  persist-queue: no venv at %s; skipped" % py)
        return {}
    out = subprocess.run([py, os.path.join(args.anchors, "pq_bench.py"), "--repeat", str(args.rounds),
                          "--seconds", str(args.seconds)], capture_output=True, text=True, timeout=900).stdout
    res = {}
    for cls, case, med in re.findall(r"^\| (\S+) \| ([^|]+?) \| [\d,]+ \| ([\d,]+) \|", out, re.M):
        if cls == "SQLiteAckQueue":
            res["pq_ack_" + case.replace(" ", "").replace("+", "_")] = float(med.replace(",", ""))
    return res


def drain_and_rss(args, work) -> dict:
    """Fill a backlog with no upstream (sampling RSS), then point gmq at murano_local and time the drain."""
    total = args.backlog
    mport = free_port()
    mdir = os.path.join(work, "murano")
    shutil.rmtree(mdir, ignore_errors=True)
    murano = Proc([sys.executable, "-m", "murano_local", "serve", "--port", str(mport), "--data", mdir,
                   "--log-level", "WARNING"], mport, dict(os.environ, PYTHONPATH=ROOT), os.path.join(work, "ml.log"))
    murl = "http://127.0.0.1:%d" % mport
    gmq = None
    try:
        req = urllib.request.Request(murl + "/api:1/service/localproduct/device2/identity/drain-1", data=b"{}",
                                     method="PUT", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).close()
        gmq = Gmq(work, "gmq-drain", {("queue", "max_bytes"): 1 << 30})
        rss = [("start", rss_mib(gmq.pid))]
        sock = socket.create_connection(("127.0.0.1", gmq.port))
        per = 100
        for n in range(total // per):
            base = n * per
            body = "&".join("%d.%03d=%d" % (1600000000 + (base + i) // 1000, (base + i) % 1000, base + i)
                            for i in range(per)).encode()
            sock.sendall(b"POST /onep:v1/stack/alias/v HTTP/1.1\r\nHost: gmq\r\nX-Exosite-VMS: p p drain-1\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            answer = sock.recv(4096)
            if not answer.startswith(b"HTTP/1.1 204"):
                raise SystemExit("fill failed: %r" % answer[:200])
            if (n + 1) % (total // per // 4) == 0:
                rss.append(("%d queued" % ((n + 1) * per), rss_mib(gmq.pid)))
        sock.close()
        depth = gmq.status()["queue"]["depth"]
        gmq.set("upstream", "host", murl)
        gmq.set("upstream", "backoff_initial", "0.05")
        gmq.set("upstream", "backoff_max", "1")
        start = time.monotonic()
        gmq.reread()
        samples = []
        while True:
            st = gmq.status()
            samples.append(rss_mib(gmq.pid))
            if st["queue"]["depth"] == 0:
                break
            if time.monotonic() - start > 600:
                raise SystemExit("drain did not finish in 600 s")
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        rss.append(("while draining (max)", max(samples)))
        time.sleep(1.0)
        rss.append(("drained", rss_mib(gmq.pid)))
        delivered = st["counters"]["delivered"]
    finally:
        if gmq is not None:
            gmq.stop()
        murano.stop()
    return {"drain_values": depth, "drain_seconds": elapsed, "drain_values_s": depth / elapsed,
            "drain_delivered": delivered, "rss_mib": rss, "rss_max_mib": max(v for _, v in rss),
            "rss_growth_fill_mib": rss[-3][1] - rss[0][1]}


def report(fig: dict, baseline: dict) -> None:
    print("\n| producers | plain req/s | naive durable req/s | gmq req/s | gmq/plain | gmq/naive | "
          "p50 ms plain/naive/gmq | p99 ms plain/naive/gmq |")
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    for lvl in (1, 8, 32):
        p, n, g = fig["plain_%d" % lvl], fig["naive_%d" % lvl], fig["gmq_%d" % lvl]
        print("| %d | %s | %s | %s | %.2f | %.2f | %.2f / %.2f / %.2f | %.2f / %.2f / %.2f |" % (
            lvl, format(round(p["rps"]), ","), format(round(n["rps"]), ","), format(round(g["rps"]), ","),
            g["rps"] / p["rps"], g["rps"] / n["rps"], p["p50"], n["p50"], g["p50"], p["p99"], n["p99"], g["p99"]))
    b5 = fig["plain_b5_32"]
    print("\nplain server with the default listen backlog 5 at 32 producers: %s req/s, p99 %.1f ms"
          % (format(round(b5["rps"]), ","), b5["p99"]))
    print("gmq non-2xx answers during the load: %d" % sum(fig["gmq_%d" % l]["non2xx"] for l in (1, 8, 32)))
    print("batched: %s req/s x 100 values = %s durable values/s (p99 %.1f ms)" % (
        format(round(fig["batched_rps"]), ","), format(round(fig["batched_values_s"]), ","), fig["batched_p99"]))
    if "pq_ack_putx1" in fig:
        print("persist-queue SQLiteAckQueue (in-process, no HTTP): put x1 %s/s, put x8 %s/s, get+ack %s/s; "
              "gmq over HTTP at 8 = %.1fx its put x8" % (
                  format(round(fig["pq_ack_putx1"]), ","), format(round(fig["pq_ack_putx8"]), ","),
                  format(round(fig.get("pq_ack_get_ackx1", 0)), ","), fig["gmq_8"]["rps"] / fig["pq_ack_putx8"]))
    print("drain: %s values in %.1f s = %s values/s (delivered counter %d)" % (
        format(fig["drain_values"], ","), fig["drain_seconds"], format(round(fig["drain_values_s"]), ","),
        fig["drain_delivered"]))
    print("RSS MiB: " + ", ".join("%s %.1f" % (k, v) for k, v in fig["rss_mib"]))
    print("\nratios are medians of per-round ratios; per round: " + "; ".join(
        "%s %s" % (k, ", ".join("%.2f" % x for x in fig[k + "_rounds"]))
        for k in ("ratio_8_plain", "ratio_8_naive", "ratio_1_naive", "ratio_p99_32")))
    print("\n| target | figure | target | pass |" + (" baseline |" if baseline else ""))
    print("|---|---:|---:|---|" + ("---:|" if baseline else ""))
    for name, key, op, limit, _ in TARGETS:
        value = fig.get(key)
        ok = value is not None and (value >= limit if op == ">=" else value <= limit)
        base = baseline.get(key)
        print("| %s | %s | %s %s | %s |%s" % (name, _fmt(value), op, _fmt(limit), "yes" if ok else "NO",
                                              " %s |" % _fmt(base) if baseline else ""))


def _fmt(v) -> str:
    if v is None:
        return "-"
    return format(round(v), ",") if abs(v) >= 100 else "%.2f" % v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s, a 20,000-value backlog")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--backlog", type=int, default=100000)
    ap.add_argument("--anchors", default="/work/shared/bench-anchors")
    ap.add_argument("--dir", default=os.path.expanduser("~/anchor-work/gmq-bench"),
                    help="scratch directory on the disk under test (not tmpfs)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter to run gmq under (e.g. a venv with requests: no start-up .pth hooks)")
    ap.add_argument("--json", dest="json_out", help="write every figure to this file")
    ap.add_argument("--baseline", help="a --json file from an earlier run, shown beside the targets")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.backlog = 1, 2.0, 20000
    GMQ_PYTHON[0] = args.python
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (Debian package wrk)")
    os.makedirs(args.dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="run-", dir=args.dir)
    baseline = {}
    if args.baseline:
        with open(args.baseline) as f:
            baseline = json.load(f)
    try:
        print("HTTP levels (%d rounds x %g s, interleaved)..." % (args.rounds, args.seconds), flush=True)
        fig = http_levels(args, work)
        print("batched writes...", flush=True)
        fig.update(batched(args, work))
        print("persist-queue...", flush=True)
        fig.update(persist_queue(args))
        print("drain of %d values and RSS..." % args.backlog, flush=True)
        fig.update(drain_and_rss(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fig["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report(fig, baseline)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(fig, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
