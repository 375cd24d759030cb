"""The install pipeline: verify -> unpack -> check -> install.sh -> register -> health gate -> commit,
or roll back; every step journaled so that :func:`recover` can finish or undo it after a crash.

``GWE_OTAU_CRASH_AT=<point>`` is a test hook: the process SIGKILLs itself when it reaches
that point (see :data:`CRASH_POINTS`), which is how the power-cut tests cut an install short.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from atomic_config import GwePaths, atomic_write, gwe_paths

from . import boot_guard
from .errors import OtauError, PackageError
from .journal import (COMMITTED, INSTALLING, REGISTERING, ROLLING_BACK, UNPACKING, Journal, clear_journal,
                      install_lock, read_journal, write_journal)
from .package import (INSTALL_SH, MANIFEST, NAME_RE, SIGNATURE, SUPERVISOR_CONF, PackageName, Program,
                      parse_package_name, parse_program, read_supervisor_conf, render_program)
from .runner import install_environment, installer_argv, run_installer
from .settings import OtauSettings, load_settings, otau_dir
from .status import FAILED, INSTALLED, ROLLED_BACK, FetchStatus, save_status
from .store import AppStore
from .supervisord import Health, Supervisor
from .unpack import Unpacked, unpack_package
from .verify import (SignatureResult, check_manifest, check_sha256, check_signature, check_size,
                     load_trusted_keys)

log = logging.getLogger(__name__)

CRASH_ENV = "GWE_OTAU_CRASH_AT"
CRASH_POINTS = ("unpacking", "installing", "installed", "registering", "conf_written", "applied",
                "committed", "rolling_back")
MAX_SUPERVISOR_CONF_BYTES = 64 * 1024


def _crash_point(point: str) -> None:
    if os.environ.get(CRASH_ENV) == point:
        log.warning("test hook %s=%s: killing this process", CRASH_ENV, point)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Prepared:
    package: PackageName
    unpacked: Unpacked
    signature: SignatureResult
    program: Optional[Program]


def _read_member(root: str, rel: str, limit: int) -> bytes:
    with open(os.path.join(root, rel), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PackageError("%s is larger than %d bytes" % (rel, limit))
    return data


def marker_path(paths: GwePaths, name: str) -> str:
    return os.path.join(otau_dir(paths), "selfupdate-%s.json" % name)


def guard_path(paths: GwePaths) -> str:
    return os.path.join(otau_dir(paths), "boot_guard.py")


def prepare(tarball: str, package: PackageName, staging: str, target: str, paths: GwePaths,
            settings: OtauSettings, log_dir: str) -> Prepared:
    """Unpack into ``target`` and check everything that can be checked before running anything.

    ``log_dir`` (which must exist) is where the program's log goes. On failure ``target``
    is removed and the error raised.
    """
    unpacked = unpack_package(tarball, staging, target, settings.max_unpacked_bytes, settings.max_members)
    try:
        entries = dict(unpacked.entries)
        manifest = signature = None
        if entries.get(MANIFEST, ("",))[0] == "file":
            manifest = _read_member(target, MANIFEST, 16 << 20)
        if entries.get(SIGNATURE, ("",))[0] == "file":
            signature = _read_member(target, SIGNATURE, 4096)
        entries.pop(MANIFEST, None)
        entries.pop(SIGNATURE, None)
        sig = check_signature(manifest, signature, load_trusted_keys(paths.trusted_keys),
                              settings.require_signatures)
        if manifest is not None:
            check_manifest(manifest, package, entries)
        layout = unpacked.layout
        if layout.installer == INSTALL_SH and not entries[INSTALL_SH][3] & 0o100:
            raise PackageError("install.sh is not executable (mode %04o); set its x bit"
                               % (entries[INSTALL_SH][3] & 0o777))
        program = None
        if layout.has_supervisor_conf:
            raw = _read_member(target, SUPERVISOR_CONF, MAX_SUPERVISOR_CONF_BYTES)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PackageError("supervisor.conf is not UTF-8 text")
            options = read_supervisor_conf(text)
            wrap = None
            if package.is_self_update:
                wrap = [sys.executable, guard_path(paths), marker_path(paths, package.name), package.version,
                        str(settings.boot_attempts)]
                try:
                    retries = int(options.get("startretries", "3"))
                except ValueError:
                    raise PackageError("supervisor.conf: startretries must be a number")
                options["startretries"] = str(max(retries, settings.boot_attempts + 1))
            env = install_environment(package.name, package.version, target, paths.home, base={})
            env.pop("PATH", None)
            env.pop("GWE_APP_PREVIOUS_VERSION", None)
            program = render_program(package.name, options, target, env, log_dir, wrap)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return Prepared(package, unpacked, sig, program)


class Installer:
    """Installs packages into one GWE_HOME and the supervisord that runs it."""

    def __init__(self, paths: Optional[GwePaths] = None, settings: Optional[OtauSettings] = None) -> None:
        self.paths = paths or gwe_paths()
        self.settings = settings or load_settings(self.paths)
        self.store = AppStore(self.paths)
        self.supervisor = Supervisor(self.paths.supervisor_socket)

    # --- public entry points ---

    def install(self, tarball: str, sha256: Optional[str] = None) -> FetchStatus:
        """Install one package; never raises for a bad package, the FetchStatus says what happened."""
        with install_lock(self.paths):
            self._recover_locked()
            status = self._install(tarball, sha256)
            status.finished_at = time.time()
            if NAME_RE.match(status.name):
                save_status(self.paths, status)
            return status

    def recover(self) -> List[FetchStatus]:
        """Finish or undo an install a crash interrupted; returns the statuses it produced."""
        with install_lock(self.paths):
            return self._recover_locked()

    # --- the pipeline ---

    def _install(self, tarball: str, sha256: Optional[str]) -> FetchStatus:
        started = time.monotonic()
        filename = os.path.basename(tarball)
        try:
            package = parse_package_name(filename)
        except PackageError as exc:
            return FetchStatus(name=filename, version=None, package=filename, status=FAILED, error=str(exc),
                               step=exc.step, timings={"total": time.monotonic() - started})
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
            write_journal(self.paths, journal)
            _crash_point("unpacking")
            mark = time.monotonic()
            os.makedirs(self.paths.log, exist_ok=True)
            prepared = prepare(tarball, package, journal.staging, target, self.paths, self.settings, self.paths.log)
            timings["unpack"] = time.monotonic() - mark
        except OtauError as exc:
            return self._refused(status, exc, started, root_existed)
        except OSError as exc:  # unreadable package, disk full...
            return self._refused(status, OtauError("I/O error: %s" % exc), started, root_existed)
        status.signature = prepared.signature.describe()
        program = prepared.program
        journal.new_conf = program.conf if program else None
        journal.startsecs = program.startsecs if program else 0.0
        journal.autostart = program.autostart if program else False
        try:
            if journal.new_conf is not None or journal.previous_conf is not None:
                self.supervisor.check()
        except OtauError as exc:
            self.store.remove_version(name, version)
            return self._refused(status, exc, started, root_existed)
        journal.status = status.to_dict()
        write_journal(self.paths, journal, INSTALLING)
        _crash_point("installing")
        env = install_environment(name, version, target, self.paths.home, state.current)
        try:
            result = run_installer(installer_argv(prepared.unpacked.layout.installer), target, env,
                                   self.settings.install_timeout, self.settings.output_limit)
        except OSError as exc:
            self.store.remove_version(name, version)
            return self._refused(status, OtauError("cannot run the installer: %s" % exc), started, root_existed)
        timings["install"] = result.seconds
        status.exit_code = result.exit_code
        status.output = result.output
        if not result.ok:
            self.store.remove_version(name, version)
            clear_journal(self.paths)
            what = ("timed out after %gs (process group killed)" % self.settings.install_timeout
                    if result.timed_out else "exited with status %s" % result.exit_code)
            status.error = "%s %s; previous version kept" % (prepared.unpacked.layout.installer, what)
            status.step = "install"
            timings["total"] = time.monotonic() - started
            return status
        _crash_point("installed")
        journal.status = status.to_dict()
        return self._activate(journal, status, started)

    def _refused(self, status: FetchStatus, exc: OtauError, started: float, root_existed: bool) -> FetchStatus:
        clear_journal(self.paths)
        self.store.remove_staging(status.name)
        if not root_existed:
            try:
                os.rmdir(self.store.app_root(status.name))
            except OSError:
                pass
        status.error = str(exc)
        status.step = exc.step
        status.timings["total"] = time.monotonic() - started
        log.warning("refused %s: %s", status.package, exc)
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
            self._write_marker(journal)
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
        self._remove_marker(name)
        self.store.remove_staging(name)
        clear_journal(self.paths)
        log.info("installed %s %s", name, version)

    def _rollback(self, journal: Journal, status: FetchStatus, reason: str) -> None:
        write_journal(self.paths, journal, ROLLING_BACK)
        _crash_point("rolling_back")
        name = journal.name
        restored = ""
        try:
            self.store.write_conf(name, journal.previous_conf)
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
        self._remove_marker(name)
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

    # --- self-update marker (read by the boot guard) ---

    def _write_marker(self, journal: Journal) -> None:
        path = marker_path(self.paths, journal.name)
        if os.path.exists(path):
            return
        guard_source = open(boot_guard.__file__, "rb").read()
        atomic_write(guard_path(self.paths), guard_source, mode=0o644, keep_previous=False)
        previous = None
        if journal.previous_conf is not None:
            try:
                prev = parse_program(journal.name, journal.previous_conf)
                previous = {"argv": list(prev.argv), "directory": prev.directory,
                            "environment": prev.environment, "version": journal.previous_version,
                            "conf": journal.previous_conf}
            except PackageError as exc:
                log.warning("the boot guard cannot restore %s's previous program: %s", journal.name, exc)
        marker = {"name": journal.name, "version": journal.version, "state": "pending", "attempts": 0,
                  "conf_path": self.store.conf_path(journal.name),
                  "current_link": os.path.join(self.store.app_root(journal.name), "current"),
                  "previous": previous}
        atomic_write(path, json.dumps(marker, sort_keys=True), mode=0o600, keep_previous=False)

    def _read_marker(self, name: str) -> Optional[Dict]:
        try:
            with open(marker_path(self.paths, name), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _remove_marker(self, name: str) -> None:
        try:
            os.unlink(marker_path(self.paths, name))
        except FileNotFoundError:
            pass

    # --- recovery ---

    def _recover_locked(self) -> List[FetchStatus]:
        journal = read_journal(self.paths)
        if journal is None:
            self._drop_stale_markers()
            return []
        started = time.monotonic()
        status = FetchStatus(**journal.status) if journal.status else FetchStatus(
            name=journal.name, version=journal.version, package=journal.package, status=FAILED,
            previous_version=journal.previous_version, running_version=journal.previous_version)
        log.warning("recovering the install of %s %s interrupted at %s", journal.name, journal.version,
                    journal.state)
        if journal.state in (UNPACKING, INSTALLING):
            if journal.version != journal.previous_version:
                self.store.remove_version(journal.name, journal.version)
            self.store.remove_staging(journal.name)
            clear_journal(self.paths)
            status.status = FAILED
            status.step = journal.state
            status.error = "install interrupted while %s (crash or power cut); previous version kept" % journal.state
            status.running_version = journal.previous_version
        elif journal.state == REGISTERING:
            marker = self._read_marker(journal.name)
            if marker and marker.get("state") == "reverted" and marker.get("version") == journal.version:
                self._rollback(journal, status, "crash loop: the boot guard reverted it after %s starts"
                               % (marker.get("attempts", 0) - 1))
            else:
                self._activate(journal, status, started)
        elif journal.state == COMMITTED:
            self._commit(journal)
            status.status = INSTALLED
            status.running_version = journal.version
        else:
            self._rollback(journal, status, status.error or "interrupted during rollback")
        status.finished_at = time.time()
        save_status(self.paths, status)
        return [status]

    def _drop_stale_markers(self) -> None:
        directory = otau_dir(self.paths)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        for entry in names:
            if entry.startswith("selfupdate-") and entry.endswith(".json"):
                os.unlink(os.path.join(directory, entry))


def _startsecs(name: str, conf: str) -> float:
    try:
        return parse_program(name, conf).startsecs
    except PackageError:
        return 1.0


def install_package(tarball: str, sha256: Optional[str] = None, paths: Optional[GwePaths] = None,
                    settings: Optional[OtauSettings] = None) -> FetchStatus:
    """Install ``tarball`` (``<name>.v<version>.tar.gz``) into GWE_HOME; see :class:`Installer`."""
    return Installer(paths, settings).install(tarball, sha256)


def recover(paths: Optional[GwePaths] = None, settings: Optional[OtauSettings] = None) -> List[FetchStatus]:
    """Call on every start of gwe: finishes or undoes an install cut short by a crash or power loss."""
    return Installer(paths, settings).recover()


@dataclass(frozen=True)
class CheckReport:
    package: Optional[PackageName]
    problems: List[str]
    signature: Optional[str] = None
    installer: Optional[str] = None
    has_program: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def check_tarball(tarball: str, paths: Optional[GwePaths] = None,
                  settings: Optional[OtauSettings] = None) -> CheckReport:
    """Everything install would check before running install.sh, in a scratch directory."""
    paths = paths or gwe_paths()
    settings = settings or load_settings(paths)
    problems: List[str] = []
    try:
        package = parse_package_name(tarball)
    except PackageError as exc:
        problems.append(str(exc))
        package = None
    if not os.path.isfile(tarball):
        return CheckReport(package, problems + ["%s: no such file" % tarball])
    try:
        check_size(tarball, settings.max_package_bytes)
    except OtauError as exc:
        return CheckReport(package, problems + [str(exc)])
    scratch = tempfile.mkdtemp(prefix="gwe-check-")
    try:
        probe = package or PackageName("unnamed", "0")
        os.makedirs(os.path.join(scratch, "log"))
        prepared = prepare(tarball, probe, os.path.join(scratch, "staging"), os.path.join(scratch, "app"),
                           paths, settings, os.path.join(scratch, "log"))
    except OtauError as exc:
        return CheckReport(package, problems + [str(exc)])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return CheckReport(package, problems, prepared.signature.describe(), prepared.unpacked.layout.installer,
                       prepared.program is not None)
