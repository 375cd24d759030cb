"""OTAU: signed, verified, transactional installs of ``<name>.v<version>.tar.gz`` packages via supervisord.

The pipeline (:mod:`otau.install`) composes one module per step: package model, verify,
unpack, checks, runner, supervisord control, store, journal, self-update guard, status.
See docs/otau.md.
"""
from .build import build_app, sign_tarball
from .check import CheckReport, check_tarball
from .errors import BuildError, OtauError, PackageError, SupervisorError, UnpackError, VerifyError
from .install import Installer, install_package, installed_versions, recover
from .package import PackageName, parse_package_name
from .settings import OtauSettings, load_settings
from .status import FAILED, INSTALLED, ROLLED_BACK, FetchStatus, load_statuses
from .verify import generate_keypair

__all__ = [
    "BuildError", "CheckReport", "FAILED", "FetchStatus", "INSTALLED", "Installer", "OtauError", "OtauSettings",
    "PackageError", "PackageName", "ROLLED_BACK", "SupervisorError", "UnpackError", "VerifyError", "build_app",
    "check_tarball", "generate_keypair", "install_package", "installed_versions", "load_settings", "load_statuses",
    "parse_package_name", "recover", "sign_tarball",
]
