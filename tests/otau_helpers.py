"""Building OTAU packages (good and hostile) in code with tarfile, for the otau tests."""
from __future__ import annotations

import io
import os
import tarfile
from typing import Dict, Iterable, Optional, Tuple, Union

Content = Union[bytes, str]
FileSpec = Union[Content, Tuple[Content, int]]


def add_file(tf: tarfile.TarFile, name: str, data: Content, mode: int = 0o644) -> None:
    raw = data.encode() if isinstance(data, str) else data
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    info.mode = mode
    tf.addfile(info, io.BytesIO(raw))


def add_special(tf: tarfile.TarFile, name: str, kind: bytes, linkname: str = "", size: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    tf.addfile(info)


def write_tarball(path: str, files: Dict[str, FileSpec], extra=None) -> str:
    """A gzip tar with ``files`` (name -> data or (data, mode)); ``extra(tf)`` adds odd members."""
    with tarfile.open(path, "w:gz") as tf:
        for name, spec in files.items():
            data, mode = spec if isinstance(spec, tuple) else (spec, 0o644)
            add_file(tf, name, data, mode)
        if extra is not None:
            extra(tf)
    return path


def supervisor_conf(command: str, startsecs: int = 1, **options: object) -> str:
    lines = ["[supervisord]", "command = %s" % command, "startsecs = %d" % startsecs,
             "stopwaitsecs = 2", "startretries = 1"]
    lines += ["%s = %s" % (k, v) for k, v in options.items()]
    return "\n".join(lines) + "\n"


PYTHON = "%(ENV_GWE_PYTHON)s"  # the suite's interpreter, as otau tells the program (never PATH's python3)
SLEEPER = "import os, time\nprint('app', os.environ.get('GWE_APP_VERSION'), flush=True)\ntime.sleep(3600)\n"


def app_files(version: str, install_sh: str = "#!/bin/sh\necho installing $GWE_APP_NAME $GWE_APP_VERSION\n",
              command: Optional[str] = PYTHON + " app.py", startsecs: int = 1,
              extra: Optional[Dict[str, FileSpec]] = None) -> Dict[str, FileSpec]:
    files: Dict[str, FileSpec] = {"install.sh": (install_sh, 0o755), "app.py": SLEEPER,
                                  "VERSION": version + "\n"}
    if command is not None:
        files["supervisor.conf"] = supervisor_conf(command, startsecs)
    files.update(extra or {})
    return files


def make_app(directory: str, name: str, version: str, top: Optional[str] = None, **kwargs) -> str:
    files = app_files(version, **kwargs)
    if top:
        files = {"%s/%s" % (top, k): v for k, v in files.items()}
    return write_tarball(os.path.join(directory, "%s.v%s.tar.gz" % (name, version)), files)


def tree_snapshot(root: str, skip: Iterable[str] = ()) -> Dict[str, Tuple[str, bytes]]:
    """path -> (kind, content or link target) for everything under ``root`` (minus ``skip`` prefixes)."""
    skip = tuple(os.path.join(root, s) for s in skip)
    snap: Dict[str, Tuple[str, bytes]] = {}
    for directory, dirs, files in os.walk(root):
        if directory.startswith(skip) and any(directory == s or directory.startswith(s + os.sep) for s in skip):
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(directory, name)
            if any(path == s or path.startswith(s + os.sep) for s in skip) or name.endswith((".prev", ".lock")):
                continue
            if os.path.islink(path):
                snap[path] = ("link", os.readlink(path).encode())
            elif os.path.isdir(path):
                snap[path] = ("dir", b"")
            else:
                with open(path, "rb") as f:
                    snap[path] = ("file", f.read())
    return snap


_SLEEP = "sleep 3600"  # on any PATH: an injection that would otherwise install
# supervisor.conf texts that try to smuggle a second program, supervisord settings or root into the
# program file (issue: configparser's read_string splits lines on LF only, supervisord on CR too)
INJECTIONS = {
    "bare_cr_program": "[supervisord]\ncommand = %s\rstartsecs = 1\r[program:evil]\rcommand = sleep 3601\r"
                       "autostart = true\n" % _SLEEP,
    "bare_cr_unix_http_server": "[supervisord]\ncommand = %s\r[unix_http_server]\rchmod = 0777\n" % _SLEEP,
    "continuation_command": "[supervisord]\ncommand = sleep 3600\n  [program:evil]\n  command = sleep 3601\n",
    "user_root": "[supervisord]\ncommand = %s\nuser = root\n" % _SLEEP,
    "logfile_elsewhere": "[supervisord]\ncommand = %s\nstdout_logfile = /tmp/gwe-test-elsewhere.log\n" % _SLEEP,
    "default_section": "[DEFAULT]\nuser = root\n[supervisord]\ncommand = %s\n" % _SLEEP,
    "vertical_tab": "[supervisord]\ncommand = %s\x0b[program:evil]\n" % _SLEEP,
    "unknown_key": "[supervisord]\ncommand = %s\nserverurl = http://127.0.0.1:1\n" % _SLEEP,
}
