"""OTAU: signed, verified, transactional installs of ``<name>.v<version>.tar.gz`` packages via supervisord.

The pipeline (:mod:`otau.install`) composes one module per step: package model, verify,
unpack, checks, runner, supervisord control, store, journal, self-update guard, status.
See docs/otau.md.
"""
from importlib import import_module
from typing import Any

_HOMES = {  # public name -> the module that defines it; imported on first use (PEP 562), so that
    # a daemon that only recovers or installs never loads the builder, the checker and their imports
    "build_app": "build", "sign_tarball": "build", "CheckReport": "check", "check_tarball": "check",
    "BuildError": "errors", "OtauError": "errors", "PackageError": "errors", "SupervisorError": "errors",
    "UnpackError": "errors", "VerifyError": "errors", "Installer": "install", "install_package": "install",
    "installed_versions": "store", "recover": "recovery", "PackageName": "package",
    "parse_package_name": "package", "OtauSettings": "settings", "load_settings": "settings", "FAILED": "status",
    "INSTALLED": "status", "ROLLED_BACK": "status", "FetchStatus": "status", "load_statuses": "status",
    "generate_keypair": "verify",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(import_module("." + home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    "BuildError", "CheckReport", "FAILED", "FetchStatus", "INSTALLED", "Installer", "OtauError", "OtauSettings",
    "PackageError", "PackageName", "ROLLED_BACK", "SupervisorError", "UnpackError", "VerifyError", "build_app",
    "check_tarball", "generate_keypair", "install_package", "installed_versions", "load_settings", "load_statuses",
    "parse_package_name", "recover", "sign_tarball",
]
