"""``gwe status``: what this gateway runs, read locally (no cloud needed)."""
from __future__ import annotations

from typing import List

from atomic_config import gwe_paths


def gateway_status() -> dict:
    from otau import load_statuses
    from otau.supervisord import Supervisor

    from . import config
    from .engine_report import engine_report, fetch_gmq_status
    from .link_state import read_link_state

    paths = gwe_paths()
    gateway = config.load_gateway_config()
    report = engine_report(paths, Supervisor(paths.supervisor_socket).all_processes, fetch_gmq_status,
                           read_link_state(paths))
    report["gateway"] = {"serial": gateway.uuid, "product_id": gateway.product_id, "host": gateway.host,
                         "activated": bool(gateway.cik)}
    report["last_installs"] = sorted(load_statuses(paths), key=lambda s: s.get("finished_at") or 0)[-5:]
    return report


def _clock(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def render_status(doc: dict) -> str:
    lines: List[str] = []
    gw = doc["gateway"]
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
