"""``murano-local serve --detach``: the server in the background, returned from once it answers.

A script (or a pasted README) can then talk to it on the next line, as ``pg_ctl start -w``
allows: no race between the server's start-up and the first operator command.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import List

PID_FILE = "murano-local.pid"
LOG_FILE = "murano-local.log"


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(url + "/timestamp", timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serve_detached(argv: List[str], host: str, port: int, data_dir: str, timeout: float = 60.0) -> str:
    """Start ``python -m murano_local <argv>`` in its own session, logging to the data directory;
    return its pid once ``/timestamp`` answers. RuntimeError (one line) if it does not."""
    from atomic_config import atomic_write, make_dirs

    if port == 0:
        raise RuntimeError("--detach needs a --port: with 0 nobody would know which one it took")
    url = "http://%s:%d" % ("127.0.0.1" if host in ("", "0.0.0.0") else "[%s]" % host if ":" in host else host, port)
    if _answers(url):
        raise RuntimeError("something already answers at %s: stop it, or choose another --port" % url)
    make_dirs(data_dir, 0o700)
    log_path = os.path.join(data_dir, LOG_FILE)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "murano_local"] + argv, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not _answers(url):
        if proc.poll() is not None:
            with open(log_path, errors="replace") as f:
                last = ([line.strip() for line in f if line.strip()] or ["(nothing logged)"])[-1]
            raise RuntimeError("the server exited (%s): %s" % (proc.returncode, last.split("error: ", 1)[-1]))
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the server did not answer at %s within %.0f s (log: %s)" % (url, timeout, log_path))
        time.sleep(0.05)
    atomic_write(os.path.join(data_dir, PID_FILE), "%d\n" % proc.pid, keep_previous=False)
    return str(proc.pid)
