"""File uploads from the gateway: one job's steps, the spool that keeps jobs, the worker thread.

A job goes ``queued -> collecting -> uploading -> done``, or to ``failed`` from any step
(guarded: no other transition is possible); each step is an ``upload_status``. Jobs live in
``var/lib/gwe/uploads/`` (the record written through ``atomic_config``, the archive fsynced
before the record says ``uploading``), so a gwe restart or power cut resumes them: an upload
goes on from the bytes the server acknowledged, a collection starts again. The spool is the
queue: a request is on disk before ``upload_request`` is cleared, and its final status is
delivered before its record goes. The worker runs one job at a time, then the periodic
schedule of ``[upload]`` in Engine.config.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

from atomic_config import GwePaths, atomic_write, make_dirs

from .upload_collect import CollectError, check_patterns, collect, pack
from .upload_request import (
    Roots, UploadRequest, UploadRequestError, UploadSettings, load_settings, parse_upload_request, request_id,
)

log = logging.getLogger(__name__)

UPLOAD_REQUEST = "upload_request"
UPLOAD_STATUS = "upload_status"
TERMINAL = ("done", "failed")
_NEXT = {
    None: ("queued", "collecting", "failed"),
    "queued": ("collecting", "failed"),
    "collecting": ("collecting", "uploading", "failed"),  # collecting again: after a restart mid-collection
    "uploading": ("uploading", "done", "failed"),
    "done": (),
    "failed": (),
}
REPORT_RETRY_S = 30.0
LISTED = 20  # skipped/missing entries named in a status (a value must stay well under Murano's 1 MiB)


class TransitionError(RuntimeError):
    """A job was asked to move to a state its current one cannot lead to (a bug, never input)."""


class NotReady(Exception):
    """The gateway cannot upload yet (not activated); the job waits."""


@dataclass
class UploadJob:
    key: str
    request: dict
    state: Optional[str] = None
    step: Optional[str] = None
    name: Optional[str] = None           # where it went: content id, or the URL
    files: int = 0
    skipped: List[dict] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    size: Optional[int] = None
    sha256: Optional[str] = None
    bytes_done: int = 0
    resumed_from: Optional[int] = None
    attempts: int = 0
    error: Optional[str] = None
    last_error: Optional[str] = None
    retry_in: Optional[float] = None
    created: float = 0.0
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    first_failure: Optional[float] = None
    reported: bool = False

    @property
    def req(self) -> UploadRequest:
        values = dict(self.request)
        values["patterns"] = tuple(values["patterns"])
        return UploadRequest(**values)

    @property
    def archive_name(self) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.created))
        return "%s-%s.%s" % (self.request["id"], stamp, "tar.gz" if self.request["compress"] else "tar")

    def advance(self, state: str, **changes) -> None:
        """Move to ``state`` (guarded) and set ``changes``; terminal states stamp ``finished_at``."""
        if state not in _NEXT.get(self.state, ()):
            raise TransitionError("upload %s: %s -> %s" % (self.key, self.state, state))
        for name, value in changes.items():
            if not hasattr(self, name):
                raise AttributeError(name)
            setattr(self, name, value)
        self.state = state
        if state == "collecting" and self.started_at is None:
            self.started_at = time.time()
        if state in TERMINAL:
            self.finished_at = time.time()
            self.retry_in = None
            self.reported = False

    def status(self) -> dict:
        """The ``upload_status`` JSON of this step."""
        req = self.request
        return {
            "id": req["id"], "trigger": req["trigger"], "state": self.state, "step": self.step,
            "target": req["url"] or "content", "name": self.name, "files": self.files,
            "skipped": self.skipped[:LISTED], "skipped_count": len(self.skipped),
            "missing": self.missing[:LISTED], "missing_count": len(self.missing), "size": self.size,
            "sha256": self.sha256,
            "bytes_done": self.bytes_done, "resumed_from": self.resumed_from, "attempts": self.attempts,
            "error": self.error, "last_error": self.last_error, "retry_in": self.retry_in,
            "requested_at": self.created, "started_at": self.started_at, "finished_at": self.finished_at,
            "timestamp": round(time.time(), 3),
        }


def refusal(raw_or_doc, reason: str, trigger: str = "request") -> dict:
    """The failed ``upload_status`` of a request refused before anything was done."""
    doc = raw_or_doc
    if isinstance(raw_or_doc, str):
        try:
            doc = json.loads(raw_or_doc)
        except (ValueError, RecursionError):
            doc = None
    now = round(time.time(), 3)
    return {"id": request_id(doc), "trigger": trigger, "state": "failed", "step": "request", "error": reason,
            "target": None, "name": None, "files": 0, "skipped": [], "skipped_count": 0, "missing": [],
            "missing_count": 0, "size": None, "sha256": None,
            "bytes_done": 0, "resumed_from": None, "attempts": 0, "last_error": None, "retry_in": None,
            "requested_at": now, "started_at": None, "finished_at": now, "timestamp": now}


class Spool:
    """Jobs on disk under ``var/lib/gwe/uploads``: ``<key>.json`` and its archive."""

    def __init__(self, paths: GwePaths, directory: Optional[str] = None) -> None:
        self.directory = directory or os.path.join(paths.var_lib, "uploads")
        make_dirs(self.directory, mode=0o700)

    def _record(self, key: str) -> str:
        return os.path.join(self.directory, key + ".json")

    def archive(self, job: UploadJob) -> str:
        return os.path.join(self.directory, job.key + (".tar.gz" if job.request["compress"] else ".tar"))

    def save(self, job: UploadJob) -> None:
        atomic_write(self._record(job.key), json.dumps(asdict(job), sort_keys=True), mode=0o600,
                     keep_previous=False)

    def jobs(self) -> List[UploadJob]:
        out = []
        for entry in sorted(os.listdir(self.directory)):
            if not entry.endswith(".json") or entry.startswith("."):
                continue
            try:
                with open(os.path.join(self.directory, entry)) as f:
                    out.append(UploadJob(**json.load(f)))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("dropping unreadable upload record %s: %s", entry, exc)
                self._unlink(os.path.join(self.directory, entry))
        return sorted(out, key=lambda j: (j.created, j.key))

    def pending(self) -> List[UploadJob]:
        return [j for j in self.jobs() if j.state not in TERMINAL]

    def remove(self, job: UploadJob) -> None:
        archive = self.archive(job)
        for path in (archive, archive + ".tmp", self._record(job.key)):
            self._unlink(path)

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def new_job(self, request: UploadRequest, created: Optional[float] = None) -> UploadJob:
        created = time.time() if created is None else created
        key = "%s-%d" % (request.id, int(created * 1000))
        return UploadJob(key=key, request=request.to_dict(), created=created)

    # -- the schedule's memory: when the last scheduled upload was started ------------------
    def last_scheduled(self) -> Optional[float]:
        try:
            with open(os.path.join(self.directory, "schedule.state")) as f:
                return float(json.load(f)["last"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def set_last_scheduled(self, when: float) -> None:
        atomic_write(os.path.join(self.directory, "schedule.state"), json.dumps({"last": when}), mode=0o600,
                     keep_previous=False)


def gateway_device(paths: GwePaths):
    """A Device for gwe's own identity from Gateway.cfg (HTTP: uploads and their statuses)."""
    from device_client import Device

    from . import __version__, config

    gateway = config.load_gateway_config(paths.gateway_cfg)
    if not gateway.cik:
        raise NotReady("the gateway is not activated yet (no cik in Gateway.cfg)")
    agent = config.load_engine_settings(paths.engine_cfg)["user_agent"] or "GatewayEngine-v%s" % __version__
    return Device(gateway.murano_url, product_id=gateway.product_id, serial=gateway.uuid or None,
                  token=gateway.cik, identity="gwe", user_agent=agent)


