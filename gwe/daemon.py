"""The gwe daemon: activate, report, and wait on ``engine_fetch`` / ``update_interval`` with a long poll.

A long poll instead of a sleep means an OTAU starts as soon as the operator asks, not up
to ``update_interval`` later. Network errors and garbage answers are retried with
backoff (never a busy loop). SIGTERM only sets a flag and wakes the current wait
(:class:`StopRequest`): a long poll or a backoff wait ends at once, while an activation, the
saving of its token, or an install in progress always completes first.

``GWE_TEST_HOLD_AT=<point>`` with ``GWE_TEST_HOLD_DIR=<dir>`` is a test hook: at that point
the daemon creates ``<dir>/<point>.reached`` and waits for ``<dir>/<point>.release``. The point
is ``activated`` (Murano has handed out the token, Gateway.cfg does not hold it yet).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Callable, Dict, List, Optional

from atomic_config import GwePaths, gwe_paths
from device_client.backoff import Backoff
from device_client.link import LinkState

from . import config
from .cloud_sets import CloudSets
from .config import ConfigError
from .engine_fetch import FetchRequestError, fetch_and_install, parse_engine_fetch, request_error_status
from .report_trigger import ReportTrigger
from .status_outbox import StatusOutbox
from .upload import UPLOAD_REQUEST, UPLOAD_STATUS, Uploader
from .wake_pipe import WakePipe

log = logging.getLogger(__name__)

ENGINE_FETCH = "engine_fetch"
UPDATE_INTERVAL = "update_interval"
OUTBOX_FILE = "fetch_status.outbox"  # under var/lib/gwe: fetch_status not delivered yet
WATCHED = (ENGINE_FETCH, UPDATE_INTERVAL, UPLOAD_REQUEST)
MAX_POLL_S = 300.0
ERROR_BACKOFF = (1.0, 60.0)


HOLD_ENV, HOLD_DIR_ENV = "GWE_TEST_HOLD_AT", "GWE_TEST_HOLD_DIR"


class Shutdown(Exception):
    """Raised by gwe's own waits once a stop was requested (never from a signal handler)."""


class StopRequest:
    """A stop flag that a signal handler may set, and a wait it wakes (the self-pipe trick)."""

    def __init__(self) -> None:
        self._pipe = WakePipe()
        self.requested = False

    def request(self, signum=None, frame=None) -> None:
        """The signal handler: set the flag, wake the wait; nothing is raised into running code."""
        self.requested = True
        self.wake()

    def wake(self) -> None:
        self._pipe.wake()

    def wait(self, seconds: Optional[float]) -> bool:
        """Sleep until woken or ``seconds`` pass (None: until woken); True once a stop is requested."""
        if not self.requested:
            self._pipe.wait(seconds)
        return self.requested


