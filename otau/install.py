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
from typing import List, Optional

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
from .verify import check_sha256, check_size, sha256_file

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
                package: Optional[PackageName] = None, force: bool = False) -> FetchStatus:
        """Install one package; never raises for a bad package, the FetchStatus says what happened.

        ``package`` is the tarball's name already parsed (gwe parses the cloud's request once).
        The version that is already current is left alone when the package is the same one
        (same sha256) and refused when it differs, unless ``force`` asks to reinstall it: then it
        goes through the whole pipeline, into a directory of its own, with rollback.
        """
        with install_lock(self.paths):
            self._recover_locked()
            status = self._install(tarball, sha256, package, force)
            status.finished_at = time.time()
            save_status(self.paths, status)
            return status

    def recover(self) -> List[FetchStatus]:
        """Finish or undo an install a crash interrupted; returns the statuses it produced."""
        with install_lock(self.paths):
            return self._recover_locked()

    # --- the pipeline ---

    def _install(self, tarball: str, sha256: Optional[str], package: Optional[PackageName],
                 force: bool) -> FetchStatus:
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
        directory = version
        root_existed = os.path.isdir(self.store.app_root(name))
        try:
            check_size(tarball, self.settings.max_package_bytes)
            status.sha256 = check_sha256(tarball, sha256) if sha256 else sha256_file(tarball)
            timings["verify"] = time.monotonic() - mark
            current_dir = state.directory(state.current)
            if state.current == version and os.path.isdir(self.store.version_dir(name, current_dir)):
                recorded = state.sha256.get(version)
                if recorded == status.sha256 and not force:
                    status.status = INSTALLED
                    status.output = ("%s %s is already installed from this very package (sha256 %s); nothing done"
                                     % (name, version, status.sha256))
                    timings["total"] = time.monotonic() - started
                    return status
                if not force:
                    return self._fail(status, "%s %s is already installed, from a different package (%s); nothing "
                                      "changed. Publish the new content as a new version, or ask for a reinstall: "
                                      "\"force\": true in its engine_fetch entry, or gwe -I --force"
                                      % (name, version, "sha256 %s" % recorded if recorded else "no sha256 recorded"),
                                      "package", started, root_existed)
                directory = self.store.reinstall_directory(name, version)
            else:
                self._forget_version(name, version)
            target = self.store.version_dir(name, directory)
            journal = Journal(name=name, version=version, package=filename, state=UNPACKING,
                              staging=self.store.staging_dir(name, version), previous_version=state.current,
                              previous_conf=self.store.read_conf(name), self_update=package.is_self_update,
                              directory=directory, previous_directory=current_dir, sha256=status.sha256)
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
            return self._fail(status, str(exc), exc.step, started, root_existed, unpacked=directory)
        short = self._below_reserve(reserve)
        if short:
            return self._fail(status, "not enough disk to run the installer: %s" % short, "install", started,
                              root_existed, unpacked=directory)
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
                              unpacked=directory)
        timings["install"] = result.seconds
        status.exit_code = result.exit_code
        status.output = result.output
        status.killed = list(result.killed)
        if not result.ok:
            what = ("timed out after %gs (process group killed)" % self.settings.install_timeout
                    if result.timed_out else "exited with status %s" % result.exit_code)
            return self._fail(status, "%s %s; previous version kept" % (prepared.unpacked.layout.installer, what),
                              "install", started, root_existed, unpacked=directory)
        short = self._below_reserve(reserve)
        if short:
            return self._fail(status, "%s left too little disk: %s; its directory is removed and the previous "
                              "version kept" % (prepared.unpacked.layout.installer, short), "install", started,
                              root_existed, unpacked=directory)
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
              unpacked: Optional[str] = None) -> FetchStatus:
        """Before registering nothing that runs has changed: drop what was unpacked (the directory
        ``unpacked``), report ``failed``."""
        if unpacked:
            self.store.remove_version(status.name, unpacked)
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
        if version == state.current:
            return
        directory = state.directory(version)
        if version in state.history:
            state.history.remove(version)
            state.forget(version)
            self.store.write_state(state)
        self.store.remove_version(name, directory)
        if directory != version:
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
                                    journal.previous_conf, journal.previous_dir)
        self.store.write_conf(journal.name, journal.new_conf)
        _crash_point("conf_written")
        self.store.switch_current(journal.name, journal.new_dir)
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
        replaced = state.directory(version) if version in state.history else None  # a reinstalled version's
        state.current = version
        if version in state.history:
            state.history.remove(version)
        state.history.append(version)
        state.confs[version] = journal.new_conf
        if journal.new_dir != version:
            state.dirs[version] = journal.new_dir
        else:
            state.dirs.pop(version, None)
        if journal.sha256:
            state.sha256[version] = journal.sha256
        protect = [v for v in (version, journal.previous_version) if v]
        keep = max(2, self.settings.keep_versions)
        dropped = [v for v in state.history[:max(0, len(state.history) - keep)] if v not in protect]
        gone = [state.directory(v) for v in dropped]
        if replaced and replaced != journal.new_dir:
            gone.append(replaced)
        state.history = [v for v in state.history if v not in dropped]
        for v in dropped:
            state.forget(v)
        self.store.write_state(state)
        for directory in gone:
            self.store.remove_version(name, directory)
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
            self.store.switch_current(name, journal.previous_dir)
            self._apply(name, journal.previous_conf, journal.new_conf)
            if journal.previous_conf is not None:
                health = self.supervisor.wait_healthy(name, _startsecs(name, journal.previous_conf), 0.0,
                                                      self.settings.health_timeout)
                restored = "" if health.healthy else "; previous version not healthy either: " + health.detail
        except OtauError as exc:
            restored = "; restoring the previous version failed: %s" % exc
        if journal.new_dir != journal.previous_dir:
            self.store.remove_version(name, journal.new_dir)
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
        if journal.new_dir != journal.previous_dir:
            self.store.remove_version(journal.name, journal.new_dir)
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
            if journal.new_dir != journal.previous_dir:
                in_use = self.store.in_use(journal.name, journal.new_dir)
            state = self.store.read_state(journal.name)
            if in_use is None:
                self._discard(journal, status)
            elif state.current == journal.version and state.directory(state.current) == journal.new_dir:
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
                    settings: Optional[OtauSettings] = None, package: Optional[PackageName] = None,
                    force: bool = False) -> FetchStatus:
    """Install ``tarball`` (``<name>.v<version>.tar.gz``) into GWE_HOME; see :meth:`Installer.install`."""
    return Installer(paths, settings).install(tarball, sha256, package, force)
