"""Staged rollouts: a package to the gateways of some tags, one batch at a time, halting by itself.

A rollout asks one batch of gateways to install the package (``engine_fetch`` with the
package's sha256), waits for each one's ``fetch_status`` and then for its ``engine_report`` to
show the app RUNNING for the health window, and only then asks the next batch. Failures (a
``failed`` or ``rolled_back`` fetch_status, no answer within the fetch timeout, the app not
RUNNING for the window within the report timeout) are counted; when they reach the threshold
the rollout halts and says why.

Rollouts and their gateways are rows in murano_local's database. Asking a batch is one
transaction: the ``engine_fetch`` sets and the gateways' ``requested`` state commit together,
so a crash (or a restart) never asks a gateway twice nor forgets that it asked. On start the
engine picks every unfinished rollout up where it was.

Both machines guard their transitions (like supervisor's ``process.py``): an event that is
not allowed in the current state raises :class:`TransitionError` and changes nothing.
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .fleet import ENGINE_REPORT, FETCH_STATUS, apps_of, parse_report
from .service import check_tag
from .store import NotFound

log = logging.getLogger(__name__)

ENGINE_FETCH = "engine_fetch"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")
DEFAULT_FETCH_TIMEOUT_S = 600.0
DEFAULT_REPORT_TIMEOUT_S = 300.0
MAX_SECONDS = 7 * 86400.0
RESUME_GRACE_S = 30.0  # after a restart, a gateway gets at least this long to answer what it was asked
TICK_S = 0.5
FETCH_EVIDENCE = 20  # fetch_status points read per gateway and evaluation

# rollout states
RUNNING, PAUSED, COMPLETED, HALTED, ABORTED = "running", "paused", "completed", "halted", "aborted"
ACTIVE = (RUNNING, PAUSED)
ROLLOUT_TRANSITIONS: Dict[str, Dict[str, str]] = {
    "pause": {RUNNING: PAUSED},
    "resume": {PAUSED: RUNNING},
    "abort": {RUNNING: ABORTED, PAUSED: ABORTED},
    "halt": {RUNNING: HALTED, PAUSED: HALTED},
    "complete": {RUNNING: COMPLETED},
}

# gateway (target) states
PENDING, REQUESTED, INSTALLED, HEALTHY, FAILED, SKIPPED, CANCELLED = (
    "pending", "requested", "installed", "healthy", "failed", "skipped", "cancelled")
IN_FLIGHT = (REQUESTED, INSTALLED)
TARGET_STATES = (PENDING, REQUESTED, INSTALLED, HEALTHY, FAILED, SKIPPED, CANCELLED)
TARGET_TRANSITIONS: Dict[str, Dict[str, str]] = {
    "request": {PENDING: REQUESTED},
    "answer": {REQUESTED: INSTALLED},
    "healthy": {INSTALLED: HEALTHY},
    "fail": {PENDING: FAILED, REQUESTED: FAILED, INSTALLED: FAILED},
    "skip": {PENDING: SKIPPED},
    "cancel": {REQUESTED: CANCELLED, INSTALLED: CANCELLED},
}


class RolloutError(Exception):
    """Base of the rollout refusals; ``status`` is the HTTP status the admin API answers."""
    status = 400


class RolloutInvalid(RolloutError):
    status = 400


class RolloutNotFound(RolloutError):
    status = 404


class RolloutConflict(RolloutError):
    status = 409


class TransitionError(RolloutConflict):
    """An event the current state does not allow."""


def _move(table: Dict[str, Dict[str, str]], what: str, state: str, event: str) -> str:
    try:
        return table[event][state]
    except KeyError:
        raise TransitionError("cannot %s %s: it is %s" % (event, what, state))


# -- the spec -------------------------------------------------------------------------------

def parse_amount(text: str, what: str) -> str:
    """``N`` (at least 1) or ``P%`` (0 < P <= 100), normalised; RolloutInvalid otherwise."""
    match = _AMOUNT.match(str(text))
    if not match:
        raise RolloutInvalid("%s must be a count N or a percentage P%%, not %r" % (what, str(text)[:20]))
    number, percent = float(match.group(1)), match.group(2)
    if percent:
        if not 0 < number <= 100:
            raise RolloutInvalid("%s must be a percentage above 0 and at most 100" % what)
        return "%g%%" % number
    if number != int(number) or number < 1:
        raise RolloutInvalid("%s must be a whole number of gateways, at least 1" % what)
    return str(int(number))


def amount_of(amount: str, total: int) -> int:
    """How many gateways ``amount`` (``N`` or ``P%``) means out of ``total``: at least 1."""
    if amount.endswith("%"):
        return max(1, math.ceil(float(amount[:-1]) * total / 100.0 - 1e-9))
    return max(1, int(amount))


def _seconds(value: object, what: str, minimum: float = 0.0) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RolloutInvalid("%s must be a number of seconds" % what)
    if not (math.isfinite(seconds) and minimum <= seconds <= MAX_SECONDS):
        raise RolloutInvalid("%s must be %g..%g seconds" % (what, minimum, MAX_SECONDS))
    return seconds


@dataclass(frozen=True)
class Spec:
    """What the operator asked for (stored as JSON with the rollout)."""
    name: str
    package: str
    app: str
    version: str
    sha256: str
    tags: Tuple[str, ...]
    batch_size: str
    max_failures: str
    health_window: float
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT_S
    report_timeout: float = DEFAULT_REPORT_TIMEOUT_S

    def to_json(self) -> str:
        return json.dumps(dict(asdict(self), tags=list(self.tags)), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Spec":
        doc = json.loads(text)
        doc["tags"] = tuple(doc["tags"])
        return cls(**doc)

    @property
    def engine_fetch(self) -> str:
        return json.dumps({"install": [{"name": self.package, "sha256": self.sha256}]})


def check_request(body: object) -> dict:
    """The create request's fields, validated (not yet against the fleet): RolloutInvalid if bad."""
    if not isinstance(body, dict):
        raise RolloutInvalid("expected a JSON object")
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RolloutInvalid("rollout name must be 1-64 letters, digits and _ . -")
    package = body.get("package")
    if not isinstance(package, str) or not package:
        raise RolloutInvalid("package must name a content item <app>.v<version>.tar.gz")
    from otau.package import parse_package_name  # the one parser of package names
    from otau.errors import PackageError
    try:
        parsed = parse_package_name(package)
    except PackageError as exc:
        raise RolloutInvalid(str(exc))
    if "/" in package:
        raise RolloutInvalid("package must be a content name, not a path")
    tags = body.get("tags")
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not tags:
        raise RolloutInvalid("tags must name at least one tag")
    try:
        tags = tuple(sorted({check_tag(t) for t in tags}))
    except ValueError as exc:
        raise RolloutInvalid(str(exc))
    sha256 = body.get("sha256")
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256)):
        raise RolloutInvalid("sha256 must be 64 lower-case hex digits")
    return {
        "name": name, "package": package, "app": parsed.name, "version": parsed.version, "sha256": sha256,
        "tags": tags,
        "batch_size": parse_amount(body.get("batch_size", "1"), "batch size"),
        "max_failures": parse_amount(body.get("max_failures", "1"), "max failures"),
        "health_window": _seconds(body.get("health_window", 60), "health window"),
        "fetch_timeout": _seconds(body.get("fetch_timeout", DEFAULT_FETCH_TIMEOUT_S), "fetch timeout", 1.0),
        "report_timeout": _seconds(body.get("report_timeout", DEFAULT_REPORT_TIMEOUT_S), "report timeout", 1.0),
    }


