"""Nothing an installer starts outlives it: a cgroup of its own where the kernel offers one, else a sweep.

A process that calls ``setsid`` or double-forks leaves the installer's session and process
group, so killing the group is not enough. Where a writable cgroup v2 hierarchy exists (root,
``/sys/fs/cgroup`` or the hybrid ``/sys/fs/cgroup/unified``), the installer is placed in a new
cgroup below gwe's own before it runs; every descendant stays in it whatever it does, and the
whole cgroup is killed once the installer is done. Without one, :func:`sweep` finds leftovers
by what they cannot shed all at once: the installer's session or process group, the install
token in their environment, or a working directory, executable or open file in the package's
directory; only processes started after the installer are considered.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import time
from typing import List, Optional

log = logging.getLogger(__name__)

CGROUP_PREFIX = "gwe-otau-"
TOKEN_ENV = "GWE_OTAU_INSTALL"  # in the installer's environment, inherited by all it starts
KILL_ROUNDS = 20


def _describe(pid: int) -> str:
    import psutil

    try:
        cmdline = " ".join(psutil.Process(pid).cmdline()) or psutil.Process(pid).name()
    except psutil.Error:
        cmdline = "?"
    return "pid %d: %s" % (pid, cmdline[:200])


def cgroup2_mount() -> Optional[str]:
    """Where the cgroup v2 hierarchy is mounted (pure v2 or hybrid), or None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                before, _, after = line.partition(" - ")
                if after.split(" ", 1)[0] == "cgroup2":
                    fields = before.split()
                    if fields[3] == "/":
                        return fields[4]
    except OSError:
        pass
    return None


def own_cgroup(mount: str) -> Optional[str]:
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("0::"):
                    return os.path.join(mount, line[3:].strip().lstrip("/"))
    except OSError:
        pass
    return None


class Cgroup:
    """A cgroup v2 directory holding one installer and everything it starts."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls) -> Optional["Cgroup"]:
        """A new cgroup below this process's own, or None when there is no writable cgroup v2."""
        mount = cgroup2_mount()
        parent = own_cgroup(mount) if mount else None
        if parent is None:
            return None
        path = os.path.join(parent, "%s%d-%s" % (CGROUP_PREFIX, os.getpid(), secrets.token_hex(4)))
        try:
            os.mkdir(path)
        except OSError as exc:
            log.debug("no cgroup for the installer (%s): falling back to a sweep", exc)
            return None
        return cls(path)

    def add(self, pid: int) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write("%d\n" % pid)

    def pids(self) -> List[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def kill(self) -> List[str]:
        """SIGKILL every process in the cgroup (``cgroup.kill`` where the kernel has it) and wait until
        it is empty; returns what was killed."""
        killed = [_describe(pid) for pid in self.pids()]
        for _ in range(KILL_ROUNDS * 5):
            pids = self.pids()
            if not pids:
                break
            try:
                with open(os.path.join(self.path, "cgroup.kill"), "w") as f:
                    f.write("1")
            except OSError:
                for pid in pids:
                    _kill(pid)
            time.sleep(0.01)
        return killed

    def remove(self) -> None:
        """Kill what is left and remove the cgroup (it must be empty to go)."""
        self.kill()
        for _ in range(200):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:  # still populated for a moment after the last kill
                time.sleep(0.01)
        log.warning("could not remove the installer's cgroup %s", self.path)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _running(proc) -> bool:
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _left_by_installer(proc, token: str, sid: int, since: float, app_dir: str) -> bool:
    import psutil

    try:
        if proc.create_time() < since - 0.05:
            return False
        pid = proc.pid
        try:
            if os.getsid(pid) == sid or os.getpgid(pid) == sid:
                return True
        except OSError:
            return False
        try:
            if proc.environ().get(TOKEN_ENV) == token:
                return True
        except (psutil.AccessDenied, psutil.ZombieProcess):
            pass
        try:
            if _inside(proc.cwd(), app_dir) or _inside(proc.exe(), app_dir):
                return True
            return any(_inside(f.path, app_dir) for f in proc.open_files())
        except (psutil.AccessDenied, psutil.ZombieProcess, FileNotFoundError):
            return False
    except psutil.Error:
        return False


def sweep(token: str, sid: int, since: float, app_dir: str) -> List[str]:
    """SIGKILL every process the installer (session ``sid``, started at ``since`` by psutil's clock) left behind,
    found by session/process group, install token, or a cwd/exe/open file in ``app_dir``."""
    import psutil

    spare = {os.getpid()}
    proc: Optional[psutil.Process] = psutil.Process()
    while proc is not None:
        spare.add(proc.pid)
        proc = proc.parent()
    killed: List[str] = []
    app_dir = os.path.realpath(app_dir)
    for _ in range(KILL_ROUNDS):  # a leftover may fork while it is being killed
        found = [p for p in psutil.process_iter() if p.pid not in spare and _running(p)
                 and _left_by_installer(p, token, sid, since, app_dir)]
        if not found:
            break
        for p in found:
            killed.append(_describe(p.pid))
            _kill(p.pid)
        time.sleep(0.01)
    return sorted(set(killed))


def new_token() -> str:
    return secrets.token_hex(8)
