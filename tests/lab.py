"""Shared parts of the reliability lab's tests: bounded or full counts, and the figures they report.

The suite runs each fault model a bounded number of times; ``scripts/reliability`` sets
``GWE_LAB_FULL=1`` for the full counts and ``GWE_LAB_FIGURES=<file>`` to collect every figure
(one JSON object a line) for docs/RELIABILITY.md.
"""
from __future__ import annotations

import json
import os
import random
import time

FULL = os.environ.get("GWE_LAB_FULL") == "1"


def count(bounded: int, full: int) -> int:
    """How many faults to inject: ``full`` in scripts/reliability, ``bounded`` in the suite."""
    return full if FULL else bounded


def rng(name: str) -> random.Random:
    """A random source per test, seeded from GWE_LAB_SEED (printed with the figure, so a failing
    run can be repeated) or from the clock."""
    seed = int(os.environ.get("GWE_LAB_SEED", "0")) or int(time.time() * 1000) % 1000003
    r = random.Random("%s:%d" % (name, seed))
    r.seed_value = seed
    return r


def figure(model: str, **numbers) -> dict:
    """Report one fault model's figure: printed (pytest -s shows it) and, under
    scripts/reliability, appended to GWE_LAB_FIGURES."""
    row = dict(model=model, full=FULL, **numbers)
    line = json.dumps(row, sort_keys=True)
    print("LAB FIGURE " + line)
    path = os.environ.get("GWE_LAB_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
    return row


def kill_users(mountpoint: str, *roots) -> int:
    """SIGKILL, as the power cut would, the processes ``roots`` (Popen objects or pids) with all
    their descendants and every process whose working directory is under ``mountpoint``."""
    import psutil

    victims = {}
    for root in roots:
        pid = getattr(root, "pid", root)
        try:
            proc = psutil.Process(pid)
            for p in [proc] + proc.children(recursive=True):
                victims[p.pid] = p
        except psutil.NoSuchProcess:
            pass
    mount = os.path.abspath(mountpoint) + os.sep
    for p in psutil.process_iter():
        try:
            if (p.cwd() + os.sep).startswith(mount) and p.pid != os.getpid():
                victims[p.pid] = p
        except (psutil.Error, OSError):
            pass
    for p in victims.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(victims.values()), timeout=10)
    for root in roots:
        if hasattr(root, "wait"):
            root.wait(10)
    return len(victims)
