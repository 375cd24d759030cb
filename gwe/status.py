"""``gwe status``: what this gateway runs, read locally (no cloud needed)."""
from __future__ import annotations

import os
from typing import List

from atomic_config import gwe_paths


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
    report["problems"] = problems
    return report


def _clock(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def render_status(doc: dict) -> str:
    lines: List[str] = []
    gw = doc["gateway"]
    if "error" in gw:
        lines.append("gateway  %s" % gw["error"])
    else:
        lines.append("gateway  %s  product %s  %s" % (gw["serial"] or "(no serial)", gw["product_id"] or "(none)",
                                                      "activated" if gw["activated"] else "not activated"))
    lines.append("gwe %s  gmq %s  device_client %s  build %s" % (doc["gwe_version"], doc["gmq_version"],
                                                                doc["device_client_version"], doc["build_id"]))
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
    if doc["last_installs"]:
        lines.append("")
        lines.append("last installs:")
        for s in doc["last_installs"]:
            lines.append("  %s  %s %s: %s%s" % (s.get("package"), s.get("name"), s.get("version"), s.get("status"),
                                                (" (%s)" % s["error"]) if s.get("error") else ""))
    return "\n".join(lines)
