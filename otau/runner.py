"""Run a package's install.sh (``/bin/sh install.sh``) or ``setup.py install`` under limits.

The installer runs in the unpacked directory, in a new session (so it and everything it
starts form one process group) and, where the kernel offers one, a cgroup of its own
(:mod:`otau.contain`), with stdin from /dev/null and stdout+stderr merged into a pipe of which
only the last ``output_limit`` bytes are kept. Past ``timeout`` the whole group is killed
(SIGTERM, then SIGKILL after a short grace). When the installer exits, anything it started
that still runs is killed, whether it left the session (``setsid``, a double fork) or not:
apps run under supervisord, not as leftovers of an install. :attr:`RunResult.killed` says what.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from . import contain
from .package import INSTALL_SH

log = logging.getLogger(__name__)

KILL_GRACE_S = 2.0
DRAIN_AFTER_EXIT_S = 1.0


@dataclass(frozen=True)
class RunResult:
    exit_code: Optional[int]     # None when killed for the time limit
    output: str                  # the tail of stdout+stderr
    output_bytes: int            # everything it printed, kept or not
    timed_out: bool
    seconds: float
    killed: Tuple[str, ...] = ()  # processes it left running, killed when it was done
    contained_by: str = "sweep"   # "cgroup" or "sweep"

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def suite_python(home: str, executable: Optional[str] = None) -> str:
    """The interpreter the suite runs in, by a path that outlives the suite's own updates.

    An over-the-air gwe runs from ``apps/gwe/<version>/venv``; apps installed by it must not
    name that version, which is pruned later, but ``apps/gwe/current/...``. Symlinks are not
    resolved: a virtualenv's python is a link to the base interpreter.
    """
    executable = os.path.abspath(executable or sys.executable)
    apps = os.path.join(os.path.abspath(home), "var", "lib", "gwe", "apps") + os.sep
    if executable.startswith(apps):
        parts = executable[len(apps):].split(os.sep)
        if len(parts) > 2 and parts[1] not in ("current", ""):
            return os.path.join(apps, parts[0], "current", *parts[2:])
    return executable


def app_environment(name: str, version: str, app_dir: str, home: str) -> Dict[str, str]:
    """What an app (its installer and its program) is told about itself.

    ``GWE_PYTHON`` names the suite's interpreter (``command = %(ENV_GWE_PYTHON)s app.py``), and
    ``PATH`` starts with its directory, so a legacy ``command = python app.py`` (or an install.sh
    calling ``python``, ``gwe -C``, ``gdc``) runs the suite's interpreter and commands (docs/legacy.md).
    """
    python = suite_python(home)
    return {"GWE_APP_NAME": name, "GWE_APP_VERSION": version, "GWE_APP_DIR": app_dir, "GWE_HOME": home,
            "GWE_PYTHON": python,
            "PATH": os.pathsep.join([os.path.dirname(python), os.environ.get("PATH") or os.defpath])}


def install_environment(name: str, version: str, app_dir: str, home: str,
                        previous_version: Optional[str] = None) -> Dict[str, str]:
    """The installer's environment: gwe's own (as the original passed it on) plus the GWE_* facts."""
    env = dict(os.environ)
    env.pop("GWE_OTAU_CRASH_AT", None)
    env.update(app_environment(name, version, app_dir, home))
    env["GWE_APP_PREVIOUS_VERSION"] = previous_version or ""
    return env


def installer_argv(installer: str) -> List[str]:
    if installer == INSTALL_SH:
        return ["/bin/sh", INSTALL_SH]
    return [sys.executable, "setup.py", "install"]


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Tail:
    """The last ``limit`` bytes written, and how many there were in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def read_from(self, fd: int, wait: float) -> bool:
        """Read what is there within ``wait`` seconds; False once the pipe is at EOF."""
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            return True
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[:len(self.data) - self.limit]
        return True


def installer_identity(pid: int, cgroup: Optional[str] = None) -> Dict:
    """What identifies the installer's process group (and cgroup) after this process dies
    (see kill_orphaned_installer)."""
    import psutil

    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        started = time.time()
    return {"pgid": pid, "started": started, "boot": psutil.boot_time(), "cgroup": cgroup}


