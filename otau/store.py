"""Installed apps on disk: ``apps/<name>/<version>/``, the ``current`` symlink, ``state.json``,
and the program file ``<supervisor_include>/<name>.conf``.

``state.json`` is the record of what is installed (the current version and, per kept
version, the program conf it ran with, so an older version can be restored exactly).
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

from atomic_config import GwePaths, atomic_write, fsync_dir, read_recovering

from .program import check_program_file

log = logging.getLogger(__name__)

STATE = "state.json"
CURRENT = "current"
STAGING_PREFIX = ".staging-"


@dataclass
class AppState:
    name: str
    current: Optional[str] = None
    history: List[str] = field(default_factory=list)          # kept versions, oldest first
    confs: Dict[str, Optional[str]] = field(default_factory=dict)  # version -> program conf (None: one-off)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "current": self.current, "history": self.history,
                           "confs": self.confs}, indent=1, sort_keys=True) + "\n"


class AppStore:
    def __init__(self, paths: GwePaths) -> None:
        self.paths = paths

    def app_root(self, name: str) -> str:
        return os.path.join(self.paths.apps, name)

    def version_dir(self, name: str, version: str) -> str:
        return os.path.join(self.app_root(name), version)

    def staging_dir(self, name: str, version: str) -> str:
        return os.path.join(self.app_root(name), "%s%s-%s" % (STAGING_PREFIX, version, secrets.token_hex(4)))

    def conf_path(self, name: str) -> str:
        return os.path.join(self.paths.supervisor_include, name + ".conf")

    def read_state(self, name: str) -> AppState:
        doc = read_recovering(os.path.join(self.app_root(name), STATE), lambda raw: json.loads(raw.decode("utf-8")))
        if not doc:
            return AppState(name)
        return AppState(name, doc.get("current"), list(doc.get("history", [])), dict(doc.get("confs", {})))

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
        """Point ``current`` at ``version`` (relative link) by an atomic rename; None removes it."""
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

    def in_use(self, name: str, version: str) -> Optional[str]:
        """Why ``version`` is what runs or is recorded as installed (None if it is neither): the
        ``current`` link, state.json, or the program file's directory point at it."""
        if self.current_target(name) == version:
            return "the current link points at it"
        try:
            if self.read_state(name).current == version:
                return "state.json records it as current"
        except Exception:  # a damaged state.json: the other two facts still count
            pass
        conf = self.read_conf(name)
        directory = "directory = %s\n" % self.version_dir(name, version).replace("%", "%%")
        if conf is not None and directory in conf:
            return "the program file runs it"
        return None

    def remove_version(self, name: str, version: str) -> bool:
        """Delete a version's directory, never one that is current or running (logged, False)."""
        path = self.version_dir(name, version)
        reason = self.in_use(name, version)
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
                versions[name] = current
        return versions
