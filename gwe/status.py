"""``gwe status``: what this gateway runs, read locally (no cloud needed)."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import List, Optional, Tuple

from atomic_config import gwe_paths

from .engine_report import INSTALLED, RUNNING, SUITE_PROGRAMS


def _supervisord_problem(paths, exc: Exception) -> str:
    reason = str(exc).split(" failed: ", 1)[-1] if os.path.exists(paths.supervisor_socket) else "no such socket"
    return ("supervisord is not answering on %s (%s): start it with supervisord -c %s "
            "(on an installed gateway: systemctl start gateway-engine)"
            % (paths.supervisor_socket, reason, paths.supervisord_conf))


def gateway_status() -> dict:
    """What ``gwe status`` shows; ``problems`` lists what keeps it from being whole (first: the worst)."""
    from otau import load_statuses
    from otau.supervisord import Supervisor

    from . import config
    from .engine_report import engine_report, fetch_gmq_status
    from .link_state import read_link_state

    paths = gwe_paths()
    problems: List[str] = []
    supervisor = Supervisor(paths.supervisor_socket)

    def processes() -> List[dict]:
        try:
            return supervisor.all_processes()
        except Exception as exc:
            problems.append(_supervisord_problem(paths, exc))
            raise

    report = engine_report(paths, processes, fetch_gmq_status, read_link_state(paths))
    if "supervisord" in report:
        report["supervisord"] = "not answering on %s" % paths.supervisor_socket
    try:
        gateway = config.load_gateway_config()
        report["gateway"] = {"serial": gateway.uuid, "product_id": gateway.product_id, "host": gateway.host,
                             "activated": bool(gateway.cik)}
    except config.ConfigError as exc:
        problems.insert(0, str(exc))
        report["gateway"] = {"error": str(exc)}
    report["last_installs"] = sorted(load_statuses(paths), key=lambda s: s.get("finished_at") or 0)[-5:]
    report["installing"] = install_in_progress(paths)
    # this command is the base install's; gwe and gmq may run newer versions installed over the air
    report["running"] = {name: app["version"] for entry in report["apps"] for name, app in entry.items()
                         if name in SUITE_PROGRAMS}
    report["problems"] = problems
    return report


def install_in_progress(paths) -> Optional[dict]:
    """The install otau is running now, from its journal: name, version, package, step, since.

    Read without otau's recovery (which rewrites a damaged journal): ``gwe status`` changes nothing."""
    from otau.journal import journal_path
    from otau.settings import load_settings

    path = journal_path(paths)
    try:
        with open(path, encoding="utf-8") as f:
            journal = json.load(f)
        since = os.stat(path).st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(journal, dict):
        return None
    try:
        settle = load_settings(paths).settle_seconds
    except Exception:  # a bad [otau] section is the installer's to report
        settle = None
    return {"name": journal.get("name"), "version": journal.get("version"), "package": journal.get("package"),
            "step": journal.get("state"), "since": since, "startsecs": journal.get("startsecs"),
            "settle_seconds": settle}


def wait_until_up(app: str, version: Optional[str], timeout: float, poll: float = 0.25) -> Tuple[dict, Optional[str]]:
    """Wait until ``app`` (at ``version``, if given) runs (RUNNING, or INSTALLED for a one-off) with
    no install in progress, or an install of it fails; the last status, and what is wrong (None: up)."""
    started = time.time()
    deadline = time.monotonic() + timeout
    while True:
        doc = gateway_status()
        apps = {name: entry for item in doc["apps"] for name, entry in item.items()}
        here = apps.get(app)
        if doc["installing"] is None:
            if here and here["status"] in (RUNNING, INSTALLED) and version in (None, here["version"]):
                return doc, None
            for failed in doc["last_installs"]:
                if failed.get("name") == app and failed.get("status") != "installed" \
                        and (failed.get("finished_at") or 0) >= started:
                    return doc, "the install of %s failed: %s" % (failed.get("package"), failed.get("status")) + (
                        " (%s)" % failed["error"] if failed.get("error") else "")
        if time.monotonic() >= deadline:
            now = (_installing_line(doc["installing"], time.time()) if doc["installing"] else
                   "%s is %s %s" % (app, here["status"], here["version"]) if here else
                   "%s is not installed (has the cloud asked for it in engine_fetch?)" % app)
            return doc, "waited %.0f s for %s%s to run: %s" % (timeout, app, " " + version if version else "", now)
        time.sleep(poll)


STEPS = {"unpacking": "unpacking", "installing": "running install.sh",
         "registering": "starting it under supervisord (health gate: RUNNING for startsecs + settle_seconds)",
         "committed": "finishing", "rolling_back": "rolling back"}


def _installing_line(job: dict, now: float) -> str:
    gate = (job.get("startsecs") or 0) + (job.get("settle_seconds") or 0)
    return ("installing %s %s (%s): %s, %.0f s so far; the health gate alone takes %.0f s"
            % (job["name"], job["version"], job["package"], STEPS.get(job["step"], job["step"]),
               max(0.0, now - job["since"]), gate))


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def render_status(doc: dict) -> str:
    lines: List[str] = []
    gw = doc["gateway"]
    if "error" in gw:
        lines.append("gateway  %s" % gw["error"])
    else:
        lines.append("gateway  %s  product %s  %s" % (gw["serial"] or "(no serial)", gw["product_id"] or "(none)",
                                                      "activated" if gw["activated"] else "not activated"))
    base = "gwe %s  gmq %s  device_client %s  build %s" % (doc["gwe_version"], doc["gmq_version"],
                                                          doc["device_client_version"], doc["build_id"])
    running = doc.get("running", {})
    if any(running.get(name) not in (None, doc["%s_version" % name]) for name in SUITE_PROGRAMS):
        lines.append("running  %s (installed over the air)" % "  ".join(
            "%s %s" % (name, running.get(name) or "-") for name in SUITE_PROGRAMS))
        lines.append("base install (this command, %s): %s" % (sys.prefix, base))
    else:
        lines.append(base)
    if "supervisord" in doc:
        lines.append("supervisord: %s" % doc["supervisord"])
    lines.append("")
    lines.append("%-24s %-12s %-10s %10s %s" % ("APP", "VERSION", "STATE", "UPTIME", "EXIT"))
    for entry in doc["apps"]:
        for name, app in entry.items():
            lines.append("%-24s %-12s %-10s %9ds %s" % (name, app["version"] or "-", app["status"], app["uptime"],
                                                        app["exitstatus"]))
    gmq = doc.get("gmq", {})
    lines.append("")
    for who, link in (("gwe", doc.get("connection")), ("gmq", gmq.get("connection"))):
        if link:
            lines.append("%s link: %s since %s%s" % (who, link["state"], _clock(link["since"]),
                                                    "; last error: %s" % link["last_error"]
                                                    if link.get("last_error") else ""))
    if "error" in gmq:
        lines.append("gmq: %s" % gmq["error"])
    else:
        queue = gmq.get("queue", gmq)
        lines.append("gmq queue: %s" % ", ".join("%s=%s" % (k, queue[k]) for k in sorted(queue)
                                                 if not isinstance(queue[k], (dict, list))))
    if doc.get("installing"):
        lines.append("")
        lines.append(_installing_line(doc["installing"], time.time()))
    if doc["last_installs"]:
        lines.append("")
        lines.append("last installs:")
        for s in doc["last_installs"]:
            lines.append("  %s  %s %s: %s%s" % (s.get("package"), s.get("name"), s.get("version"), s.get("status"),
                                                (" (%s)" % s["error"]) if s.get("error") else ""))
    return "\n".join(lines)
