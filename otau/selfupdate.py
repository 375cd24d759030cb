"""Self-update of Gateway Engine's own programs (gwe, gmq): the boot-guard marker and command.

A self-updated program runs as ``python <otau>/boot_guard.py MARKER VERSION MAX -- <command>``
(see :mod:`otau.boot_guard`). Before the new program file is switched in, the marker records
the previous program (file, argv, directory, environment) so that the guard can put it back
by itself if the new version crash-loops with no installer alive to roll it back.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Dict, List, Optional

from atomic_config import GwePaths, atomic_write

from . import boot_guard
from .errors import PackageError
from .program import parse_program
from .settings import otau_dir
from .store import CURRENT

log = logging.getLogger(__name__)

PENDING = "pending"
REVERTED = "reverted"
_PREFIX = "selfupdate-"


def marker_path(paths: GwePaths, name: str) -> str:
    return os.path.join(otau_dir(paths), "%s%s.json" % (_PREFIX, name))


def guard_path(paths: GwePaths) -> str:
    return os.path.join(otau_dir(paths), "boot_guard.py")


def guard_argv(paths: GwePaths, name: str, version: str, max_attempts: int) -> List[str]:
    """What goes in front of a self-updated program's command.

    The guard needs only the standard library, so it runs on the base interpreter: the
    virtualenv gwe runs in may be an over-the-air version that is pruned later.
    """
    return [base_interpreter(), guard_path(paths), marker_path(paths, name), version, str(max_attempts)]


def base_interpreter() -> str:
    """The interpreter of the Python installation below any virtualenv (``sys.base_prefix``)."""
    if sys.base_prefix != sys.prefix:
        for name in ("python%d.%d" % sys.version_info[:2], "python3", "python"):
            candidate = os.path.join(sys.base_prefix, "bin", name)
            if os.access(candidate, os.X_OK):
                return os.path.realpath(candidate)
    return os.path.realpath(sys.executable)


def write_marker(paths: GwePaths, name: str, version: str, conf_path: str, app_root: str,
                 previous_version: Optional[str], previous_conf: Optional[str],
                 previous_directory: Optional[str] = None) -> None:
    """Install the guard script (from this, known-good, version) and a ``pending`` marker.

    An existing marker is kept: a resumed install must not reset the guard's count.
    """
    path = marker_path(paths, name)
    if os.path.exists(path):
        return
    with open(boot_guard.__file__, "rb") as f:
        atomic_write(guard_path(paths), f.read(), mode=0o644, keep_previous=False)
    previous = None
    if previous_conf is not None:
        try:
            prev = parse_program(name, previous_conf)
            previous = {"argv": list(prev.argv), "directory": prev.directory, "environment": prev.environment,
                        "version": previous_version, "conf": previous_conf,
                        "current": previous_directory or previous_version}  # what the link pointed at
        except PackageError as exc:
            log.warning("the boot guard cannot restore %s's previous program: %s", name, exc)
    marker = {"name": name, "version": version, "state": PENDING, "attempts": 0, "conf_path": conf_path,
              "current_link": os.path.join(app_root, CURRENT), "previous": previous}
    atomic_write(path, json.dumps(marker, sort_keys=True), mode=0o600, keep_previous=False)


def read_marker(paths: GwePaths, name: str) -> Optional[Dict]:
    try:
        with open(marker_path(paths, name), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def remove_marker(paths: GwePaths, name: str) -> None:
    try:
        os.unlink(marker_path(paths, name))
    except FileNotFoundError:
        pass


def remove_all_markers(paths: GwePaths) -> None:
    """Markers outlive their install only after a crash between commit and cleanup."""
    directory = otau_dir(paths)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for entry in names:
        if entry.startswith(_PREFIX) and entry.endswith(".json"):
            os.unlink(os.path.join(directory, entry))