# -- the state ------------------------------------------------------------------------------

@dataclass
class Target:
    identity: str
    batch: int
    state: str = PENDING
    requested_us: Optional[int] = None
    answered_us: Optional[int] = None
    finished_us: Optional[int] = None
    detail: str = ""
    dirty: bool = field(default=False, compare=False)

    def move(self, event: str, detail: str = "", at_us: Optional[int] = None) -> None:
        self.state = _move(TARGET_TRANSITIONS, "gateway %s" % self.identity, self.state, event)
        if detail:
            self.detail = detail
        if event == "answer":
            self.answered_us = at_us
        elif event in ("healthy", "fail", "skip", "cancel"):
            self.finished_us = at_us
        self.dirty = True

    def to_dict(self) -> dict:
        return {"serial": self.identity, "batch": self.batch, "state": self.state,
                "requested_us": self.requested_us, "answered_us": self.answered_us,
                "finished_us": self.finished_us, "detail": self.detail}


@dataclass
class Rollout:
    pid: str
    spec: Spec
    state: str
    targets: List[Target]
    created_us: int
    updated_us: int
    reason: str = ""
    dirty: bool = field(default=False, compare=False)

    def move(self, event: str, reason: str, at_us: int) -> None:
        self.state = _move(ROLLOUT_TRANSITIONS, "rollout %s" % self.spec.name, self.state, event)
        self.reason = reason
        self.updated_us = at_us
        self.dirty = True

    @property
    def threshold(self) -> int:
        return amount_of(self.spec.max_failures, len(self.targets))

    @property
    def batch_count(self) -> int:
        return max((t.batch for t in self.targets), default=0)

    def failures(self) -> List[Target]:
        return [t for t in self.targets if t.state == FAILED]

    def in_flight(self) -> List[Target]:
        return [t for t in self.targets if t.state in IN_FLIGHT]

    def next_batch(self) -> List[Target]:
        pending = [t for t in self.targets if t.state == PENDING]
        if not pending:
            return []
        batch = min(t.batch for t in pending)
        return [t for t in pending if t.batch == batch]

    def current_batch(self) -> int:
        started = [t.batch for t in self.targets if t.state != PENDING and t.requested_us is not None]
        return max(started, default=0)

    def summary(self) -> dict:
        counts = {s: 0 for s in TARGET_STATES}
        for t in self.targets:
            counts[t.state] += 1
        done = counts[HEALTHY] + counts[FAILED] + counts[SKIPPED] + counts[CANCELLED]
        spec = self.spec
        return {
            "name": spec.name, "state": self.state, "reason": self.reason, "package": spec.package,
            "app": spec.app, "version": spec.version, "sha256": spec.sha256, "tags": list(spec.tags),
            "batch_size": spec.batch_size, "max_failures": spec.max_failures,
            "health_window": spec.health_window, "fetch_timeout": spec.fetch_timeout,
            "report_timeout": spec.report_timeout, "created_us": self.created_us, "updated_us": self.updated_us,
            "total": len(self.targets), "counts": counts, "failures": counts[FAILED], "threshold": self.threshold,
            "batch": self.current_batch(), "batches": self.batch_count, "done": done,
        }

    def to_dict(self) -> dict:
        return dict(self.summary(), targets=[t.to_dict() for t in self.targets])