class UploadRunner:
    """Carries jobs through their steps and reports each one (``upload_status``, then ``echo``)."""

    def __init__(self, paths: GwePaths, stopping: Optional[threading.Event] = None,
                 device_factory: Callable[[GwePaths], object] = gateway_device,
                 echo: Optional[Callable[[dict], None]] = None, base: Optional[str] = None,
                 spool: Optional[Spool] = None, overrides: Optional[dict] = None) -> None:
        self.paths = paths
        self.spool = spool or Spool(paths)
        self.overrides = overrides or {}
        self.stopping = stopping or threading.Event()
        self.device_factory = device_factory
        self.echo = echo
        self.base = base  # relative patterns start here (None: the log directory)
        self._device = None
        self._last_progress = 0.0

    # -- the device and reports ---------------------------------------------------------
    def device(self):
        if self._device is None:
            self._device = self.device_factory(self.paths)
        return self._device

    def drop_device(self) -> None:
        if self._device is not None:
            try:
                self._device.close()
            except Exception:
                log.debug("closing the upload device failed", exc_info=True)
            self._device = None

    def report(self, job: UploadJob) -> bool:
        """Write the job's status to ``upload_status`` (best effort); True if it was delivered."""
        status = job.status()
        if self.echo is not None:
            self.echo(status)
        return self.publish(status)

    def publish(self, status: dict) -> bool:
        from device_client import errors

        try:
            self.device().write({UPLOAD_STATUS: json.dumps(status, sort_keys=True)})
            return True
        except (errors.RequestError, errors.Forbidden, errors.NotFound) as exc:  # sending it again won't help
            log.error("upload_status of %s refused, not sent again: %s", status.get("id"), exc)
            return True
        except Exception as exc:  # the link is down: the next step's status carries the news
            log.info("upload_status of %s not delivered: %s", status.get("id"), exc)
            self.drop_device()
            return False

    def _step(self, job: UploadJob, state: str, **changes) -> None:
        job.advance(state, **changes)
        self.spool.save(job)
        if self.report(job) and state in TERMINAL:
            self.spool.remove(job)

    def deliver_final(self, job: UploadJob) -> bool:
        """A finished job whose status did not get through: try again, forget it once it did."""
        if self.report(job):
            self.spool.remove(job)
            return True
        return False

    # -- one job ------------------------------------------------------------------------
    def run(self, job: UploadJob) -> UploadJob:
        settings = dataclasses.replace(load_settings(self.paths), **self.overrides)
        if job.state in (None, "queued", "collecting"):
            if not self._collect(job, settings):
                return job
        if job.state == "uploading":
            self._upload(job, settings)
        return job

    def _collect(self, job: UploadJob, settings: UploadSettings) -> bool:
        self._step(job, "collecting", step="collecting")
        req = job.req
        roots = Roots.for_gateway(self.paths, settings)
        archive = self.spool.archive(job)
        try:
            found = collect(req.patterns, roots, self.base or self.paths.log, self.paths.home)
            about = {"id": req.id, "trigger": req.trigger, "gwe_home": self.paths.home}
            packed = pack(found, roots, archive, req.max_bytes, req.compress, about)
        except (CollectError, OSError) as exc:
            reason = str(exc) if isinstance(exc, CollectError) else "%s: %s" % (type(exc).__name__, exc)
            self._step(job, "failed", error=reason)
            return False
        self._step(job, "uploading", step="uploading", files=len(packed.files), skipped=found.skipped,
                   missing=found.missing, size=packed.size, sha256=packed.sha256, bytes_done=0)
        return True

    def _upload(self, job: UploadJob, settings: UploadSettings) -> None:
        from device_client import Backoff, errors

        archive = self.spool.archive(job)
        if not os.path.exists(archive):
            self._step(job, "failed", error="the archive of this upload is gone; ask again")
            return
        backoff = Backoff(min(1.0, settings.retry_max), max(settings.retry_max, 1.0))
        while not self.stopping.is_set():
            job.attempts += 1
            try:
                result = self._send(job, archive, settings)
            except (errors.NetworkError, errors.ServerError, errors.NotActivated, NotReady) as exc:
                self.drop_device()
                now = time.time()
                job.first_failure = job.first_failure or now
                reason = "%s: %s" % (type(exc).__name__, exc)
                if now - job.first_failure > settings.give_up_after:
                    self._step(job, "failed", error="gave up after %ds of failed attempts; last: %s"
                               % (settings.give_up_after, reason))
                    return
                delay = backoff.next_delay()
                log.warning("upload %s: %s; retrying in %.1fs", job.key, reason, delay)
                self._step(job, "uploading", last_error=reason, retry_in=round(delay, 3))
                if self.stopping.wait(delay):
                    return
                continue
            except errors.DeviceAPIError as exc:
                hint = "; this server has no device upload: give a url in the request" \
                    if exc.status in (404, 405) and not job.request["url"] else ""
                self._step(job, "failed", error="%s: %s%s" % (type(exc).__name__, exc, hint))
                return
            except (OSError, ValueError) as exc:
                self._step(job, "failed", error="%s: %s" % (type(exc).__name__, exc))
                return
            self._step(job, "done", step="done", name=result.name, bytes_done=result.size,
                       resumed_from=result.resumed_from, retry_in=None)
            log.info("upload %s done: %s, %d bytes, sha256 %s", job.key, result.name, result.size, result.sha256)
            return

    def _send(self, job: UploadJob, archive: str, settings: UploadSettings):
        req = job.req
        ctype = "application/gzip" if req.compress else "application/x-tar"
        rate = settings.max_rate or None
        if req.url:
            from device_client.upload import put_file

            return put_file(req.url, archive, req.method, ctype, rate)
        device = self.device()
        job.retry_in = None

        def progress(done: int, total: int) -> None:
            job.bytes_done = done
            if job.resumed_from is None:
                job.resumed_from = done
            now = time.monotonic()
            if 0 < done < total and now - self._last_progress >= settings.status_interval:
                self._last_progress = now
                self.report(job)

        self._last_progress = time.monotonic()
        job.resumed_from = None
        return device.upload_content(job.archive_name, archive, job.sha256, ctype, progress, settings.piece_bytes,
                                     rate)


