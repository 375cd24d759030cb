"""The fleet read model: one row per gateway, and a gateway's history, computed only from the
dataports the gateways write (``engine_report``, ``device_info``, ``fetch_status``,
``usage_report``) and the tags an operator gave them.

The CLI (``fleet status``), the dashboard page and the rollout engine all read through here.
Parsing is pure (:func:`summarize`, :func:`gateway_series`); :class:`FleetView` adds the store
and a cache that re-parses a report only when the gateway wrote a new one, so a fleet of
thousands costs one sqlite read and the JSON of the reports that changed.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from .store import NotFound

ENGINE_REPORT = "engine_report"
DEVICE_INFO = "device_info"
FETCH_STATUS = "fetch_status"
USAGE_REPORT = "usage_report"
ROW_REPORTS = (ENGINE_REPORT, DEVICE_INFO, FETCH_STATUS)
SUITE_APPS = ("gwe", "gmq")
HEALTHY_APP_STATES = ("RUNNING", "INSTALLED")
FULL_PERCENT = 90.0
SERIES_POINTS = 120
FETCH_HISTORY = 20
UPLOAD_STATUS = "upload_status"
UPLOAD_HISTORY = 20

Report = Tuple[Optional[str], int]  # (raw JSON text, server timestamp in µs)


def parse_report(raw: Optional[str]) -> Optional[dict]:
    """A dataport's JSON object, or None for anything else (empty, garbage, not an object)."""
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def apps_of(report: Optional[dict]) -> Dict[str, dict]:
    """``{name: {"status", "version", "uptime", "exitstatus"}}`` from an engine_report's ``apps`` list."""
    apps: Dict[str, dict] = {}
    entries = report.get("apps") if report else None
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict):
            continue
        for name, info in entry.items():
            if isinstance(info, dict):
                apps[str(name)] = {"status": info.get("status"), "version": _text(info.get("version")),
                                   "uptime": _number(info.get("uptime")), "exitstatus": info.get("exitstatus")}
    return apps


def _text(value: object) -> Optional[str]:
    return None if value is None else str(value)


def _number(value: object) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _gmq(report: Optional[dict]) -> Optional[dict]:
    gmq = report.get("gmq") if report else None
    if not isinstance(gmq, dict):
        return None
    if "error" in gmq and "queue" not in gmq:
        return {"error": str(gmq["error"]), "depth": None, "alarms": [], "delivered": None, "accepted": None}
    queue = gmq.get("queue") if isinstance(gmq.get("queue"), dict) else {}
    counters = gmq.get("counters") if isinstance(gmq.get("counters"), dict) else {}
    alarms = gmq.get("alarms") if isinstance(gmq.get("alarms"), list) else []
    return {"error": None, "depth": _number(queue.get("depth")),
            "alarms": [str(a.get("kind")) if isinstance(a, dict) else str(a) for a in alarms],
            "delivered": _number(counters.get("delivered")), "accepted": _number(counters.get("accepted"))}


def _disk(info: Optional[dict]) -> Optional[dict]:
    """The root filesystem (else the fullest one) of a device_info."""
    disks = [d for d in (info.get("disks") or []) if isinstance(d, dict)] if info else []
    disks = [d for d in disks if _number(d.get("percent")) is not None]
    if not disks:
        return None
    root = [d for d in disks if d.get("mount") == "/"]
    disk = root[0] if root else max(disks, key=lambda d: d["percent"])
    return {"mount": _text(disk.get("mount")), "percent": disk["percent"], "free": _number(disk.get("free")),
            "total": _number(disk.get("total"))}


def _memory(info: Optional[dict]) -> Optional[dict]:
    memory = info.get("memory") if info else None
    if not isinstance(memory, dict):
        return None
    return {"percent": _number(memory.get("percent")), "available": _number(memory.get("available")),
            "total": _number(memory.get("total"))}


def _cpu(info: Optional[dict]) -> Optional[dict]:
    cpu = info.get("cpu") if info else None
    if not isinstance(cpu, dict):
        return None
    load = cpu.get("load_avg") if isinstance(cpu.get("load_avg"), list) else []
    return {"percent": _number(cpu.get("percent")), "load1": _number(load[0]) if load else None,
            "count": _number(cpu.get("count"))}


def _fetch(status: Optional[dict], ts: Optional[int]) -> Optional[dict]:
    if status is None:
        return None
    return {"package": _text(status.get("package")), "status": _text(status.get("status")),
            "error": _text(status.get("error")), "step": _text(status.get("step")), "timestamp": ts}


def summarize(identity: str, tags: Sequence[str], reports: Dict[str, Report]) -> dict:
    """One fleet row from a gateway's latest reports (``{alias: (raw, timestamp_us)}``)."""
    return _with_identity(_summary(reports), identity, tags, [ts for _raw, ts in reports.values()])


def _with_identity(summary: dict, identity: str, tags: Sequence[str], stamps: Sequence[Optional[int]]) -> dict:
    """The row: serial first, then tags, when the gateway last wrote a report, and the summary."""
    row = {"serial": identity, "tags": list(tags),
           "last_seen": max((ts for ts in stamps if ts is not None), default=None)}
    row.update(summary)
    return row