def plan(pid: str, spec: Spec, identities: Sequence[str], now_us: int) -> Rollout:
    """A new rollout over ``identities`` (in this order), cut into batches of ``spec.batch_size``."""
    size = amount_of(spec.batch_size, len(identities))
    targets = [Target(identity, i // size + 1) for i, identity in enumerate(identities)]
    for t in targets:
        t.dirty = True
    return Rollout(pid, spec, RUNNING, targets, now_us, now_us, dirty=True)


# -- judging one gateway from its dataports -------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    event: str
    detail: str
    at_us: int


@dataclass
class Evidence:
    """What a gateway wrote since it was asked: fetch_status points (oldest first) and its latest
    engine_report with the server's timestamp."""
    fetches: List[Tuple[int, dict]] = field(default_factory=list)
    report: Optional[dict] = None
    report_us: Optional[int] = None


def judge(target: Target, spec: Spec, evidence: Evidence, now_us: int, resumed_us: int = 0) -> Optional[Verdict]:
    """The next step of an in-flight gateway, or None while it is still to be waited for.

    ``resumed_us``: when the engine (re)started; a gateway asked before it gets at least
    ``RESUME_GRACE_S`` from then, so a restart of murano_local does not fail it for the outage.
    """
    if target.state == REQUESTED:
        for ts, status in evidence.fetches:
            if ts <= (target.requested_us or 0) or status.get("package") != spec.package:
                continue
            outcome = status.get("status")
            if outcome == "installed":
                return Verdict("answer", "installed", ts)
            if outcome in ("failed", "rolled_back"):
                error = str(status.get("error") or "").strip().splitlines()
                return Verdict("fail", "fetch_status %s%s" % (outcome, ": " + error[0][:200] if error else ""), ts)
        app = _reported_app(spec, evidence, target.requested_us)
        if app is not None and app["version"] == spec.version:
            return Verdict("answer", "engine_report shows %s %s (no fetch_status seen)" % (spec.app, spec.version),
                           evidence.report_us)
        if now_us > _deadline(target.requested_us, spec.fetch_timeout, resumed_us):
            return Verdict("fail", "no fetch_status within %gs of the request" % spec.fetch_timeout, now_us)
        return None
    if target.state == INSTALLED:
        app = _reported_app(spec, evidence, target.requested_us)
        window_us = int(spec.health_window * 1e6)
        if app is not None and app["version"] == spec.version:
            if app["status"] == "RUNNING" and app["uptime"] is not None:
                started = evidence.report_us - int(app["uptime"] * 1e6)
                if now_us - started >= window_us:
                    return Verdict("healthy", "RUNNING for %gs" % spec.health_window, now_us)
            elif app["status"] == "FATAL":  # supervisord gave up: it will not come back by itself
                return Verdict("fail", "%s %s FATAL after the install" % (spec.app, spec.version), now_us)
        if now_us > _deadline(target.answered_us, spec.health_window + spec.report_timeout, resumed_us):
            last = "no engine_report" if app is None else "last engine_report: %s %s %s" % (
                spec.app, app["version"], app["status"])
            return Verdict("fail", "%s %s not RUNNING for %gs within %gs of the install (%s)" % (
                spec.app, spec.version, spec.health_window, spec.health_window + spec.report_timeout, last), now_us)
    return None


def _reported_app(spec: Spec, evidence: Evidence, since_us: Optional[int]) -> Optional[dict]:
    if evidence.report is None or evidence.report_us is None or evidence.report_us <= (since_us or 0):
        return None
    return apps_of(evidence.report).get(spec.app)


def _deadline(start_us: Optional[int], seconds: float, resumed_us: int) -> int:
    timeout_us = int(seconds * 1e6)
    return max((start_us or 0) + timeout_us, resumed_us + min(timeout_us, int(RESUME_GRACE_S * 1e6)))


# -- persistence ----------------------------------------------------------------------------

class RolloutRepository:
    """The rollouts' rows in murano_local's store (tables made by its schema migration 2)."""

    def __init__(self, store) -> None:
        self.store = store

    def load(self, pid: Optional[str] = None, name: Optional[str] = None,
             states: Optional[Sequence[str]] = None) -> List[Rollout]:
        sql = "SELECT pid, name, spec, state, reason, created_us, updated_us FROM rollouts WHERE 1"
        args: list = []
        if pid is not None:
            sql += " AND pid = ?"
            args.append(pid)
        if name is not None:
            sql += " AND name = ?"
            args.append(name)
        if states:
            sql += " AND state IN (%s)" % ",".join("?" * len(states))
            args += list(states)
        rollouts = []
        for r_pid, r_name, spec, state, reason, created, updated in self.store.query(sql + " ORDER BY created_us",
                                                                                     args):
            targets = [Target(*row) for row in self.store.query(
                "SELECT identity, batch, state, requested_us, answered_us, finished_us, detail FROM rollout_targets "
                "WHERE pid = ? AND rollout = ? ORDER BY batch, identity", (r_pid, r_name))]
            rollouts.append(Rollout(r_pid, Spec.from_json(spec), state, targets, created, updated, reason))
        return rollouts

    def names(self, pid: str) -> List[Tuple[str, int]]:
        """``(name, updated_us)`` of every rollout of ``pid``, oldest first."""
        return self.store.query("SELECT name, updated_us FROM rollouts WHERE pid = ? ORDER BY created_us", (pid,))

    def exists(self, pid: str, name: str) -> bool:
        return bool(self.store.query("SELECT 1 FROM rollouts WHERE pid = ? AND name = ?", (pid, name)))

    def save_in(self, conn, rollout: Rollout, new: bool = False) -> None:
        """Write what changed of ``rollout`` inside the caller's transaction."""
        if new:
            conn.execute("INSERT INTO rollouts (pid, name, spec, state, reason, created_us, updated_us) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", (rollout.pid, rollout.spec.name, rollout.spec.to_json(),
                                                         rollout.state, rollout.reason, rollout.created_us,
                                                         rollout.updated_us))
        elif rollout.dirty:
            conn.execute("UPDATE rollouts SET state = ?, reason = ?, updated_us = ? WHERE pid = ? AND name = ?",
                         (rollout.state, rollout.reason, rollout.updated_us, rollout.pid, rollout.spec.name))
        conn.executemany(
            "INSERT INTO rollout_targets (pid, rollout, identity, batch, state, requested_us, answered_us, "
            "finished_us, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pid, rollout, identity) DO UPDATE "
            "SET state = excluded.state, requested_us = excluded.requested_us, answered_us = excluded.answered_us, "
            "finished_us = excluded.finished_us, detail = excluded.detail",
            [(rollout.pid, rollout.spec.name, t.identity, t.batch, t.state, t.requested_us, t.answered_us,
              t.finished_us, t.detail) for t in rollout.targets if t.dirty])

    @staticmethod
    def saved(rollout: Rollout) -> None:
        rollout.dirty = False
        for t in rollout.targets:
            t.dirty = False


# -- the engine -----------------------------------------------------------------------------

class RolloutEngine:
    """Runs every active rollout of a :class:`~murano_local.service.Murano` in one thread.

    It wakes when a gateway in flight writes ``fetch_status`` or ``engine_report`` (through
    the change hub) and every ``tick`` seconds for the timeouts and health windows. Operator
    actions (create, pause, resume, abort) come from the admin API's threads; one lock keeps
    them and the engine's steps apart.
    """

    def __init__(self, murano, tick: float = TICK_S, on_change=None) -> None:
        self.murano = murano
        self.repo = RolloutRepository(murano.store)
        self.tick_s = tick
        self.on_change = on_change  # called with the pid after a rollout moved (the page's feed)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._active: Dict[Tuple[str, str], Rollout] = {}
        self._summaries: Dict[Tuple[str, str, int], dict] = {}  # finished rollouts, by (pid, name, updated_us)
        self._evidence: Dict[Tuple[str, str, str], Evidence] = {}
        self._watched: Dict[Tuple[str, str], int] = {}  # (pid, identity) -> in-flight targets
        self._dirty: set = set()  # (pid, identity) that reported since the last step
        self._dirty_lock = threading.Lock()  # taken by the hub's writing threads: never held long
        self._resumed_us = 0
        murano.hub.subscribe(self._on_hub_change)

    # -- life -----------------------------------------------------------------------------
    def start(self) -> "RolloutEngine":
        with self._lock:
            self._resumed_us = self.murano.store.clock.now_us()
            for rollout in self.repo.load(states=ACTIVE + (HALTED,)):
                if rollout.state in ACTIVE or rollout.in_flight():
                    self._track(rollout)
                if rollout.state in ACTIVE:
                    log.info("rollout %s/%s resumed (%s, batch %d of %d)", rollout.pid, rollout.spec.name,
                             rollout.state, rollout.current_batch(), rollout.batch_count)
                    lost = [t for t in rollout.in_flight() if self._taken_unanswered(rollout, t)]
                    if lost:
                        self._request(rollout, lost, again=True)
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("rollout step failed")
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def _track(self, rollout: Rollout) -> None:
        key = (rollout.pid, rollout.spec.name)
        self._active[key] = rollout
        for t in rollout.in_flight():
            self._watch(rollout.pid, t.identity)

    def _watch(self, pid: str, identity: str) -> None:
        self._watched[(pid, identity)] = self._watched.get((pid, identity), 0) + 1
        with self._dirty_lock:
            self._dirty.add((pid, identity))

    def _unwatch(self, pid: str, identity: str) -> None:
        left = self._watched.get((pid, identity), 0) - 1
        if left > 0:
            self._watched[(pid, identity)] = left
        else:
            self._watched.pop((pid, identity), None)

    def _on_hub_change(self, change) -> None:
        """From the writing thread: note that a gateway in flight reported (cheap, no store access)."""
        if change.kind in ("write", "record") and (change.pid, change.identity) in self._watched \
                and any(alias in (FETCH_STATUS, ENGINE_REPORT) for alias, _v in change.values):
            with self._dirty_lock:
                self._dirty.add((change.pid, change.identity))
            self._wake.set()

    # -- operator actions -------------------------------------------------------------------
    def create(self, pid: str, body: object) -> dict:
        fields = check_request(body)
        store = self.murano.store
        with self._lock:
            if self.repo.exists(pid, fields["name"]):
                raise RolloutConflict("rollout %s already exists" % fields["name"])
            info = store.content_info(pid, fields["package"])
            if info is None:
                raise RolloutNotFound("no package %s in the content area (upload it first)" % fields["package"])
            from otau.verify import sha256_file  # otau's, as gwe checks it
            sha256 = sha256_file(self.murano.content.path(info))
            if fields["sha256"] is not None and fields["sha256"] != sha256:
                raise RolloutConflict("content %s differs from the package given (sha256 %s, not %s): give a new "
                                      "version a new name" % (fields["package"], sha256[:12], fields["sha256"][:12]))
            fields["sha256"] = sha256
            spec = Spec(**fields)
            identities = store.tagged(pid, spec.tags)
            if not identities:
                raise RolloutInvalid("no gateway has tag %s" % " or ".join(spec.tags))
            self._check_overlap(pid, spec, identities)
            rollout = plan(pid, spec, identities, store.clock.now_us())
            store.transaction(lambda conn: self.repo.save_in(conn, rollout, new=True))
            self.repo.saved(rollout)
            self._track(rollout)
            log.info("rollout %s/%s created: %s to %d gateways (%s), batches of %s, halts at %d failures",
                     pid, spec.name, spec.package, len(identities), ",".join(spec.tags), spec.batch_size,
                     rollout.threshold)
            self.step()  # asks the first batch now
        return rollout.to_dict()

    def _check_overlap(self, pid: str, spec: Spec, identities: Sequence[str]) -> None:
        wanted = set(identities)
        for (r_pid, _name), other in self._active.items():
            if r_pid != pid or other.state not in ACTIVE or other.spec.app != spec.app:
                continue
            shared = sorted(wanted.intersection(t.identity for t in other.targets))
            if shared:
                more = " and %d more" % (len(shared) - 3) if len(shared) > 3 else ""
                raise RolloutConflict("rollout %s (%s) already rolls %s out to %s%s" % (
                    other.spec.name, other.state, spec.app, ", ".join(shared[:3]), more))

    def act(self, pid: str, name: str, action: str) -> dict:
        """``pause``, ``resume`` or ``abort`` a rollout (TransitionError if its state forbids it)."""
        if action not in ("pause", "resume", "abort"):
            raise RolloutInvalid("unknown action %r" % action)
        with self._lock:
            rollout = self._active.get((pid, name))
            if rollout is None:
                found = self.repo.load(pid, name)
                if not found:
                    raise RolloutNotFound("no rollout %s" % name)
                rollout = found[0]
            now = self.murano.store.clock.now_us()
            reason = {"pause": "paused by the operator", "resume": "",
                      "abort": "aborted by the operator"}[action]
            rollout.move(action, reason, now)
            if action == "abort":
                for t in rollout.targets:
                    if t.state == PENDING:
                        t.move("skip", "rollout aborted", now)
                    elif t.state in IN_FLIGHT:
                        t.move("cancel", "rollout aborted while it was %s" % t.state, now)
                        self._unwatch(pid, t.identity)
            self._persist(rollout)
            if rollout.state not in ACTIVE and not rollout.in_flight():
                self._active.pop((pid, name), None)
            log.info("rollout %s/%s: %s -> %s", pid, name, action, rollout.state)
        self._changed(pid)
        self._wake.set()
        return rollout.to_dict()

    # -- reading ----------------------------------------------------------------------------
    def status(self, pid: str, name: Optional[str] = None) -> List[dict]:
        """Every rollout of ``pid`` (summaries), or the one named (with its gateways)."""
        with self._lock:
            if name is not None:
                rollout = self._active.get((pid, name)) or next(iter(self.repo.load(pid, name)), None)
                if rollout is None:
                    raise RolloutNotFound("no rollout %s" % name)
                return [rollout.to_dict()]
            summaries = []
            for r_name, updated in self.repo.names(pid):
                live = self._active.get((pid, r_name))
                if live is not None:
                    summaries.append(live.summary())
                    continue
                key = (pid, r_name, updated)  # a finished rollout no longer changes: summarise it once
                if key not in self._summaries:
                    self._summaries[key] = self.repo.load(pid, r_name)[0].summary()
                summaries.append(self._summaries[key])
            return summaries

    # -- the engine's step ------------------------------------------------------------------
    def step(self, now_us: Optional[int] = None) -> None:
        """Judge the gateways in flight, halt or complete rollouts, and ask the next batches."""
        changed = set()
        with self._lock:
            with self._dirty_lock:
                dirty, self._dirty = self._dirty, set()
            for key, rollout in list(self._active.items()):
                now = now_us or self.murano.store.clock.now_us()
                self._judge_rollout(rollout, dirty, now)
                if rollout.state in ACTIVE and len(rollout.failures()) >= rollout.threshold:
                    self._halt(rollout, now)
                if rollout.state == RUNNING and not rollout.in_flight():
                    batch = rollout.next_batch()
                    if batch:
                        self._request(rollout, batch)
                    else:
                        rollout.move("complete", "every gateway answered", now)
                if rollout.dirty or any(t.dirty for t in rollout.targets):
                    self._persist(rollout)
                    changed.add(rollout.pid)
                if rollout.state not in ACTIVE and not rollout.in_flight():
                    del self._active[key]
        for pid in changed:
            self._changed(pid)

    def _judge_rollout(self, rollout: Rollout, dirty: set, now: int) -> None:
        for t in rollout.in_flight():
            key = (rollout.pid, t.identity, rollout.spec.name)
            if (rollout.pid, t.identity) in dirty or key not in self._evidence:
                self._evidence[key] = self._read_evidence(rollout.pid, t)
            verdict = judge(t, rollout.spec, self._evidence[key], now, self._resumed_us)
            if verdict is None:
                continue
            t.move(verdict.event, verdict.detail, verdict.at_us)
            if t.state == INSTALLED:  # judge it again at once: its report may already show it healthy
                verdict = judge(t, rollout.spec, self._evidence[key], now, self._resumed_us)
                if verdict is not None:
                    t.move(verdict.event, verdict.detail, verdict.at_us)
            if t.state not in IN_FLIGHT:
                self._evidence.pop(key, None)
                self._unwatch(rollout.pid, t.identity)
                log.info("rollout %s/%s: %s %s (%s)", rollout.pid, rollout.spec.name, t.identity, t.state, t.detail)

    def _read_evidence(self, pid: str, target: Target) -> Evidence:
        store = self.murano.store
        since = target.requested_us or 0
        fetches = []
        for point in store.history_since(pid, target.identity, FETCH_STATUS, since, FETCH_EVIDENCE):
            status = parse_report(point["value"])
            if status is not None:
                fetches.append((point["timestamp"], status))
        state = store.state(pid, target.identity, [ENGINE_REPORT]).get(ENGINE_REPORT)
        if state is None or state["reported"] is None:
            return Evidence(fetches)
        return Evidence(fetches, parse_report(state["reported"]), state["timestamp"])

    def _halt(self, rollout: Rollout, now: int) -> None:
        failed = rollout.failures()
        why = "; ".join("%s: %s" % (t.identity, t.detail) for t in failed[:5])
        limit = rollout.spec.max_failures
        limit = "%s = %d" % (limit, rollout.threshold) if limit.endswith("%") else limit
        rollout.move("halt", "%d of %d gateways failed (halts at %s): %s%s" % (
            len(failed), len(rollout.targets), limit, why, "; ..." if len(failed) > 5 else ""), now)
        for t in rollout.targets:
            if t.state == PENDING:
                t.move("skip", "rollout halted", now)
        log.warning("rollout %s/%s halted: %s", rollout.pid, rollout.spec.name, rollout.reason)

    def _taken_unanswered(self, rollout: Rollout, target: Target) -> bool:
        """A gateway took the request (cleared engine_fetch) but no fetch_status of the package came:
        gwe loses the answer to an install that ran while murano_local was down (its download or
        its fetch_status write failed), so after a restart such a gateway is asked once more."""
        if target.state != REQUESTED:
            return False
        store = self.murano.store
        state = store.state(rollout.pid, target.identity, [ENGINE_FETCH]).get(ENGINE_FETCH)
        if state is None or state["set"] == rollout.spec.engine_fetch:
            return False  # still pending: the gateway will take it
        return not any(status.get("package") == rollout.spec.package for _ts, status in
                       self._read_evidence(rollout.pid, target).fetches)

    def _request(self, rollout: Rollout, batch: List[Target], again: bool = False) -> None:
        """Ask one batch: the engine_fetch sets and the targets' new state in one transaction
        (``again``: the targets were asked before a restart and lost the request)."""
        store, spec = self.murano.store, rollout.spec
        value = spec.engine_fetch
        asked: List[Tuple[str, int]] = []

        def work(conn) -> None:
            for t in batch:
                try:
                    ts = store.operator_set_in(conn, rollout.pid, t.identity, [(ENGINE_FETCH, value)])
                except NotFound:
                    t.move("fail", "device removed from murano_local", store.clock.now_us())
                    continue
                if again:
                    t.detail, t.dirty = "asked again after a restart of murano_local (no answer to the first ask)", True
                else:
                    t.move("request", "asked to install %s" % spec.package)
                t.requested_us = ts
                asked.append((t.identity, ts))
            rollout.updated_us = store.clock.now_us()
            rollout.dirty = True
            self.repo.save_in(conn, rollout)

        try:
            store.transaction(work)
        except Exception:
            self._reload(rollout)
            raise
        self.repo.saved(rollout)
        from .events import Change
        for identity, ts in asked:  # wake the gateways' long polls (and MQTT pushes) after the commit
            self.murano.hub.publish(Change("set", rollout.pid, identity, ((ENGINE_FETCH, value),), ts))
            if not again:
                self._watch(rollout.pid, identity)
        log.info("rollout %s/%s: batch %d of %d asked%s (%d gateways)", rollout.pid, spec.name,
                 rollout.current_batch(), rollout.batch_count, " again" if again else "", len(asked))

    def _persist(self, rollout: Rollout) -> None:
        try:
            self.murano.store.transaction(lambda conn: self.repo.save_in(conn, rollout))
        except Exception:
            self._reload(rollout)
            raise
        self.repo.saved(rollout)

    def _reload(self, rollout: Rollout) -> None:
        """After a failed commit (full disk...), memory goes back to what is stored."""
        found = self.repo.load(rollout.pid, rollout.spec.name)
        key = (rollout.pid, rollout.spec.name)
        if found:
            self._active[key] = found[0]
        else:
            self._active.pop(key, None)

    def _changed(self, pid: str) -> None:
        if self.on_change is not None:
            self.on_change(pid)
