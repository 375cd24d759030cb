"""supervisord control over its unix socket (XML-RPC over a unix-socket ``http.client`` connection).

Only the app's own process group is touched: after ``reloadConfig`` the group is
removed and re-added when its config changed (or added when new, removed when gone);
every other program keeps running even if its file changed on disk meanwhile.

When the caller runs inside that very group (gwe installing itself from its daemon), stopping
the group would kill the caller between "remove" and "add" and leave gwe stopped for good.
The change is then made by a detached helper (:func:`main`, in its own
session, so stopping the group does not stop it); the caller just waits to be replaced.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import http.client
import socket
import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Dict, List, Optional, Set

from supervisor.states import RUNNING_STATES, STOPPED_STATES, ProcessStates, SupervisorStates

from .errors import SupervisorError

log = logging.getLogger(__name__)

# A process in one of these fails the health gate (STOPPED only once it has been seen started).
BAD_STATES = (ProcessStates.FATAL, ProcessStates.EXITED, ProcessStates.BACKOFF, ProcessStates.STOPPED,
              ProcessStates.UNKNOWN)
POLL_S = 0.1
HELPER = "import sys; from otau.supervisord import main; sys.exit(main(sys.argv[1:]))"


def _fault_text(exc: BaseException) -> str:
    if isinstance(exc, xmlrpc.client.Fault):
        return exc.faultString
    return str(exc) or type(exc).__name__


class _UnixSocketConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str) -> None:
        super().__init__("127.0.0.1")
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixSocketTransport(xmlrpc.client.Transport):
    """XML-RPC to supervisord's unix socket. supervisor's own ``SupervisorTransport`` does the same,
    but importing ``supervisor.xmlrpc`` loads supervisord's whole HTTP server (medusa, html, csv,
    importlib.metadata: 1.3 MiB of an idle gwe's RSS; docs/gwe.md, Performance)."""

    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self.socket_path = socket_path

    def make_connection(self, host):
        if self._connection and self._connection[0] == host:
            return self._connection[1]
        self._connection = host, _UnixSocketConnection(self.socket_path)
        return self._connection[1]


def _is_fault(exc: SupervisorError, *names: str) -> bool:
    """Whether supervisord refused with one of these ``supervisor.xmlrpc.Faults`` (imported only on a
    fault, for the reason above)."""
    if exc.fault is None:
        return False
    from supervisor.xmlrpc import Faults

    return exc.fault in {getattr(Faults, name) for name in names}


@dataclass(frozen=True)
class Health:
    healthy: bool
    state: str
    detail: str