def _summary(reports: Dict[str, Report]) -> dict:
    engine = parse_report(reports.get(ENGINE_REPORT, (None, 0))[0])
    info = parse_report(reports.get(DEVICE_INFO, (None, 0))[0])
    fetch_raw, fetch_ts = reports.get(FETCH_STATUS, (None, None))
    fetch = parse_report(fetch_raw)
    apps = apps_of(engine)
    row = {
        "gwe_version": _text(engine.get("gwe_version")) if engine else None,
        "gmq_version": _text(engine.get("gmq_version")) if engine else None,
        "apps": [dict(name=name, **apps[name]) for name in sorted(apps) if name not in SUITE_APPS],
        "suite": [dict(name=name, **apps[name]) for name in SUITE_APPS if name in apps],
        "fetch_status": _fetch(fetch, fetch_ts),
        "gmq": _gmq(engine),
        "link": _text(engine["connection"].get("state")) if engine and isinstance(engine.get("connection"), dict)
        else None,
        "disk": _disk(info),
        "memory": _memory(info),
        "cpu": _cpu(info),
    }
    row["problems"] = problems(row, engine is not None)
    return row


def problems(row: dict, reported: bool) -> List[str]:
    """What an operator should look at, in words (empty: nothing)."""
    if not reported:
        return ["no engine_report yet"]
    found = []
    for app in row["suite"] + row["apps"]:
        if app["status"] not in HEALTHY_APP_STATES:
            found.append("%s %s" % (app["name"], app["status"]))
    fetch = row["fetch_status"]
    if fetch and fetch["status"] not in (None, "installed"):
        found.append("last install %s: %s" % (fetch["status"], fetch["package"]))
    if row["link"] not in (None, "connected"):
        found.append("link %s" % row["link"])
    gmq = row["gmq"]
    if gmq and gmq["error"]:
        found.append("gmq unreachable")
    elif gmq and gmq["alarms"]:
        found.append("gmq alarms: %s" % ", ".join(sorted(set(gmq["alarms"]))))
    for key in ("disk", "memory"):
        if row[key] and (row[key]["percent"] or 0) >= FULL_PERCENT:
            found.append("%s %d%% full" % (key, row[key]["percent"]))
    return found


def gateway_series(device_infos: List[dict], engine_reports: List[dict]) -> Dict[str, list]:
    """Time series for the plots from history points (``[{"timestamp", "value"}]``, oldest first):
    ``{name: [[timestamp_us, value], ...]}``."""
    series: Dict[str, list] = {k: [] for k in ("cpu", "memory", "disk", "load1", "gmq_depth", "gmq_delivered",
                                               "gmq_accepted")}
    for point in device_infos:
        info = parse_report(point["value"])
        ts = point["timestamp"]
        for name, part, key in (("cpu", _cpu(info), "percent"), ("memory", _memory(info), "percent"),
                                ("disk", _disk(info), "percent"), ("load1", _cpu(info), "load1")):
            if part and part.get(key) is not None:
                series[name].append([ts, part[key]])
    for point in engine_reports:
        gmq = _gmq(parse_report(point["value"]))
        ts = point["timestamp"]
        for name, key in (("gmq_depth", "depth"), ("gmq_delivered", "delivered"), ("gmq_accepted", "accepted")):
            if gmq and gmq.get(key) is not None:
                series[name].append([ts, gmq[key]])
    return series


def usage_totals(usage_reports: List[dict]) -> List[dict]:
    """usage_report points added up per interface and consumer (each report covers the interval
    since the previous one): ``[{"iface", "identity", "requests", "tx", "rx"}]``, largest first."""
    totals: Dict[Tuple[str, str], dict] = {}
    for point in usage_reports:
        report = parse_report(point["value"]) or {}
        for iface, consumers in report.items():
            if not isinstance(consumers, dict):
                continue
            for identity, calls in consumers.items():
                if not isinstance(calls, dict):
                    continue
                total = totals.setdefault((iface, identity), {"iface": iface, "identity": identity,
                                                              "requests": 0, "tx": 0, "rx": 0})
                for call in calls.values():
                    if isinstance(call, dict):
                        total["requests"] += _number(call.get("num")) or 0
                        total["tx"] += _number(call.get("tot_tx")) or 0
                        total["rx"] += _number(call.get("tot_rx")) or 0
    return sorted(totals.values(), key=lambda t: (-(t["tx"] + t["rx"]), t["iface"], t["identity"]))


