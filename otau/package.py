"""The OTAU package model: file names, member layout, and supervisor.conf -> ``[program:<name>]``.

A package is ``<name>.v<version>.tar.gz``. The name becomes the supervisord program name,
the log name and the directory under ``apps/``, so it is kept to letters, digits, ``_`` and
``-``; the version may hold dots (``gwe.v1.5.RC68.tar.gz``) and becomes a directory name.
"""
from __future__ import annotations

import configparser
import os
import re
import shlex
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

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


# Reference §5 defaults for keys the publisher did not give; log paths live under GWE_HOME.
def program_defaults(name: str, log_dir: str) -> Dict[str, str]:
    return {
        "stdout_logfile": os.path.join(log_dir, name + ".log"),
        "redirect_stderr": "true",
        "stdout_logfile_maxbytes": "200KB",
        "stdout_logfile_backups": "1",
    }


def _escape(value: str) -> str:
    """Protect a value we insert from supervisor's %(...)s expansion."""
    return value.replace("%", "%%")


def _quote_env(value: str) -> str:
    if '"' in value or "\n" in value:
        raise PackageError("cannot pass %r in a supervisor environment" % value)
    return '"%s"' % _escape(value)


@dataclass(frozen=True)
class Program:
    """A ``[program:<name>]`` file and the facts the installer and the boot guard need from it."""
    name: str
    conf: str
    argv: Tuple[str, ...]          # the publisher's command, without a boot guard in front
    directory: str
    environment: Dict[str, str]
    startsecs: float
    autostart: bool


def read_supervisor_conf(text: str) -> Dict[str, str]:
    """The ``[supervisord]`` section of a package's supervisor.conf (duplicate keys: last wins)."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)  # keys lower-cased, as supervisord does
    try:
        parser.read_string(text, source=SUPERVISOR_CONF)
    except configparser.Error as exc:
        raise PackageError("supervisor.conf is not an INI file: %s" % str(exc).splitlines()[0])
    if not parser.has_section("supervisord"):
        raise PackageError("supervisor.conf has no [supervisord] section")
    extra = [s for s in parser.sections() if s != "supervisord"]
    if extra:
        raise PackageError("supervisor.conf may hold only [supervisord], found [%s]" % extra[0])
    return dict(parser.items("supervisord"))


def render_program(name: str, options: Dict[str, str], app_dir: str, app_env: Dict[str, str],
                   log_dir: str, wrap_argv: Optional[List[str]] = None) -> Program:
    """Build ``[program:<name>]`` from the publisher's options, defaults, and our environment.

    ``directory`` defaults to the version's own directory, so the conf alone says which
    version runs and restoring an old conf restores the old version. ``app_env`` (GWE_*)
    comes first in ``environment``; the publisher's own entries follow and win.
    ``wrap_argv`` prefixes the command (the self-update boot guard).
    """
    command = options.get("command", "").strip()
    if not command:
        raise PackageError("supervisor.conf: [supervisord] has no command")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise PackageError("supervisor.conf: bad command %r: %s" % (command, exc))
    if not argv:
        raise PackageError("supervisor.conf: empty command")
    merged = dict(program_defaults(name, log_dir))
    merged["directory"] = _escape(app_dir)
    merged.update({k: v for k, v in options.items() if k not in ("command", "environment")})
    env_items = ",".join("%s=%s" % (k, _quote_env(v)) for k, v in app_env.items())
    user_env = options.get("environment", "").strip()
    merged["environment"] = env_items + ("," + user_env if user_env else "")
    full_command = command
    if wrap_argv:
        full_command = " ".join(shlex.quote(_escape(a)) for a in wrap_argv) + " -- " + command
    lines = ["[program:%s]" % name, "command = %s" % full_command]
    lines += ["%s = %s" % (k, v.replace("\n", "\n    ")) for k, v in merged.items()]
    return parse_program(name, "\n".join(lines) + "\n")


def parse_program(name: str, conf: str) -> Program:
    """Parse a program file exactly as supervisord will, so a bad one never reaches its include dir."""
    from supervisor.options import ServerOptions, UnhosedConfigParser

    parser = UnhosedConfigParser()
    try:
        parser.read_string(conf)
        options = ServerOptions()
        options.configfile = SUPERVISOR_CONF
        processes = options.processes_from_section(parser, "program:" + name, name)
        argv = shlex.split(processes[0].command)
    except Exception as exc:  # supervisor raises ValueError and friends for bad values
        raise PackageError("supervisor.conf rejected by supervisor: %s" % str(exc).splitlines()[0])
    if not processes or not argv:
        raise PackageError("supervisor.conf defines no process")
    if "--" in argv and len(argv) > 1 and argv[1].endswith("boot_guard.py"):
        argv = argv[argv.index("--") + 1:]
    first = processes[0]
    return Program(name=name, conf=conf, argv=tuple(argv), directory=first.directory,
                   environment=dict(first.environment or {}), startsecs=float(first.startsecs),
                   autostart=bool(first.autostart))
