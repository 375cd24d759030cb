"""The dashboard page at ``/ui/``: static shell, script and style shipped in this package, and
the gateway plots rendered here as SVG. Every figure comes from the fleet API's service layer
(:class:`~murano_local.fleet.FleetView`), the same one ``murano-local fleet status`` reads.

| request | answer |
|---|---|
| ``GET /ui/`` | the page (``index.html``); it reads ``/api:1/service/<pid>/fleet/...`` |
| ``GET /ui/static/<file>`` | ``app.js``, ``style.css`` |
| ``GET /ui/plots/<pid>/<id>`` | ``{name: "<svg ...>"}``: CPU, memory and disk; load; gmq depth; gmq counters; usage |
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

from ..fleet_api import product_of
from ..wire import HttpError, Request, Response, path_segment
from .svg import bar_chart, line_chart

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}


def plots(page: dict) -> Dict[str, str]:
    """The gateway page's plots as SVG text, from :meth:`FleetView.gateway`'s answer."""
    series = page["series"]
    usage = page["usage"]
    return {
        "system": line_chart("CPU, memory and disk (device_info)",
                             [("cpu", series["cpu"]), ("memory", series["memory"]), ("disk", series["disk"])],
                             unit="%", y_max=100),
        "load": line_chart("Load average, 1 min (device_info)", [("load1", series["load1"])]),
        "gmq_depth": line_chart("gmq queue depth (engine_report)", [("queued", series["gmq_depth"])]),
        "gmq_counters": line_chart("gmq values accepted and delivered (engine_report)",
                                   [("accepted", series["gmq_accepted"]), ("delivered", series["gmq_delivered"])]),
        "usage": bar_chart("Network use per app and interface (usage_report)",
                           [("%s %s" % (u["identity"], u["iface"]), [("sent", u["tx"]), ("received", u["rx"])])
                            for u in usage], unit="B"),
    }


class DashboardPages:
    def __init__(self, console) -> None:
        self.console = console

    def handle(self, req: Request) -> Optional[Response]:
        path = req.path
        if path != "/ui" and not path.startswith("/ui/"):
            return None
        if req.method not in ("GET", "HEAD"):
            raise HttpError(405, "method not allowed", [("Allow", "GET")])
        if path in ("/ui", "/ui/index.html"):
            return Response(302, headers=[("Location", "/ui/")])
        if path == "/ui/":
            return _static("index.html")
        if path.startswith("/ui/static/"):
            name = path[len("/ui/static/"):]
            if name not in STATIC_TYPES or name == "index.html":
                raise HttpError(404, "no such file")
            return _static(name)
        parts = path.split("/")
        if len(parts) == 5 and parts[2] == "plots":
            page = self.console.view.gateway(product_of(parts[3]), path_segment(parts[4]))
            return Response(200, json.dumps(plots(page)).encode("utf-8"), "application/json",
                            [("Cache-Control", "no-store")])
        raise HttpError(404, "no such page")


def _static(name: str) -> Response:
    with open(os.path.join(STATIC_DIR, name), "rb") as f:
        body = f.read()
    return Response(200, body, STATIC_TYPES[name], [("Cache-Control", "no-cache")])