class Uploader(threading.Thread):
    """gwe's upload worker: the spool's jobs one at a time, oldest first, then the schedule."""

    def __init__(self, paths: GwePaths, stopping: threading.Event,
                 device_factory: Callable[[GwePaths], object] = gateway_device) -> None:
        super().__init__(name="gwe-upload", daemon=True)
        self.paths = paths
        self.stopping = stopping
        self.runner = UploadRunner(paths, stopping, device_factory)
        self.spool = self.runner.spool
        self._wake = threading.Event()
        self.started_at = time.time()

    def wake(self) -> None:
        self._wake.set()

    def submit(self, raw: str) -> Optional[dict]:
        """Take an ``upload_request`` (from the daemon's thread): the job is on disk when this returns.

        Returns a status for the caller to write now (a refusal, or ``queued`` behind other
        jobs), or None.
        """
        settings = load_settings(self.paths)
        try:
            request = parse_upload_request(raw, settings)
            check_patterns(request.patterns, Roots.for_gateway(self.paths, settings), self.paths.log)
        except (UploadRequestError, CollectError) as exc:
            return refusal(raw, str(exc))
        pending = self.spool.pending()
        if any(j.request["id"] == request.id for j in pending):
            return None  # already taken (gwe stopped between keeping it and clearing the dataport)
        if len(pending) >= settings.max_pending:
            return refusal(raw, "%d uploads are already waiting ([upload] max_pending)" % len(pending))
        job = self.spool.new_job(request)
        job.advance("queued", step="queued")
        self.spool.save(job)
        self.wake()
        return job.status() if pending else None

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                wait = self._work()
            except Exception:
                log.exception("upload worker round failed")
                self.runner.drop_device()
                wait = REPORT_RETRY_S
            if wait:
                self._wake.wait(wait)
                self._wake.clear()
        self.runner.drop_device()

    def _work(self) -> float:
        """One round; returns how long to wait (0: go on at once)."""
        jobs = self.spool.jobs()
        unreported = [j for j in jobs if j.state in TERMINAL]
        pending = [j for j in jobs if j.state not in TERMINAL]
        delivered = not unreported or self.runner.deliver_final(unreported[0])
        if pending:
            self.runner.run(pending[0])
            return 0.0
        if unreported:
            return 0.0 if delivered else REPORT_RETRY_S
        return self._schedule(load_settings(self.paths))

    def _schedule(self, settings: UploadSettings) -> float:
        """Start a scheduled upload if one is due and in its window; else seconds until it may be."""
        if not settings.schedule_interval:
            return 60.0
        now = time.time()
        last = self.spool.last_scheduled()
        due = (last if last is not None else self.started_at) + settings.schedule_interval
        if now < due:
            return min(due - now, 60.0)
        window = settings.window()
        if window is not None and not in_window(now, window):
            return 30.0
        request = UploadRequest("schedule-%d" % now, tuple(settings.schedule_files), settings.max_bytes,
                                trigger="schedule")
        self.spool.set_last_scheduled(now)
        job = self.spool.new_job(request, created=now)  # requested when due: the interval runs between these
        job.advance("queued", step="queued")
        self.spool.save(job)
        return 0.0


def in_window(ts: float, window) -> bool:
    """Whether local time ``ts`` falls in ``(start, end)`` minutes after midnight (may wrap midnight)."""
    t = time.localtime(ts)
    minute = t.tm_hour * 60 + t.tm_min
    start, end = window
    return start <= minute < end if start <= end else (minute >= start or minute < end)