def _hold(point: str) -> None:
    """The test hook (module docstring)."""
    if os.environ.get(HOLD_ENV) != point or not os.environ.get(HOLD_DIR_ENV):
        return
    base = os.path.join(os.environ[HOLD_DIR_ENV], point)
    open(base + ".reached", "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(base + ".release") and time.monotonic() < deadline:
        time.sleep(0.05)


class Engine:
    """One gwe process. ``run()`` returns the exit code."""

    def __init__(self, paths: Optional[GwePaths] = None, once: bool = False) -> None:
        self.paths = paths or gwe_paths()
        self.once = once
        self.stop = StopRequest()
        self.device = None
        self._since: Optional[str] = None
        self._cloud_sets = CloudSets(WATCHED)
        self._taken_at: Dict[str, int] = {}  # when the cloud set the values being handled (µs)
        self.outbox: Optional[StatusOutbox] = None  # fetch_status not delivered yet (on disk)
        self.link = LinkState()
        self.uploader: Optional[Uploader] = None
        self.reports: Optional[ReportTrigger] = None  # engine_report on change (not in --once)
        self._uploads_stop = threading.Event()  # the upload worker's own: the stop pipe has one reader
        # reset by a poll that proves the link (in cycle), not only by a whole failure-free cycle, which
        # lasts update_interval or longer: failures hours apart would otherwise each wait the maximum
        self._error_backoff = Backoff(*ERROR_BACKOFF)

    # --- signals and waits ---

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop.request)

    def _check_stop(self) -> None:
        if self.stop.requested:
            raise Shutdown()

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``; Shutdown as soon as a stop is requested. Engine reports that fall due
        meanwhile (an app changed state) are written on the way."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if self.stop.wait(self._sleep_for(max(0.0, remaining))):
                raise Shutdown()
            self._report_if_due()
            if remaining <= 0:
                return

    def _sleep_for(self, limit: Optional[float]) -> Optional[float]:
        due = self.reports.due_in() if self.reports is not None else None
        if due is None:
            return limit
        return due if limit is None else min(limit, due)

    def _abandonable(self, call: Callable, *args, **kwargs):
        """Run a call that changes nothing (the long poll) in a worker thread, and give it up as soon
        as a stop is requested: the process then exits without waiting up to 300 s for it."""
        self._check_stop()
        done = threading.Event()
        box: Dict = {}

        def work() -> None:
            try:
                box["value"] = call(*args, **kwargs)
            except BaseException as exc:  # handed to the waiting thread
                box["error"] = exc
            finally:
                done.set()
                self.stop.wake()

        threading.Thread(target=work, name="gwe-long-poll", daemon=True).start()
        while not done.is_set():
            if self.stop.wait(self._sleep_for(None)):
                raise Shutdown()
            self._report_if_due()
        if "error" in box:
            raise box["error"]
        return box["value"]

    # --- the loop ---

    def run(self) -> int:
        try:
            self._recover_installs()
            self.device = self._listening(self._activated_device())
            if not self.once:
                self.reports = ReportTrigger(self._processes, self.stop.wake)
                self.reports.start()
            self.uploader = Uploader(self.paths, self._uploads_stop)
            if not self.once:  # one cycle keeps an upload request on disk for the daemon to run
                self.uploader.start()
            while True:
                try:
                    self._check_stop()
                    self.cycle()
                    self._error_backoff.reset()
                    if self.once:
                        return 0
                except Shutdown:
                    raise
                except Exception as exc:
                    self._since = None  # ask again for everything still pending: nothing is lost
                    if self._reactivate_if_rejected(exc):
                        continue
                    delay = self._error_backoff.next_delay()
                    self._link_failed(exc, delay)
                    log.warning("cycle failed (%s); retrying in %.1fs", _describe(exc), delay)
                    if self.once:
                        return 1
                    self._wait(delay)
        except Shutdown:
            log.info("stop requested (SIGTERM): stopped")
            return 0
        finally:
            self._uploads_stop.set()  # an upload in flight resumes from the spool at the next start
            if self.reports is not None:
                self.reports.stop()
            if self.device is not None:
                self.device.close()

    def cycle(self) -> None:
        """Report, then watch the cloud's settings until the next report is due.

        A poll that comes back well before its timeout with nothing to act on (a 304 or an
        unwatched alias at once, from a broken cloud or proxy) is followed by a backoff wait,
        so such a server never gets a busy loop. A poll that held or brought a value proves the
        link, and the next failure backs off from the start again.
        """
        self.report()
        interval = float(config.load_engine_settings()["update_interval"])
        deadline = time.monotonic() + interval
        early = Backoff(*ERROR_BACKOFF)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            timeout_ms = max(int(min(remaining, MAX_POLL_S) * 1000), 1000)
            proved = False
            if self.once:
                values, taken_at = self.device.read(*WATCHED), {}
            else:
                polled = time.monotonic()
                values, self._since = self._abandonable(self.device.long_poll, list(WATCHED),
                                                        timeout_ms=timeout_ms, since=self._since)
                taken_at = self._cloud_sets.of(values, self._since)
                proved = any(values.get(alias, "").strip() for alias in WATCHED) \
                    or time.monotonic() - polled >= timeout_ms / 2000.0
            self._link_ok()
            if proved:  # before acting on it: a failure while acting starts the backoff over too
                self._error_backoff.reset()
            new_interval = self.handle(values, taken_at)
            if self.once:
                return
            if new_interval is not None:
                deadline = time.monotonic() + new_interval
            if proved:
                early.reset()
            else:
                self._wait(min(early.next_delay(), max(0.0, deadline - time.monotonic())))

    def handle(self, values: Dict[str, str], taken_at: Optional[Dict[str, int]] = None) -> Optional[float]:
        """Act on what the cloud set (``taken_at``: when, in µs, per alias); returns a newly adopted
        update interval."""
        self._taken_at = dict(taken_at or {})
        adopted = None
        if values.get(UPDATE_INTERVAL, "").strip():
            adopted = self._adopt_interval(values[UPDATE_INTERVAL])
        if values.get(UPLOAD_REQUEST, "").strip():
            self._take_upload(values[UPLOAD_REQUEST])
        if values.get(ENGINE_FETCH, "").strip():
            self._run_fetch(values[ENGINE_FETCH])
        return adopted

    def _take_upload(self, raw: str) -> None:
        """Keep the request on disk, then clear it; the upload worker does the rest."""
        if self.uploader is None:
            self.uploader = Uploader(self.paths, self._uploads_stop)
        status = self.uploader.submit(raw)
        self._clear(UPLOAD_REQUEST, raw)
        if status is not None:
            self.device.write({UPLOAD_STATUS: json.dumps(status, sort_keys=True)})

    def _clear(self, alias: str, taken: str) -> None:
        """Clear what was taken from ``alias``, keeping a value the cloud set meanwhile (cloud_sets)."""
        self._cloud_sets.clear(self.device, alias, taken, self._taken_at.get(alias))

    def _listening(self, device):
        self._cloud_sets.listen(device)
        return device

    # --- steps ---

    def _recover_installs(self) -> None:
        """Finish or undo an interrupted install; its statuses wait in the outbox for activation."""
        from otau import recover

        from otau import FetchStatus

        self.outbox = StatusOutbox(os.path.join(self.paths.var_lib, OUTBOX_FILE))
        try:
            statuses = recover(self.paths)
        except Exception as exc:  # a failed recovery must not keep gwe from reporting it
            log.error("install recovery failed: %s", _describe(exc))
            statuses = [FetchStatus.failure("install recovery failed: %s" % _describe(exc), "recover")]
        for status in statuses:
            self.outbox.add(status.to_json())

    def _activated_device(self):
        """A Device with a token, activating (with retries) when Gateway.cfg has none.

        Gateway.cfg is read again before every attempt, so a serial or product id fixed
        while gwe retries is used at the next one.
        """
        from device_client import Backoff, Device, DeviceAPIError

        backoff = None
        while True:
            try:
                settings = config.load_engine_settings()
                gateway = config.load_gateway_config()
                serial = config.resolve_serial()
                device = Device(gateway.murano_url, product_id=gateway.product_id, serial=serial,
                                token=gateway.cik or None, identity="gwe",
                                user_agent=settings["user_agent"] or "GatewayEngine-v%s" % _version(),
                                transport=settings["transport"],
                                mqtt_url=(settings["mqtt_url"] or None) if settings["transport"] == "mqtt" else None)
            except ConfigError as exc:
                raise SystemExit("gwe: %s" % exc)
            self.link.upstream = gateway.murano_url
            if device.activated:
                return device
            if backoff is None:
                retry = float(settings["activation_retry_interval"])
                backoff = Backoff(min(retry, 5.0), retry)
            try:
                self._check_stop()
                # Murano hands a token out once: from here until it is saved nothing may stop us
                token = device.activate()
                _hold("activated")
                config.update_gateway_config({"cik": token})
                log.info("activated as %s", serial)
                return device
            except Shutdown:
                device.close()
                raise
            except (DeviceAPIError, OSError) as exc:
                device.close()
                delay = backoff.next_delay()
                self._link_failed(exc, delay)
                log.warning("activation failed (%s); retrying in %.1fs", _describe(exc), delay)
                if self.once:
                    raise SystemExit("gwe: activation failed: %s" % _describe(exc))
                self._wait(delay)

    def _reactivate_if_rejected(self, exc: Exception) -> bool:
        from device_client import NotActivated

        if not isinstance(exc, NotActivated):
            return False
        log.warning("token rejected: re-activating")
        config.update_gateway_config({"cik": ""})
        self.device.close()
        self.device = self._listening(self._activated_device())
        return True

    def report(self) -> None:
        """Write device_info, engine_report and usage_report; flush the usage log once sent."""
        from device_client import UsageLog

        from .device_info import device_info

        self.outbox.deliver(self.device)  # what installs said while the link was down, first
        usage = UsageLog()
        snapshot = usage.snapshot()
        self._link_ok()  # a report that arrives went over a live link, and says so
        self.device.write({
            "device_info": json.dumps(device_info()),  # key order matters to positional parsers
            "engine_report": self._engine_report_json(),
            "usage_report": json.dumps(snapshot.report, sort_keys=True),
        })
        if self.reports is not None:
            self.reports.sent()
        usage.flush(snapshot)
        usage.close()

    def _engine_report_json(self) -> str:
        from .engine_report import engine_report, fetch_gmq_status

        return json.dumps(engine_report(self.paths, self._processes, fetch_gmq_status, self.link.snapshot()),
                          sort_keys=True)

    def _write_engine_report(self) -> None:
        """engine_report alone, now: after an install, or when an app changed state (coalesced)."""
        self.device.write({"engine_report": self._engine_report_json()})
        if self.reports is not None:
            self.reports.sent()

    def _report_if_due(self) -> None:
        if self.reports is None or not self.reports.take():
            return
        try:
            self._write_engine_report()
        except Exception as exc:  # the uplink is down: the next cycle's report says it all
            log.warning("engine_report after a state change not sent: %s", _describe(exc))

    # --- the link, as gwe status and engine_report show it ---

    def _link_ok(self) -> None:
        was = self.link.state
        self.link.succeeded()
        if self.link.state != was:
            self._publish_link()

    def _link_failed(self, exc: BaseException, delay: float) -> None:
        self.link.failed_with(exc, delay)
        self._publish_link()

    def _publish_link(self) -> None:
        from .link_state import write_link_state

        write_link_state(self.paths, self.link.snapshot())

    def _processes(self) -> List[dict]:
        from otau.supervisord import Supervisor

        return Supervisor(self.paths.supervisor_socket).all_processes()

    def _adopt_interval(self, raw: str) -> Optional[float]:
        try:
            seconds = config.validate_engine_setting(UPDATE_INTERVAL, raw)
        except ConfigError as exc:
            log.warning("ignoring update_interval %r: %s", raw[:40], exc)
            seconds = None
        if seconds is not None:
            config.update_engine_settings({UPDATE_INTERVAL: seconds})
            log.info("update_interval is now %s s", seconds)
        self._clear(UPDATE_INTERVAL, raw)
        return float(seconds) if seconds is not None else None

    def _write_status(self, status) -> None:
        """Keep ``status`` on disk and send it (after any still waiting); an uplink that is down
        does not stop the request's other jobs: the next cycle's report delivers it."""
        from device_client import DeviceAPIError

        self.outbox.add(status.to_json())
        try:
            self.outbox.deliver(self.device)
        except DeviceAPIError as exc:
            log.warning("fetch_status of %s kept for later (%d waiting): %s", status.package, len(self.outbox),
                        _describe(exc))

    def _run_fetch(self, raw: str) -> None:
        from otau import FetchStatus

        self._clear(ENGINE_FETCH, raw)  # taken: the original's "downloading and installing" signal
        try:
            jobs = parse_engine_fetch(raw)
        except FetchRequestError as exc:
            log.warning("bad engine_fetch: %s", exc)
            self._write_status(request_error_status(raw, str(exc)))
            return
        for job in jobs:
            if self.stop.requested:  # SIGTERM: the install in progress was finished; start no other
                self._write_status(FetchStatus.failure("gwe stopped before installing %s; ask again" % job.name,
                                                       "request", package=job.package, request=raw))
                continue
            log.info("engine_fetch: installing %s", job.name)
            status = fetch_and_install(self.device, job, self.paths, stopped=self._stopped_within)
            log.info("engine_fetch: %s -> %s", job.name, status.status)
            self._write_status(status)
            self._report_installed()
            if self.reports is not None:
                self.reports.look()  # the new programs' pids, and their next states

    def _stopped_within(self, seconds: float) -> bool:
        """Wait ``seconds`` (wake-ups for other reasons do not cut it short); True once a stop is asked."""
        deadline = time.monotonic() + seconds
        while not self.stop.wait(max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                return False
        return True

    def _report_installed(self) -> None:
        """engine_report right after an install: what runs now, at once (not update_interval later)."""
        from device_client import DeviceAPIError

        try:
            self._write_engine_report()
        except DeviceAPIError as exc:  # the uplink is down: the next cycle's report says it all
            log.warning("engine_report after an install not sent: %s", _describe(exc))


def _version() -> str:
    from . import __version__

    return __version__


def _describe(exc: BaseException) -> str:
    return "%s: %s" % (type(exc).__name__, exc)
