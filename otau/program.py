"""A package's supervisor.conf -> the ``[program:<name>]`` file supervisord runs it with.

The file supervisord reads runs as supervisord's user (often root), so nothing of the
package's text is copied into it: its ``[supervisord]`` section is parsed, each key must be on
an allow-list and each value must have that key's shape (supervisor's own ``datatypes``), no
value may hold a CR, LF, continuation or other control character, and the file is then
generated from those values. The generated text is read back with supervisor's own parser
(universal newlines, as supervisord opens it), which must find exactly one section,
``[program:<name>]``, holding exactly the values generated; the file on disk is checked the
same way after it is written (:func:`check_program_file`). ``user`` is the operator's
(``[otau] app_user``), never the package's.
"""
from __future__ import annotations

import io
import os
import re
import shlex
import unicodedata
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from .errors import PackageError

SECTION = "supervisord"


def _datatypes():
    from supervisor import datatypes

    return datatypes


def _text(value: str) -> None:
    """Free text (a command, a path): anything printable on one line."""


def _logfile(value: str) -> None:
    if value.lower() not in ("auto", "none", "off"):
        raise ValueError("log files are placed by otau (under the gwe log directory); a package may only "
                         "say AUTO (supervisord's childlogdir) or NONE")


def _env_name(value: str) -> None:
    for key in _datatypes().dict_of_key_value_pairs(value):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ValueError("bad environment variable name %r" % key)