class FleetView:
    """Fleet rows and gateway pages over a :class:`~murano_local.service.Murano`."""

    def __init__(self, murano) -> None:
        self.murano = murano
        self._lock = threading.Lock()
        # (pid, identity) -> (timestamps of the reports it was made from, row without serial/tags/last_seen)
        self._rows: Dict[Tuple[str, str], Tuple[tuple, dict]] = {}

    def rows(self, pid: str, tags: Sequence[str] = ()) -> List[dict]:
        """One row per device of ``pid`` (with any of ``tags``, if given), sorted by serial.

        Reads the reports' timestamps first and the reports themselves only where they changed
        since the cached row was made."""
        store = self.murano.store
        all_tags = store.tags(pid)
        identities = [d["identity"] for d in store.devices(pid)]
        if tags:
            wanted = set(tags)
            identities = [i for i in identities if wanted.intersection(all_tags.get(i, ()))]
        stamps: Dict[str, Dict[str, int]] = {}
        for identity, alias, ts in store.reported_timestamps(pid, ROW_REPORTS):
            stamps.setdefault(identity, {})[alias] = ts
        with self._lock:
            stale = [i for i in identities if self._stamp(stamps.get(i, {})) != self._rows.get((pid, i), ((),))[0]]
        self._refresh(pid, stale)
        with self._lock:
            return [_with_identity(self._rows[(pid, i)][1], i, all_tags.get(i, []), self._rows[(pid, i)][0])
                    for i in identities]

    @staticmethod
    def _stamp(stamps: Dict[str, int]) -> tuple:
        return tuple(stamps.get(a) for a in ROW_REPORTS)

    def _refresh(self, pid: str, identities: Sequence[str]) -> None:
        reports: Dict[str, Dict[str, Report]] = {i: {} for i in identities}
        if identities:
            for identity, alias, raw, ts in self.murano.store.reported_values(pid, ROW_REPORTS, identities):
                reports[identity][alias] = (raw, ts)
        for identity, found in reports.items():
            stamp = self._stamp({alias: ts for alias, (_raw, ts) in found.items()})
            summary = _summary(found)
            with self._lock:
                self._rows[(pid, identity)] = (stamp, summary)

    def row(self, pid: str, identity: str) -> dict:
        if self.murano.store.device(pid, identity) is None:
            raise NotFound("no such device")
        self._refresh(pid, [identity])
        with self._lock:
            stamp, summary = self._rows[(pid, identity)]
        return _with_identity(summary, identity, self.murano.store.tags(pid).get(identity, []), stamp)

    def gateway(self, pid: str, identity: str, points: int = SERIES_POINTS) -> dict:
        """A gateway's page: its row, the engine_report app table, plot series, usage totals and
        its fetch_status history (newest first)."""
        row = self.row(pid, identity)
        store = self.murano.store
        history = {alias: list(reversed(store.history(pid, identity, alias, points)))
                   for alias in (DEVICE_INFO, ENGINE_REPORT, USAGE_REPORT)}
        engine = parse_report(history[ENGINE_REPORT][-1]["value"]) if history[ENGINE_REPORT] else None
        apps = apps_of(engine)
        fetches = []
        for point in store.history(pid, identity, FETCH_STATUS, FETCH_HISTORY):
            status = parse_report(point["value"])
            if status is not None:
                fetches.append(dict(_fetch(status, point["timestamp"]), version=_text(status.get("version")),
                                    running_version=_text(status.get("running_version"))))
        info = parse_report(history[DEVICE_INFO][-1]["value"]) if history[DEVICE_INFO] else None
        uploads = []
        for point in store.history(pid, identity, UPLOAD_STATUS, UPLOAD_HISTORY):
            status = parse_report(point["value"])
            if status is not None:
                uploads.append({"timestamp": point["timestamp"], **{k: status.get(k) for k in (
                    "id", "trigger", "state", "step", "name", "size", "bytes_done", "sha256", "error")}})
        return {
            "row": row,
            "apps": [dict(name=n, **apps[n]) for n in sorted(apps)],
            "series": gateway_series(history[DEVICE_INFO], history[ENGINE_REPORT]),
            "usage": usage_totals(history[USAGE_REPORT]),
            "fetch_history": fetches,
            "upload_history": uploads,
            "uploads": [{"id": c["name"], "size": c["size"], "sha256": c["sha256"], "updated": c["updated"]}
                        for c in self.murano.content.list(pid, device=identity)],
            "device": {k: info.get(k) for k in ("hostname", "uname", "uptime_s", "ipaddrs")} if info else None,
        }


class FleetFeed:
    """A number per product that moves with every change a fleet view could show (any device
    write, operator set, tag or rollout step): the page long-polls it to update without a reload.

    Numbers start from the clock in milliseconds, so a page that kept one across a restart of
    the server sees it move."""

    def __init__(self, hub) -> None:
        self._cond = threading.Condition()
        self._start = int(time.time() * 1000)
        self._versions: Dict[str, int] = {}
        self._closed = False
        hub.subscribe(lambda change: self.bump(change.pid))

    def version(self, pid: str) -> int:
        with self._cond:
            return self._versions.get(pid, self._start)

    def bump(self, pid: str) -> None:
        with self._cond:
            self._versions[pid] = self._versions.get(pid, self._start) + 1
            self._cond.notify_all()

    def wait(self, pid: str, since: int, timeout: float) -> int:
        """The version once it differs from ``since`` (at once if it does), or after ``timeout``."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._versions.get(pid, self._start) != since, timeout)
            return self._versions.get(pid, self._start)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