class Supervisor:
    """A client for one supervisord; every call fails with SupervisorError, never a raw socket error."""

    def __init__(self, socket_path: str, helper_log: Optional[str] = None) -> None:
        self.socket_path = socket_path
        self.helper_log = helper_log  # where a detached helper's errors go

    def _proxy(self) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=_UnixSocketTransport(self.socket_path))

    def _call(self, method: str, *args):
        target = self._proxy().supervisor
        try:
            return getattr(target, method)(*args)
        except (xmlrpc.client.Fault, OSError, xmlrpc.client.ProtocolError) as exc:
            raise SupervisorError("supervisord %s%r failed: %s" % (method, args, _fault_text(exc)),
                                  fault=exc.faultCode if isinstance(exc, xmlrpc.client.Fault) else None)

    def check(self) -> None:
        try:
            state = self._call("getState")
        except SupervisorError as exc:
            raise SupervisorError("supervisord is not reachable at %s: %s" % (self.socket_path, exc))
        if state.get("statecode") != SupervisorStates.RUNNING:
            raise SupervisorError("supervisord is %s" % state.get("statename"))

    def all_processes(self) -> List[Dict]:
        """supervisord's process info for every program (name, statename, exitstatus, start, now...)."""
        return self._call("getAllProcessInfo")

    def group_processes(self, group: str) -> List[Dict]:
        return [p for p in self.all_processes() if p.get("group") == group]

    def apply_group(self, group: str, here: bool = False) -> str:
        """Make supervisord run ``group`` as its include file now says; returns what was done.

        ``here`` forces the work into this process even if it belongs to the group.
        """
        if not here and self._caller_in_group(group):
            return self._detached("apply", group)
        return self._apply_group(group)

    def remove_group(self, group: str, here: bool = False) -> str:
        """Stop and forget ``group`` (its include file must already be gone)."""
        if not here and self._caller_in_group(group):
            return self._detached("remove", group)
        self._call("reloadConfig")
        self._remove(group)
        return "removed"

    def _caller_in_group(self, group: str) -> bool:
        import psutil

        pids = {p["pid"] for p in self.group_processes(group) if p.get("pid")}
        try:
            proc: Optional[psutil.Process] = psutil.Process()
            while proc is not None and pids:
                if proc.pid in pids:
                    return True
                proc = proc.parent()
        except psutil.Error:
            return False
        return False

    def _detached(self, action: str, group: str) -> str:
        log.info("%s of group %s runs in a detached helper: this process belongs to it", action, group)
        out = subprocess.DEVNULL
        if self.helper_log:
            os.makedirs(os.path.dirname(self.helper_log), exist_ok=True)
            out = open(self.helper_log, "ab")
        try:
            helper = subprocess.Popen([sys.executable, "-c", HELPER, self.socket_path, action, group],
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                      close_fds=True, cwd="/")
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        code = helper.wait()  # usually supervisord stops this process before the helper is done
        if code != 0:
            raise SupervisorError("the detached supervisord helper for %s failed (exit %d)" % (group, code))
        return "detached"

    def _apply_group(self, group: str) -> str:
        added, changed, removed = self._call("reloadConfig")[0]
        present = bool(self.group_processes(group))
        if group in removed or (group in changed):
            self._remove(group)
            present = False
        if group in removed:
            return "removed"
        if group in added or group in changed or not present:
            try:
                self._call("addProcessGroup", group)
            except SupervisorError as exc:
                if _is_fault(exc, "BAD_NAME"):
                    return "absent"
                if not _is_fault(exc, "ALREADY_ADDED"):
                    raise
            return "changed" if group in changed else "added"
        self._start_if_stopped(group)
        return "unchanged"

    def _start_if_stopped(self, group: str) -> None:
        for proc in self.group_processes(group):
            if proc["state"] in (ProcessStates.STOPPED, ProcessStates.EXITED, ProcessStates.FATAL):
                try:
                    self._call("startProcess", "%s:%s" % (group, proc["name"]), False)
                except SupervisorError as exc:
                    if not _is_fault(exc, "ALREADY_STARTED"):
                        raise

    def _remove(self, group: str, stop_timeout: float = 60.0) -> None:
        """Stop the group, then remove it. A crash-looping process that autorestarts meanwhile is
        stopped again. Stopping is polled here: supervisord's own ``wait`` answers only on its 1 s tick."""
        deadline = time.monotonic() + stop_timeout
        while True:
            while True:
                procs = self.group_processes(group)
                if not procs or all(p["state"] in STOPPED_STATES for p in procs):
                    break
                if time.monotonic() >= deadline:
                    raise SupervisorError("%s did not stop within %.0fs" % (group, stop_timeout))
                if any(p["state"] in RUNNING_STATES for p in procs):
                    self._stop_group(group)
                time.sleep(POLL_S / 2)
            try:
                self._call("removeProcessGroup", group)
                return
            except SupervisorError as exc:
                if _is_fault(exc, "BAD_NAME"):
                    return
                if not _is_fault(exc, "STILL_RUNNING") or time.monotonic() >= deadline:
                    raise

    def _stop_group(self, group: str) -> None:
        try:
            self._call("stopProcessGroup", group, False)
        except SupervisorError as exc:
            if not _is_fault(exc, "BAD_NAME"):
                log.warning("stopping %s: %s", group, exc)

    def wait_healthy(self, group: str, startsecs: float, settle: float, timeout: float) -> Health:
        """Wait until every process of ``group`` is RUNNING (supervisord's own ``startsecs`` check)
        and stays RUNNING with the same pid for ``settle`` more seconds.

        A process that falls to BACKOFF/EXITED/FATAL, or restarts, fails the gate at once.
        """
        deadline = time.monotonic() + startsecs + settle + timeout
        pids: Dict[str, int] = {}
        running_since: Dict[str, float] = {}
        started: Set[str] = set()  # a freshly added group is STOPPED until supervisord's next tick
        last = Health(False, "UNKNOWN", "no process in group %s" % group)
        while time.monotonic() < deadline:
            procs = self.group_processes(group)
            now = time.monotonic()
            if not procs:
                last = Health(False, "UNKNOWN", "group %s is not in supervisord" % group)
            else:
                ok = True
                for proc in procs:
                    state, statename = proc["state"], proc["statename"]
                    name = proc["name"]
                    if state != ProcessStates.STOPPED:
                        started.add(name)
                    if state in BAD_STATES and (state != ProcessStates.STOPPED or name in started):
                        if state == ProcessStates.EXITED:
                            detail = "exited with status %s" % proc.get("exitstatus")
                        else:
                            detail = proc.get("spawnerr") or proc.get("description") or ""
                        return Health(False, statename, "%s is %s: %s" % (name, statename, detail))
                    if state == ProcessStates.RUNNING:
                        if pids.setdefault(name, proc["pid"]) != proc["pid"]:
                            return Health(False, "RESTARTED", "%s restarted during the health check" % name)
                        if now - running_since.setdefault(name, now) < settle:
                            ok = False
                    else:
                        ok = False
                    last = Health(False, statename, "%s is %s" % (name, statename))
                if ok:
                    return Health(True, "RUNNING", "running, settled for %.1fs" % settle)
            time.sleep(POLL_S)
        return Health(False, last.state, "not healthy after %.1fs: %s" % (startsecs + settle + timeout, last.detail))


def main(argv: List[str]) -> int:
    """The detached helper: ``SOCKET apply|remove GROUP``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s otau.supervisord helper: %(message)s")
    socket_path, action, group = argv
    supervisor = Supervisor(socket_path)
    try:
        if action == "apply":
            supervisor.apply_group(group, here=True)
        else:
            supervisor.remove_group(group, here=True)
    except SupervisorError as exc:
        log.error("%s %s: %s", action, group, exc)
        return 1
    log.info("%s %s: done", action, group)
    return 0