def _shape(name: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        getattr(_datatypes(), name)(value)
    return check


# The keys a package may set, each with the check of its value's shape. Anything else
# (user, serverurl, event and capture settings, log paths, unknown keys) is refused.
PUBLISHER_KEYS: Dict[str, Callable[[str], None]] = {
    "command": _text,
    "process_name": _text,
    "numprocs": _shape("integer"),
    "numprocs_start": _shape("integer"),
    "priority": _shape("integer"),
    "autostart": _shape("boolean"),
    "autorestart": _shape("auto_restart"),
    "startsecs": _shape("integer"),
    "startretries": _shape("integer"),
    "exitcodes": _shape("list_of_exitcodes"),
    "stopsignal": _shape("signal_number"),
    "stopwaitsecs": _shape("integer"),
    "stopasgroup": _shape("boolean"),
    "killasgroup": _shape("boolean"),
    "redirect_stderr": _shape("boolean"),
    "stdout_logfile": _logfile,
    "stdout_logfile_maxbytes": _shape("byte_size"),
    "stdout_logfile_backups": _shape("integer"),
    "stdout_syslog": _shape("boolean"),
    "stderr_logfile": _logfile,
    "stderr_logfile_maxbytes": _shape("byte_size"),
    "stderr_logfile_backups": _shape("integer"),
    "stderr_syslog": _shape("boolean"),
    "environment": _env_name,
    "directory": _text,
    "umask": _shape("octal_type"),
}


def check_value(key: str, value: str) -> None:
    """No character that could end a line or start a continuation for any reader of the file."""
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            raise PackageError("supervisor.conf: %s holds a control character (%r): refused" % (key, ch))


def _parser():
    from supervisor.options import UnhosedConfigParser

    return UnhosedConfigParser()


def read_supervisor_conf(text: str) -> Dict[str, str]:
    """The ``[supervisord]`` section of a package's supervisor.conf, checked (duplicate keys: last wins).

    Read with supervisor's own parser (inline ``;``/``#`` comments, keys lower-cased), after
    CRLF line ends are made LF. A bare CR, a continuation line or a control character in
    any value, a key off the allow-list, or a second section is refused.
    """
    text = text.replace("\r\n", "\n")
    if "\r" in text:
        raise PackageError("supervisor.conf holds a bare CR (a line break for supervisord): refused")
    parser = _parser()
    try:
        parser.read_string(text, source="supervisor.conf")
    except Exception as exc:  # configparser.Error and its friends
        raise PackageError("supervisor.conf is not an INI file: %s" % str(exc).splitlines()[0])
    if parser.defaults():
        raise PackageError("supervisor.conf may hold only [supervisord], found [DEFAULT]")
    if not parser.has_section(SECTION):
        raise PackageError("supervisor.conf has no [supervisord] section")
    extra = [s for s in parser.sections() if s != SECTION]
    if extra:
        raise PackageError("supervisor.conf may hold only [supervisord], found [%s]" % extra[0])
    options = dict(parser.items(SECTION))
    for key, value in options.items():
        if "\n" in value:
            raise PackageError("supervisor.conf: %s spans several lines (a continuation): refused" % key)
        check_value(key, value)
        check = PUBLISHER_KEYS.get(key)
        if check is None:
            what = "set by the operator ([otau] app_user)" if key == "user" else "not allowed in a package"
            raise PackageError("supervisor.conf: key %r is %s" % (key, what))
        try:
            check(value)
        except (ValueError, TypeError) as exc:
            raise PackageError("supervisor.conf: bad %s %r: %s" % (key, value, exc))
    return options


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
    if '"' in value:
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


def render_program(name: str, options: Dict[str, str], app_dir: str, app_env: Dict[str, str],
                   log_dir: str, wrap_argv: Optional[List[str]] = None, user: Optional[str] = None) -> Program:
    """Generate ``[program:<name>]`` from checked options (:func:`read_supervisor_conf`), defaults,
    our environment and the operator's ``user``.

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
    if wrap_argv:
        command = " ".join(shlex.quote(_escape(a)) for a in wrap_argv) + " -- " + command
    values = {"command": command}
    values.update(program_defaults(name, log_dir))
    values["directory"] = _escape(app_dir)
    values.update({k: v for k, v in options.items() if k not in ("command", "environment")})
    env_items = ",".join("%s=%s" % (k, _quote_env(v)) for k, v in app_env.items())
    user_env = options.get("environment", "").strip()
    values["environment"] = env_items + ("," + user_env if user_env else "")
    if user:
        values["user"] = user
    for key, value in values.items():
        check_value(key, value)
    lines = ["[program:%s]" % name] + ["%s = %s" % (k, v) for k, v in values.items()]
    conf = "\n".join(lines) + "\n"
    if program_values(name, conf) != values:
        raise PackageError("supervisor.conf: the program file would not read back as written: refused")
    return parse_program(name, conf)


def program_values(name: str, conf: str) -> Dict[str, str]:
    """The values of ``[program:<name>]`` as supervisord reads ``conf`` (universal newlines), which
    must hold that one section and nothing else."""
    parser = _parser()
    try:
        parser.read_file(io.StringIO(conf, newline=None), source=name + ".conf")
    except Exception as exc:
        raise PackageError("program file for %s is not an INI file: %s" % (name, str(exc).splitlines()[0]))
    if parser.sections() != ["program:" + name] or parser.defaults():
        raise PackageError("program file for %s holds sections %s, not exactly [program:%s]"
                           % (name, ", ".join(parser.sections()) or "none", name))
    return dict(parser.items("program:" + name))


def check_program_file(name: str, path: str, conf: str) -> None:
    """Read the written file back with supervisor's parser: exactly ``conf``'s one section and values."""
    parser = _parser()
    try:
        parser.read([path], encoding="utf-8")
    except Exception as exc:
        raise PackageError("%s does not read back: %s" % (path, str(exc).splitlines()[0]))
    if parser.sections() != ["program:" + name] or parser.defaults() \
            or dict(parser.items("program:" + name)) != program_values(name, conf):
        raise PackageError("%s does not read back as the program file written for %s" % (path, name))


def parse_program(name: str, conf: str) -> Program:
    """Parse a program file exactly as supervisord will, so a bad one never reaches its include dir."""
    from supervisor.options import ServerOptions

    program_values(name, conf)
    parser = _parser()
    try:
        parser.read_file(io.StringIO(conf, newline=None))
        options = ServerOptions()
        options.configfile = "supervisor.conf"
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