def kill_orphaned_installer(identity: Optional[Mapping[str, float]]) -> bool:
    """SIGKILL an installer's process group that outlived the gwe that ran it (it runs in its own
    session, so killing gwe does not stop it). Only in the same boot, and only processes of that
    group started no earlier than the installer, so a reused id is left alone."""
    import psutil

    if not identity or abs(psutil.boot_time() - identity.get("boot", 0)) > 1.0:
        return False
    if identity.get("cgroup") and os.path.isdir(identity["cgroup"]):
        group = contain.Cgroup(identity["cgroup"])
        killed = group.kill()
        group.remove()
        return bool(killed)
    pgid = int(identity["pgid"])
    found = False
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.create_time() >= identity["started"] - 0.01:
                found = True
                break
        except (psutil.Error, OSError):
            continue
    if found:
        _kill_group(pgid, signal.SIGKILL)
    return found


def _created(pid: int) -> float:
    """A process's start time on psutil's clock (which may differ from time.time() by a second or two;
    for one that is already gone, a time safely before it)."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return time.time() - 5.0


# Holds the installer until the parent has moved it into its cgroup, so nothing it forks escapes.
# It waits on stdin, a pipe, then runs the installer with stdin from /dev/null.
_WAIT_FOR_CGROUP = 'read -r _ || exit 125; exec "$@" </dev/null'


def _start(argv: List[str], cwd: str, env: Dict[str, str], cgroup: Optional[contain.Cgroup]) -> subprocess.Popen:
    if cgroup is None:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    hold, go = os.pipe()
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", _WAIT_FOR_CGROUP, "gwe-otau-installer", *argv], cwd=cwd, env=env,
                                stdin=hold, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
        os.close(hold)
        hold = -1
        try:
            cgroup.add(proc.pid)
        except OSError as exc:  # still held: it runs, and the sweep catches what it leaves
            log.warning("could not move the installer into %s: %s", cgroup.path, exc)
        os.write(go, b"go\n")
    finally:
        if hold >= 0:
            os.close(hold)
        os.close(go)
    return proc


def run_installer(argv: List[str], cwd: str, env: Mapping[str, str], timeout: float,
                  output_limit: int, on_start: Optional[Callable[[int, Optional[str]], None]] = None,
                  use_cgroup: bool = True) -> RunResult:
    """Run the installer in its own session (and cgroup); ``on_start(pid, cgroup_path)`` is called once it
    exists. ``use_cgroup=False`` relies on the sweep alone (what happens where there is no cgroup v2)."""
    started = time.monotonic()
    deadline = started + timeout
    token = contain.new_token()
    env = dict(env, **{contain.TOKEN_ENV: token})
    cgroup = contain.Cgroup.create() if use_cgroup else None
    try:
        proc = _start(argv, cwd, env, cgroup)
    except BaseException:
        if cgroup is not None:
            cgroup.remove()
        raise
    since = _created(proc.pid)
    fd = proc.stdout.fileno()
    tail = _Tail(output_limit)
    timed_out = False
    killed: List[str] = []
    try:
        if on_start is not None:
            on_start(proc.pid, cgroup.path if cgroup else None)
        pipe_open = True
        exited_at: Optional[float] = None
        while pipe_open:
            now = time.monotonic()
            if proc.poll() is not None:
                exited_at = exited_at or now
                if now - exited_at > DRAIN_AFTER_EXIT_S:  # a leftover child holds the pipe open
                    break
            elif now >= deadline:
                timed_out = True
                break
            pipe_open = tail.read_from(fd, 0.1)
        if not pipe_open and proc.poll() is None:  # closed its output but runs on
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if cgroup is not None:
            killed += cgroup.kill()
        killed += contain.sweep(token, proc.pid, since, cwd)
        _kill_group(proc.pid, signal.SIGKILL)
        if cgroup is not None:
            cgroup.remove()
        drain_until = time.monotonic() + DRAIN_AFTER_EXIT_S
        while time.monotonic() < drain_until and tail.read_from(fd, 0.05):
            pass
        proc.stdout.close()
    if killed:
        log.warning("killed what the installer left running: %s", "; ".join(killed))
    return RunResult(exit_code=None if timed_out else proc.returncode,
                     output=tail.data.decode("utf-8", errors="replace"), output_bytes=tail.total,
                     timed_out=timed_out, seconds=time.monotonic() - started, killed=tuple(killed),
                     contained_by="cgroup" if cgroup is not None else "sweep")
