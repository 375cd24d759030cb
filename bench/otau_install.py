"""otau benchmark: time from a local tarball to the app RUNNING, and peak memory installing 200 MB.

Measured against a real supervisord in a scratch GWE_HOME (on the disk under test):

- ``upgrade_to_running_s``: ``install_package`` of a small app upgrade (verify, unpack, install.sh,
  program file, supervisord update, until supervisord reports the new version RUNNING; settle 0,
  startsecs 0), median of ``--runs``. Anchor in the same run: ``supervisord_start_s``, the bare
  cost of supervisord reloading and starting one program through XML-RPC (``add_program``).
- ``big_install_s`` / ``big_peak_rss_mib``: ``gwe -I`` of a one-off package holding one
  ``--big-mb`` MB incompressible file, run as a child process.
  Anchors in the same run: ``tar xzf`` of the same package (time and peak RSS, the streaming floor),
  and ``gwe -v`` (peak RSS of the interpreter with the CLI imported). Peak RSS is the child's
  VmHWM, sampled every 10 ms.

    python3 bench/otau_install.py [--runs 5] [--big-mb 200] [--dir DIR] [--json out.json] [--baseline old.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from atomic_config import gwe_paths  # noqa: E402
from harness import Supervisord, wait_for  # noqa: E402
from otau_helpers import make_app  # noqa: E402

import otau  # noqa: E402


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_child(argv, env) -> tuple:
    """(seconds, peak RSS MiB) of a child process.

    The peak is the child's own VmHWM (high-water mark of its address space since exec),
    sampled every 10 ms until it exits; ``wait4``'s ru_maxrss is no use here because Linux
    carries the forking parent's high-water mark into the child.
    """
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _vm_hwm_kib(proc.pid))
        time.sleep(0.01)
    seconds = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit("%s failed (%d): %s" % (argv, proc.returncode, err))
    return seconds, peak / 1024.0


def bench_upgrades(work: str, runs: int) -> dict:
    home = os.path.join(work, "home")
    paths = gwe_paths(home).ensure()
    pkgs = os.path.join(work, "pkgs")
    os.makedirs(pkgs)
    sup = Supervisord(home).start()
    settings = otau.OtauSettings(settle_seconds=0.0, health_timeout=30)
    try:
        first = otau.install_package(make_app(pkgs, "bench", "0", startsecs=0), paths=paths, settings=settings)
        assert first.ok, first.to_json()
        totals, anchors, phases = [], [], {"unpack": [], "install": [], "health": []}
        for n in range(1, runs + 1):
            status = otau.install_package(make_app(pkgs, "bench", str(n), startsecs=0), paths=paths,
                                          settings=settings)
            assert status.ok, status.to_json()
            totals.append(status.timings["total"])
            for key in phases:
                phases[key].append(status.timings.get(key, 0.0))
            name = "anchor%d" % n
            start = time.monotonic()
            sup.add_program(name, "sleep 600", startsecs=0)
            wait_for(lambda n=name: sup.state(n) == "RUNNING", 30, interval=0.005)
            anchors.append(time.monotonic() - start)
    finally:
        sup.stop()
    result = {"upgrade_to_running_s": statistics.median(totals), "supervisord_start_s": statistics.median(anchors)}
    result.update({"upgrade_%s_s" % k: statistics.median(v) for k, v in phases.items()})
    result["upgrade_ratio_to_anchor"] = result["upgrade_to_running_s"] / result["supervisord_start_s"]
    return result


def make_big_package(work: str, megabytes: int) -> str:
    src = os.path.join(work, "bigsrc")
    os.makedirs(src)
    with open(os.path.join(src, "install.sh"), "w") as f:
        f.write("#!/bin/sh\ntest -s blob.bin\n")
    os.chmod(os.path.join(src, "install.sh"), 0o755)
    with open(os.path.join(src, "blob.bin"), "wb") as f:
        for _ in range(megabytes):
            f.write(os.urandom(1 << 20))
    tarball = os.path.join(work, "big.v1.tar.gz")
    with tarfile.open(tarball, "w:gz", compresslevel=1) as tf:
        tf.add(os.path.join(src, "install.sh"), arcname="install.sh")
        tf.add(os.path.join(src, "blob.bin"), arcname="blob.bin")
    shutil.rmtree(src)
    return tarball


def bench_big(work: str, megabytes: int) -> dict:
    tarball = make_big_package(work, megabytes)
    env = dict(os.environ, GWE_HOME=os.path.join(work, "bighome"),
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    gwe_paths(env["GWE_HOME"]).ensure()
    _, floor_rss = run_child([sys.executable, "-m", "gwe", "-v"], env)
    tar_dir = os.path.join(work, "tar-x")
    os.makedirs(tar_dir)
    tar_s, tar_rss = run_child(["tar", "xzf", tarball, "-C", tar_dir], env)
    shutil.rmtree(tar_dir)
    install_s, install_rss = run_child([sys.executable, "-m", "gwe", "-I", tarball], env)
    return {"big_package_mib": os.path.getsize(tarball) / 2 ** 20, "big_install_s": install_s,
            "big_peak_rss_mib": install_rss, "gwe_cli_floor_rss_mib": floor_rss,
            "tar_xzf_s": tar_s, "tar_xzf_peak_rss_mib": tar_rss,
            "big_install_ratio_to_tar": install_s / tar_s,
            "big_rss_over_floor_mib": install_rss - floor_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--dir", help="scratch directory on the disk under test (default: a new temp dir)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--baseline", help="a previous --json file to compare with")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="otau-bench-", dir=args.dir)
    try:
        figures = bench_upgrades(os.path.join(work, "upgrades"), args.runs)
        figures.update(bench_big(work, args.big_mb))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["runs"] = args.runs
    baseline = {}
    if args.baseline:
        with open(args.baseline) as f:
            baseline = json.load(f)
    for key in sorted(figures):
        value = figures[key]
        line = "%-28s %10.3f" % (key, value)
        if key in baseline and baseline[key]:
            line += "   (x%.2f of baseline %.3f)" % (value / baseline[key], baseline[key])
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
