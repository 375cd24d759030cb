"""The ``engine_report``: installed apps with their supervisord state, versions, build id, gmq queue."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Callable, Dict, List, Optional

from atomic_config import GwePaths
from supervisor.states import ProcessStates, getProcessStateDescription

from . import __version__

log = logging.getLogger(__name__)

SUITE_PROGRAMS = ("gwe", "gmq")
RUNNING = getProcessStateDescription(ProcessStates.RUNNING)  # an app's "status" in the report
INSTALLED = "INSTALLED"  # the "status" of a one-off app, which has no program


def suite_versions() -> Dict[str, str]:
    """Versions of the suite's own parts, as installed in this interpreter."""
    from device_client.device import __version__ as device_client_version

    versions = {"gwe": __version__, "device_client": device_client_version}
    try:
        import gmq

        versions["gmq"] = getattr(gmq, "__version__", __version__)
    except ImportError:
        versions["gmq"] = None
    return versions


def build_id(versions: Dict[str, Optional[str]]) -> str:
    """Names this combination of gwe, gmq and device_client (the original hashed their git ids)."""
    text = json.dumps(versions, sort_keys=True).encode("utf-8")
    return hashlib.sha1(text).hexdigest()[:12]


def fetch_gmq_status() -> dict:
    """The local gmq's ``GET /status`` JSON, or ``{"error": ...}`` when gmq does not answer."""
    import gmq

    try:
        return gmq.status(timeout=2.0)
    except Exception as exc:  # gmq down, gmq.cfg unreadable...: the report goes out anyway
        return {"error": "gmq status unavailable: %s" % exc}


def engine_report(paths: GwePaths, processes: Callable[[], List[dict]],
                  gmq_status: Callable[[], dict], connection: Optional[dict] = None) -> dict:
    """``{"apps": [{"<name>": {"exitstatus", "status", "uptime", "version"}}], ...}`` (DESIGN.md).

    ``connection`` is gwe's own link (``device_client.link.LinkState.snapshot()``)."""
    from otau import installed_versions

    versions = suite_versions()
    installed = installed_versions(paths)
    report: dict = {}
    try:
        running = {p["name"]: p for p in processes()}
    except Exception as exc:
        running = {}
        report["supervisord"] = "unreachable: %s" % exc
    apps = []
    for name in sorted(set(installed) | set(running)):
        info = running.get(name)
        version = installed.get(name) or versions.get(name)
        if info is None:  # a one-off app: installed, nothing for supervisord to run
            entry = {"exitstatus": 0, "status": INSTALLED, "uptime": 0, "version": version}
        else:
            up = info.get("now", 0) - info.get("start", 0) if info.get("state") == ProcessStates.RUNNING else 0
            entry = {"exitstatus": info.get("exitstatus"), "status": info.get("statename"),
                     "uptime": max(0, int(up)), "version": version}
        apps.append({name: entry})
    report.update({
        "apps": apps,
        "gwe_version": versions["gwe"],
        "gmq_version": versions["gmq"],
        "device_client_version": versions["device_client"],
        "build_id": build_id(versions),
        "gmq": gmq_status(),
        "connection": connection,
        "timestamp": int(time.time()),
    })
    return report
