"""The install pipeline: verify -> unpack -> check -> install.sh -> register -> health gate -> commit,
or roll back; every step journaled so that :func:`recover` can finish or undo it after a crash.

``GWE_OTAU_CRASH_AT=<point>`` is a test hook: the process SIGKILLs itself when it reaches
that point (see :data:`CRASH_POINTS`), which is how the power-cut tests cut an install short.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from typing import Dict, List, Optional

from atomic_config import GwePaths, free_disk, gwe_paths, min_free_disk

from . import selfupdate
from .check import prepare
from .errors import OtauError, PackageError
from .journal import (COMMITTED, INSTALLING, REGISTERING, ROLLING_BACK, UNPACKING, Journal, begin_journal,
                      clear_journal, install_lock, read_journal, write_journal)
from .package import PackageName, parse_package_name
from .program import parse_program
from .runner import install_environment, installer_argv, installer_identity, kill_orphaned_installer, run_installer
from .settings import OtauSettings, load_settings
from .status import FAILED, INSTALLED, ROLLED_BACK, FetchStatus, save_status
from .store import AppStore
from .supervisord import Health, Supervisor
from .verify import check_sha256, check_size

log = logging.getLogger(__name__)

CRASH_ENV = "GWE_OTAU_CRASH_AT"
CRASH_POINTS = ("unpacking", "installing", "installed", "registering", "conf_written", "applied",
                "committed", "rolling_back")


def _crash_point(point: str) -> None:
    if os.environ.get(CRASH_ENV) == point:
        log.warning("test hook %s=%s: killing this process", CRASH_ENV, point)
        os.kill(os.getpid(), signal.SIGKILL)


class Installer:
    """Installs packages into one GWE_HOME and the supervisord that runs it."""

    def __init__(self, paths: Optional[GwePaths] = None, settings: Optional[OtauSettings] = None) -> None:
        self.paths = paths or gwe_paths()
        self.settings = settings or load_settings(self.paths)
        self.store = AppStore(self.paths)
        self.supervisor = Supervisor(self.paths.supervisor_socket, os.path.join(self.paths.log, "otau.log"))

    # --- public entry points ---

    def install(self, tarball: str, sha256: Optional[str] = None,
                package: Optional[PackageName] = None) -> FetchStatus:
        """Install one package; never raises for a bad package, the FetchStatus says what happened.

        ``package`` is the tarball's name already parsed (gwe parses the cloud's request once).
        """
        with install_lock(self.paths):
            self._recover_locked()
            status = self._install(tarball, sha256, package)
            status.finished_at = time.time()
            save_status(self.paths, status)
            return status

    def recover(self) -> List[FetchStatus]:
        """Finish or undo an install a crash interrupted; returns the statuses it produced."""
        with install_lock(self.paths):
            return self._recover_locked()

    # --- the pipeline ---

    def _install(self, tarball: str, sha256: Optional[str], package: Optional[PackageName]) -> FetchStatus:
        started = time.monotonic()
        filename = os.path.basename(tarball)
        if package is None or package.filename != filename:
            try:
                package = parse_package_name(filename)
            except PackageError as exc:
                return FetchStatus.failure(str(exc), exc.step, filename=filename)
        name, version = package.name, package.version
        state = self.store.read_state(name)
        status = FetchStatus(name=name, version=version, package=filename, status=FAILED,
                             previous_version=state.current, running_version=state.current)
        timings = status.timings
        mark = time.monotonic()
        target = self.store.version_dir(name, version)
        root_existed = os.path.isdir(self.store.app_root(name))
        try:
            check_size(tarball, self.settings.max_package_bytes)
            if sha256:
                status.sha256 = check_sha256(tarball, sha256)
            timings["verify"] = time.monotonic() - mark
            if state.current == version and os.path.isdir(target):
                status.status = INSTALLED
                status.output = "%s %s is already installed; nothing done" % (name, version)
                timings["total"] = time.monotonic() - started
                return status
            self._forget_version(name, version)
            journal = Journal(name=name, version=version, package=filename, state=UNPACKING,
                              staging=self.store.staging_dir(name, version), previous_version=state.current,
                              previous_conf=self.store.read_conf(name), self_update=package.is_self_update)
            begin_journal(self.paths, journal)
            _crash_point("unpacking")
            mark = time.monotonic()
            os.makedirs(self.paths.log, exist_ok=True)
            reserve = min_free_disk(self.paths)
            prepared = prepare(tarball, package, journal.staging, target, self.paths, self.settings, self.paths.log,
                               reserve)
            timings["unpack"] = time.monotonic() - mark
        except OtauError as exc:
            return self._fail(status, str(exc), exc.step, started, root_existed)
        except OSError as exc:  # unreadable package, disk full...
            return self._fail(status, "I/O error: %s" % exc, "unpack", started, root_existed)
        status.signature = prepared.signature.describe()
        program = prepared.program
        journal.new_conf = program.conf if program else None
        journal.startsecs = program.startsecs if program else 0.0
        journal.autostart = program.autostart if program else False
        try:
            if journal.new_conf is not None or journal.previous_conf is not None:
                self.supervisor.check()
        except OtauError as exc:
            return self._fail(status, str(exc), exc.step, started, root_existed, unpacked=True)
        short = self._below_reserve(reserve)
        if short:
            return self._fail(status, "not enough disk to run the installer: %s" % short, "install", started,
                              root_existed, unpacked=True)
        journal.status = status.to_dict()
        write_journal(self.paths, journal, INSTALLING)
        _crash_point("installing")
        env = install_environment(name, version, target, self.paths.home, state.current)

        def journal_installer(pid: int, cgroup: Optional[str]) -> None:
            journal.installer = installer_identity(pid, cgroup)
            write_journal(self.paths, journal)

        try:
            result = run_installer(installer_argv(prepared.unpacked.layout.installer), target, env,
                                   self.settings.install_timeout, self.settings.output_limit, journal_installer)
        except OSError as exc:
            return self._fail(status, "cannot run the installer: %s" % exc, "install", started, root_existed,
                              unpacked=True)
        timings["install"] = result.seconds
        status.exit_code = result.exit_code
        status.output = result.output
        status.killed = list(result.killed)
        if not result.ok:
            what = ("timed out after %gs (process group killed)" % self.settings.install_timeout
                    if result.timed_out else "exited with status %s" % result.exit_code)
            return self._fail(status, "%s %s; previous version kept" % (prepared.unpacked.layout.installer, what),
                              "install", started, root_existed, unpacked=True)
        short = self._below_reserve(reserve)
        if short:
            return self._fail(status, "%s left too little disk: %s; its directory is removed and the previous "
                              "version kept" % (prepared.unpacked.layout.installer, short), "install", started,
                              root_existed, unpacked=True)
        _crash_point("installed")
        journal.status = status.to_dict()
        return self._activate(journal, status, started)

    def _below_reserve(self, reserve: int) -> Optional[str]:
        """What is wrong when a filesystem the suite writes to (apps, gmq's queue) is below the reserve."""
        seen = set()
        for path in (self.paths.apps, self.paths.var_lib):
            try:
                device = os.stat(path).st_dev
            except FileNotFoundError:
                continue
            if device in seen:
                continue
            seen.add(device)
            free = free_disk(path)
            if free < reserve:
                return ("%d bytes free on the filesystem of %s, below the reserve of %d bytes that gmq keeps too "
                        "(gmq.cfg [queue] min_free_disk)" % (free, path, reserve))
        return None

    def _fail(self, status: FetchStatus, error: str, step: str, started: float, root_existed: bool,
              unpacked: bool = False) -> FetchStatus:
        """Before registering nothing that runs has changed: drop what was unpacked, report ``failed``."""
        if unpacked:
            self.store.remove_version(status.name, status.version)
        self.store.remove_staging(status.name)
        clear_journal(self.paths)
        if not root_existed:
            try:
                os.rmdir(self.store.app_root(status.name))
            except OSError:
                pass
        status.error = error
        status.step = step
        status.timings["total"] = time.monotonic() - started
        log.warning("%s %s %s: %s", status.status, status.name, status.version, error)
        return status

    def _forget_version(self, name: str, version: str) -> None:
        """A kept older copy of the version being installed is replaced, not reused."""
        state = self.store.read_state(name)
        if version in state.history and version != state.current:
            state.history.remove(version)
            state.confs.pop(version, None)
            self.store.write_state(state)
        if version != state.current:
            self.store.remove_version(name, version)

    def _activate(self, journal: Journal, status: FetchStatus, started: float) -> FetchStatus:
        """Register, health-gate, then commit or roll back (also the resume path of recovery)."""
        mark = time.monotonic()
        try:
            self._register(journal)
            health = self._health(journal)
        except OtauError as exc:
            health = Health(False, "UNKNOWN", str(exc))
        status.timings["health"] = time.monotonic() - mark
        if health.healthy:
            self._commit(journal)
            status.status = INSTALLED
            status.running_version = journal.version
        else:
            self._rollback(journal, status, health.detail)
        status.timings["total"] = time.monotonic() - started
        return status

    def _register(self, journal: Journal) -> None:
        write_journal(self.paths, journal, REGISTERING)
        _crash_point("registering")
        if journal.self_update and journal.new_conf is not None:
            selfupdate.write_marker(self.paths, journal.name, journal.version, self.store.conf_path(journal.name),
                                    self.store.app_root(journal.name), journal.previous_version,
                                    journal.previous_conf)
        self.store.write_conf(journal.name, journal.new_conf)
        _crash_point("conf_written")
        self.store.switch_current(journal.name, journal.version)
        self._apply(journal.name, journal.new_conf, journal.previous_conf)
        _crash_point("applied")

    def _apply(self, name: str, conf: Optional[str], other_conf: Optional[str]) -> None:
        if conf is not None:
            self.supervisor.apply_group(name)
        elif other_conf is not None:
            self.supervisor.remove_group(name)

    def _health(self, journal: Journal) -> Health:
        if journal.new_conf is None or not journal.autostart:
            return Health(True, "", "no program to watch")
        return self.supervisor.wait_healthy(journal.name, journal.startsecs, self.settings.settle_seconds,
                                            self.settings.health_timeout)

    def _commit(self, journal: Journal) -> None:
        write_journal(self.paths, journal, COMMITTED)
        _crash_point("committed")
        name, version = journal.name, journal.version
        state = self.store.read_state(name)
        state.current = version
        if version in state.history:
            state.history.remove(version)
        state.history.append(version)
        state.confs[version] = journal.new_conf
        protect = [v for v in (version, journal.previous_version) if v]
        keep = max(2, self.settings.keep_versions)
        dropped = [v for v in state.history[:max(0, len(state.history) - keep)] if v not in protect]
        state.history = [v for v in state.history if v not in dropped]
        for v in dropped:
            state.confs.pop(v, None)
        self.store.write_state(state)
        for v in dropped:
            self.store.remove_version(name, v)
        selfupdate.remove_marker(self.paths, name)
        self.store.remove_staging(name)
        clear_journal(self.paths)
        log.info("installed %s %s", name, version)

    def _rollback(self, journal: Journal, status: FetchStatus, reason: str) -> None:
        status.error = reason  # kept in the journal, so a rollback resumed after a crash still says why
        journal.status = status.to_dict()
        write_journal(self.paths, journal, ROLLING_BACK)
        _crash_point("rolling_back")
        name = journal.name
        restored = ""
        try:
            self.store.write_conf(name, journal.previous_conf, verify=False)
            self.store.switch_current(name, journal.previous_version)
            self._apply(name, journal.previous_conf, journal.new_conf)
            if journal.previous_conf is not None:
                health = self.supervisor.wait_healthy(name, _startsecs(name, journal.previous_conf), 0.0,
                                                      self.settings.health_timeout)
                restored = "" if health.healthy else "; previous version not healthy either: " + health.detail
        except OtauError as exc:
            restored = "; restoring the previous version failed: %s" % exc
        if journal.version != journal.previous_version:
            self.store.remove_version(name, journal.version)
        selfupdate.remove_marker(self.paths, name)
        self.store.remove_staging(name)
        clear_journal(self.paths)
        had_previous = journal.previous_conf is not None or journal.previous_version is not None
        status.status = ROLLED_BACK if had_previous else FAILED
        status.running_version = journal.previous_version
        status.step = status.step or "health"
        status.error = "%s %s did not start: %s; %s%s" % (
            name, journal.version, reason,
            "rolled back to %s" % (journal.previous_version or "the previous program") if had_previous
            else "removed (no previous version)", restored)
        log.warning("%s", status.error)

    # --- recovery ---

    def _discard(self, journal: Journal, status: FetchStatus) -> None:
        """Before registering nothing that runs has changed: drop the new version."""
        if journal.version != journal.previous_version:
            self.store.remove_version(journal.name, journal.version)
        self.store.remove_staging(journal.name)
        clear_journal(self.paths)
        status.status = FAILED
        status.step = journal.state
        status.error = "install interrupted while %s (crash or power cut); previous version kept" % journal.state
        status.running_version = journal.previous_version

    def _recover_locked(self) -> List[FetchStatus]:
        journal = read_journal(self.paths)
        if journal is None:
            selfupdate.remove_all_markers(self.paths)
            return []
        started = time.monotonic()
        status = FetchStatus.from_dict(journal.status) if journal.status else FetchStatus(
            name=journal.name, version=journal.version, package=journal.package, status=FAILED,
            previous_version=journal.previous_version, running_version=journal.previous_version)
        log.warning("recovering the install of %s %s interrupted at %s", journal.name, journal.version,
                    journal.state)
        if journal.state in (UNPACKING, INSTALLING):
            if kill_orphaned_installer(journal.installer):
                log.warning("killed the installer of %s %s that outlived its gwe", journal.name, journal.version)
            in_use = None
            if journal.version != journal.previous_version:
                in_use = self.store.in_use(journal.name, journal.version)
            if in_use is None:
                self._discard(journal, status)
            elif self.store.read_state(journal.name).current == journal.version:
                # an older generation of the journal was read: the install had been committed
                log.warning("journal of %s %s says %s, but %s: finishing the commit", journal.name,
                            journal.version, journal.state, in_use)
                selfupdate.remove_marker(self.paths, journal.name)
                self.store.remove_staging(journal.name)
                clear_journal(self.paths)
                status.status, status.error, status.step = INSTALLED, None, None
                status.running_version = journal.version
            else:
                # an older generation was read and the switch to the new version had begun: never delete
                # what runs; go back to the previous version, which removes the new one once unused
                self._rollback(journal, status, "install interrupted while switching to it (%s, though the "
                               "journal read said %s)" % (in_use, journal.state))
        elif journal.state == REGISTERING:
            marker = selfupdate.read_marker(self.paths, journal.name)
            if marker and marker.get("state") == selfupdate.REVERTED and marker.get("version") == journal.version:
                self._rollback(journal, status, "crash loop: the boot guard reverted it after %s starts"
                               % (marker.get("attempts", 0) - 1))
            else:
                self._activate(journal, status, started)
        elif journal.state == COMMITTED:
            self._commit(journal)
            status.status = INSTALLED
            status.running_version = journal.version
        else:
            self._rollback(journal, status, status.error or "interrupted")
        status.finished_at = time.time()
        save_status(self.paths, status)
        return [status]


def _startsecs(name: str, conf: str) -> float:
    try:
        return parse_program(name, conf).startsecs
    except PackageError:
        return 1.0


def install_package(tarball: str, sha256: Optional[str] = None, paths: Optional[GwePaths] = None,
                    settings: Optional[OtauSettings] = None, package: Optional[PackageName] = None) -> FetchStatus:
    """Install ``tarball`` (``<name>.v<version>.tar.gz``) into GWE_HOME; see :class:`Installer`."""
    return Installer(paths, settings).install(tarball, sha256, package)


def recover(paths: Optional[GwePaths] = None, settings: Optional[OtauSettings] = None) -> List[FetchStatus]:
    """Call on every start of gwe: finishes or undoes an install cut short by a crash or power loss."""
    return Installer(paths, settings).recover()


def installed_versions(paths: Optional[GwePaths] = None) -> Dict[str, str]:
    """app name -> installed version (what engine_report shows beside supervisord's process info)."""
    return AppStore(paths or gwe_paths()).installed_versions()
