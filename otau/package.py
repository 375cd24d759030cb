"""The OTAU package model: file names and member layout (supervisor.conf: :mod:`otau.program`).

A package is ``<name>.v<version>.tar.gz``. The name becomes the supervisord program name,
the log name and the directory under ``apps/``, so it is kept to letters, digits, ``_`` and
``-``; the version may hold dots (``gwe.v1.5.RC68.tar.gz``) and becomes a directory name.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List

from .errors import PackageError

SUFFIX = ".tar.gz"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
INSTALL_SH = "install.sh"
SETUP_PY = "setup.py"
SUPERVISOR_CONF = "supervisor.conf"
MANIFEST = "gwe-manifest.json"
SIGNATURE = "gwe-manifest.sig"
# apps/<name>/ holds these beside the version directories (store.CURRENT, store.STATE and its .prev)
RESERVED_CURRENT = "current"
RESERVED_STATE = "state.json"
# Components of Gateway Engine itself: updated through the same path, guarded against crash loops.
SELF_UPDATE_NAMES = frozenset({"gwe", "gmq", "device_client", "device-client"})


@dataclass(frozen=True)
class PackageName:
    name: str
    version: str

    @property
    def filename(self) -> str:
        return "%s.v%s%s" % (self.name, self.version, SUFFIX)

    @property
    def is_self_update(self) -> bool:
        return self.name in SELF_UPDATE_NAMES


def parse_package_name(path_or_name: str) -> PackageName:
    """Split ``<name>.v<version>.tar.gz`` (a path is fine); raise PackageError when malformed."""
    filename = os.path.basename(path_or_name)
    if not filename.endswith(SUFFIX):
        raise PackageError("bad package name %r: must be <name>.v<version>.tar.gz" % filename)
    stem = filename[:-len(SUFFIX)]
    name, sep, version = stem.partition(".v")
    if not sep:
        raise PackageError("bad package name %r: no '.v<version>' after the app name" % filename)
    if not NAME_RE.match(name):
        raise PackageError("bad app name %r in %r: use letters, digits, '_' and '-' (at most 64)" % (name, filename))
    if not VERSION_RE.match(version) or ".." in version:
        raise PackageError("bad version %r in %r: use letters, digits and . _ + - (at most 64)" % (version, filename))
    if version == RESERVED_CURRENT or version.startswith(RESERVED_STATE):
        raise PackageError("bad version %r in %r: the name of a file otau keeps beside the versions"
                           % (version, filename))
    return PackageName(name, version)


@dataclass(frozen=True)
class Layout:
    """Where the package's files sit: ``root`` is '' (top level) or the one top directory."""
    root: str
    installer: str  # INSTALL_SH or SETUP_PY
    has_supervisor_conf: bool


def find_layout(files: List[str]) -> Layout:
    """Find install.sh/setup.py at the top level or inside the single top directory.

    ``files`` are the normalised relative paths of the regular files in the archive.
    """
    names = set(files)
    tops = {f.split("/", 1)[0] for f in files}
    roots = [""]
    if len(tops) == 1 and any("/" in f for f in files):
        roots.append(next(iter(tops)) + "/")
    for root in roots:
        for installer in (INSTALL_SH, SETUP_PY):
            if root + installer in names:
                return Layout(root.rstrip("/"), installer, root + SUPERVISOR_CONF in names)
    raise PackageError("no install.sh or setup.py at the top level or in a single top directory")
