"""Everything that can be checked before anything runs: signature and manifest (while unpacking),
installer, program.

Shared by the install pipeline and ``gwe --check-tarball`` (which does it in a scratch directory).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import List, Optional

from atomic_config import GwePaths, gwe_paths

from .errors import OtauError, PackageError
from .package import INSTALL_SH, SUPERVISOR_CONF, PackageName, parse_package_name
from .program import Program, read_supervisor_conf, render_program
from .runner import app_environment
from .selfupdate import guard_argv
from .settings import OtauSettings, load_settings
from .unpack import Unpacked, unpack_package
from .verify import (ManifestGate, SignatureResult, check_signature, check_size, load_trusted_keys,
                     signature_requirement)

MAX_SUPERVISOR_CONF_BYTES = 64 * 1024


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


def prepare(tarball: str, package: PackageName, staging: str, target: str, paths: GwePaths,
            settings: OtauSettings, log_dir: str, min_free: int = 0) -> Prepared:
    """Unpack into ``target`` and check everything that can be checked before running anything.

    The signature is decided on before anything is extracted, and every member is checked
    against the manifest while it streams (:mod:`otau.unpack`), and no file is unpacked that would
    leave less than ``min_free`` bytes free. ``log_dir`` (which must
    exist) is where the program's log goes. On failure ``target`` is removed and the error raised.
    """
    trusted = load_trusted_keys(paths.trusted_keys)
    required = signature_requirement(settings.require_signatures, trusted, package.is_self_update)
    decided: List[SignatureResult] = []

    def head_check(manifest: Optional[bytes], signature: Optional[bytes]) -> Optional[ManifestGate]:
        decided.append(check_signature(manifest, signature, trusted, required))
        return ManifestGate(manifest, package) if manifest is not None else None

    unpacked = unpack_package(tarball, staging, target, settings.max_unpacked_bytes, settings.max_members,
                              head_check, min_free)
    try:
        entries = unpacked.entries
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
                wrap = guard_argv(paths, package.name, package.version, settings.boot_attempts)
                retries = int(options.get("startretries", "3"))
                options["startretries"] = str(max(retries, settings.boot_attempts + 1))
            env = app_environment(package.name, package.version, target, paths.home)
            user = None if package.is_self_update else (settings.app_user or None)
            program = render_program(package.name, options, target, env, log_dir, wrap, user)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return Prepared(package, unpacked, decided[0], program)


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
