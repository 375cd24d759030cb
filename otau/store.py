"""Installed apps on disk: ``apps/<name>/<version>/``, the ``current`` symlink, ``state.json``,
and the program file ``<supervisor_include>/<name>.conf``.

``state.json`` is the record of what is installed (the current version and, per kept
version, the program conf it ran with, so an older version can be restored exactly, and the
sha256 of the package it came from). A version reinstalled in place (``gwe -I --force``) gets a
directory of its own, ``<version>~<n>`` (``~`` never occurs in a version), recorded in ``dirs``;
every other version's directory is its version.
Every file is replaced atomically; the symlink is switched by renaming a new link over it.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from atomic_config import GwePaths, atomic_write, fsync_dir, gwe_paths, read_recovering

from .program import check_program_file

log = logging.getLogger(__name__)

STATE = "state.json"
CURRENT = "current"
STAGING_PREFIX = ".staging-"
REINSTALL_SEP = "~"


def version_of(directory: str) -> str:
    """The version a version directory holds (``2.1~1`` holds 2.1, reinstalled once)."""
    return directory.split(REINSTALL_SEP, 1)[0]


@dataclass
class AppState:
    name: str
    current: Optional[str] = None
    history: List[str] = field(default_factory=list)          # kept versions, oldest first
    confs: Dict[str, Optional[str]] = field(default_factory=dict)  # version -> program conf (None: one-off)
    dirs: Dict[str, str] = field(default_factory=dict)         # version -> its directory, where it is not the version
    sha256: Dict[str, str] = field(default_factory=dict)       # version -> sha256 of the package it came from

    def directory(self, version: Optional[str]) -> Optional[str]:
        return self.dirs.get(version, version) if version else None

    def forget(self, version: str) -> None:
        for table in (self.confs, self.dirs, self.sha256):
            table.pop(version, None)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "current": self.current, "history": self.history,
                           "confs": self.confs, "dirs": self.dirs, "sha256": self.sha256},
                          indent=1, sort_keys=True) + "\n"


class AppStore:
    def __init__(self, paths: GwePaths) -> None:
        self.paths = paths

    def app_root(self, name: str) -> str:
        return os.path.join(self.paths.apps, name)

    def version_dir(self, name: str, directory: str) -> str:
        """The directory of a version: ``directory`` is the version, or its reinstall directory."""
        return os.path.join(self.app_root(name), directory)

    def staging_dir(self, name: str, version: str) -> str:
        return os.path.join(self.app_root(name), "%s%s-%s" % (STAGING_PREFIX, version, secrets.token_hex(4)))

    def conf_path(self, name: str) -> str:
        return os.path.join(self.paths.supervisor_include, name + ".conf")

    def read_state(self, name: str) -> AppState:
        doc = read_recovering(os.path.join(self.app_root(name), STATE), lambda raw: json.loads(raw.decode("utf-8")))
        if not doc:
            return AppState(name)
        return AppState(name, doc.get("current"), list(doc.get("history", [])), dict(doc.get("confs", {})),
                        dict(doc.get("dirs", {})), dict(doc.get("sha256", {})))

    def reinstall_directory(self, name: str, version: str) -> str:
        """A fresh directory name for reinstalling ``version`` beside the one that runs."""
        n = 1
        while os.path.lexists(self.version_dir(name, "%s%s%d" % (version, REINSTALL_SEP, n))):
            n += 1
        return "%s%s%d" % (version, REINSTALL_SEP, n)

    def write_state(self, state: AppState) -> None:
        os.makedirs(self.app_root(state.name), exist_ok=True)
        atomic_write(os.path.join(self.app_root(state.name), STATE), state.to_json(), mode=0o644)

    def read_conf(self, name: str) -> Optional[str]:
        try:
            with open(self.conf_path(name), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_conf(self, name: str, conf: Optional[str], verify: bool = True) -> None:
        """Install ``conf`` as the program file, or remove the file when ``conf`` is None.

        With ``verify`` (a file otau generated), the written file is read back with supervisor's
        parser: it must hold exactly ``[program:<name>]`` with ``conf``'s values (PackageError
        otherwise). A previous file being restored, perhaps the operator's own, is put back as it was.
        """
        path = self.conf_path(name)
        if conf is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if self.read_conf(name) != conf:
                atomic_write(path, conf, mode=0o644)
            if verify:
                check_program_file(name, path, conf)
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        fsync_dir(os.path.dirname(path))

    def current_target(self, name: str) -> Optional[str]:
        try:
            return os.readlink(os.path.join(self.app_root(name), CURRENT))
        except OSError:
            return None

    def switch_current(self, name: str, version: Optional[str]) -> None:
        """Point ``current`` at a version directory (relative link) by an atomic rename; None removes it."""
        root = self.app_root(name)
        link = os.path.join(root, CURRENT)
        if version is None:
            try:
                os.unlink(link)
            except FileNotFoundError:
                return
            fsync_dir(root)
            return
        if self.current_target(name) == version:
            return
        os.makedirs(root, exist_ok=True)
        tmp = os.path.join(root, ".%s-%s" % (CURRENT, secrets.token_hex(4)))
        os.symlink(version, tmp)
        os.replace(tmp, link)
        fsync_dir(root)

    def in_use(self, name: str, directory: str) -> Optional[str]:
        """Why a version directory holds what runs or is recorded as installed (None if neither):
        the ``current`` link, state.json, or the program file point at it."""
        if self.current_target(name) == directory:
            return "the current link points at it"
        try:
            state = self.read_state(name)
            if state.directory(state.current) == directory:
                return "state.json records it as current"
        except Exception:  # a damaged state.json: the other two facts still count
            pass
        conf = self.read_conf(name)
        line = "directory = %s\n" % self.version_dir(name, directory).replace("%", "%%")
        if conf is not None and line in conf:
            return "the program file runs it"
        return None

    def remove_version(self, name: str, directory: str) -> bool:
        """Delete a version directory, never one that is current or running (logged, False)."""
        path = self.version_dir(name, directory)
        reason = self.in_use(name, directory)
        if reason:
            log.error("not removing %s: %s", path, reason)
            return False
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            fsync_dir(self.app_root(name))
        return True

    def remove_staging(self, name: str) -> None:
        root = self.app_root(name)
        try:
            entries = os.listdir(root)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.startswith(STAGING_PREFIX) or entry.startswith("." + CURRENT + "-"):
                path = os.path.join(root, entry)
                if os.path.islink(path):
                    os.unlink(path)
                else:
                    shutil.rmtree(path, ignore_errors=True)

    def installed_versions(self) -> Dict[str, str]:
        """app name -> installed version, for every app otau has installed (for engine_report)."""
        try:
            names = sorted(os.listdir(self.paths.apps))
        except FileNotFoundError:
            return {}
        versions = {}
        for name in names:
            # the link is what supervisord runs now, also during an install's health gate
            current = self.current_target(name)
            if current is None and os.path.isfile(os.path.join(self.app_root(name), STATE)):
                current = self.read_state(name).current
            if current:
                versions[name] = version_of(current)
        return versions


def installed_versions(paths: Optional[GwePaths] = None) -> Dict[str, str]:
    """app name -> installed version (what engine_report shows beside supervisord's process info)."""
    return AppStore(paths or gwe_paths()).installed_versions()
