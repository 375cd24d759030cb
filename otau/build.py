"""Publisher side: build ``<name>.v<version>.tar.gz`` from a buildfile, and sign packages.

Buildfile (JSON or YAML), paths relative to the buildfile's directory::

    {"name": "counter", "version": "1.2", "includes": ["install.sh", "supervisor.conf", "src/"],
     "excludes": ["*.pyc", "__pycache__"], "pre_build_cmds": ["make"], "post_build_cmds": []}

Build commands are the publisher's own, run on the publisher's machine in the buildfile's
directory: a string runs through ``/bin/sh -c`` (as the original's shell-based builds did),
a list runs as an argv without a shell, both with the caller's stdin and streamed output
(:mod:`otau.build_commands`). Post-build commands see ``GWE_BUILD_TARBALL``.
Every package gets ``gwe-manifest.json`` (sha256 of every file); with a key it also gets
``gwe-manifest.sig``. Members are written in sorted order with owner root:root.
"""
from __future__ import annotations

import fnmatch
import functools
import glob
import hashlib
import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from atomic_config import fsync_dir

from .build_commands import BuildCommands, Command
from .errors import BuildError, OtauError
from .package import INSTALL_SH, MANIFEST, SIGNATURE, PackageName, find_layout, parse_package_name
from .unpack import clean_member_name, safe_mode
from .verify import CHUNK, Entry, build_manifest, load_private_key, sign_manifest



@dataclass
class Buildfile:
    path: str
    package: PackageName
    includes: List[str]
    excludes: List[str] = field(default_factory=list)
    pre_build_cmds: List[Command] = field(default_factory=list)
    post_build_cmds: List[Command] = field(default_factory=list)

    @property
    def base(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))


def _string_list(doc: Dict, key: str, required: bool = False) -> List[str]:
    value = doc.get(key, [])
    if value is None:
        value = []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BuildError("buildfile: %r must be a list of strings" % key)
    if required and not value:
        raise BuildError("buildfile: %r is empty" % key)
    return value


def _commands(doc: Dict, key: str) -> List[Command]:
    value = doc.get(key) or []
    if not isinstance(value, list):
        raise BuildError("buildfile: %r must be a list of commands" % key)
    for cmd in value:
        ok = (isinstance(cmd, str) and cmd.strip()) or (
            isinstance(cmd, list) and cmd and all(isinstance(a, str) for a in cmd))
        if not ok:
            raise BuildError("buildfile: each of %r must be a string or a list of strings" % key)
    return value


def load_buildfile(path: str) -> Buildfile:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError("cannot read buildfile %s: %s" % (path, exc))
    try:
        doc = json.loads(text)
    except ValueError:
        import yaml  # only publishers need it; the daemon importing otau does not

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise BuildError("buildfile %s is neither JSON nor YAML: %s" % (path, str(exc).splitlines()[0]))
    if not isinstance(doc, dict):
        raise BuildError("buildfile %s must hold an object with name, version and includes" % path)
    for key in ("name", "version"):
        if not isinstance(doc.get(key), (str, int, float)) or str(doc.get(key)) == "":
            raise BuildError("buildfile: %r is missing" % key)
    version = str(doc["version"])
    if version.startswith("v") and len(version) > 1:
        version = version[1:]
    try:
        package = parse_package_name("%s.v%s.tar.gz" % (doc["name"], version))
    except OtauError as exc:
        raise BuildError("buildfile: %s" % exc)
    return Buildfile(path, package, _string_list(doc, "includes", required=True), _string_list(doc, "excludes"),
                     _commands(doc, "pre_build_cmds"), _commands(doc, "post_build_cmds"))


def _excluded(rel: str, excludes: List[str]) -> bool:
    parts = rel.split("/")
    return any(fnmatch.fnmatch(rel, pat) or any(fnmatch.fnmatch(p, pat) for p in parts) for pat in excludes)


def _inside(path: str, base: str) -> bool:
    return os.path.commonpath([path, base]) == base


def collect_files(bf: Buildfile) -> List[str]:
    """Relative paths (files and symlinks) selected by includes minus excludes."""
    base = bf.base
    real_base = os.path.realpath(base)
    found = set()
    for pattern in bf.includes:
        matches = sorted(glob.glob(os.path.join(base, pattern), recursive=True))
        if not matches:
            raise BuildError("buildfile: include %r matches nothing" % pattern)
        for match in matches:
            if not _inside(os.path.realpath(os.path.dirname(match) or "."), real_base):
                raise BuildError("buildfile: include %r is outside %s" % (pattern, base))
            if os.path.isdir(match) and not os.path.islink(match):
                for directory, dirs, files in os.walk(match):
                    dirs[:] = [d for d in dirs if not _excluded(os.path.relpath(os.path.join(directory, d), base),
                                                                  bf.excludes)]
                    for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
                        found.add(os.path.relpath(os.path.join(directory, name), base))
            else:
                found.add(os.path.relpath(match, base))
    files = sorted(rel for rel in found if not _excluded(rel, bf.excludes) and rel not in (MANIFEST, SIGNATURE))
    for rel in files:
        if clean_member_name(rel) != rel:
            raise BuildError("buildfile: %r is outside the buildfile's directory" % rel)
    return files


def _file_entry(path: str, mode: int) -> Entry:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return ("file", digest.hexdigest(), size, mode)


def _bytes_member(name: str, data: bytes, mtime: float) -> Tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(mtime)
    return info, io.BytesIO(data)


def _signed_extras(package: PackageName, entries: Dict[str, Entry], key_path: Optional[str], root: str,
                   mtime: float) -> List[Tuple[tarfile.TarInfo, io.BytesIO]]:
    manifest = build_manifest(package, entries)
    extras = [_bytes_member(os.path.join(root, MANIFEST), manifest, mtime)]
    if key_path:
        extras.append(_bytes_member(os.path.join(root, SIGNATURE), sign_manifest(manifest, load_private_key(key_path)),
                                    mtime))
    return extras


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_atomically(target: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(target), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as out:
                write(out)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def build_app(buildfile: str, output_dir: Optional[str] = None, key_path: Optional[str] = None) -> str:
    """Build the package a buildfile describes; returns the tarball's absolute path."""
    bf = load_buildfile(buildfile)
    base = bf.base
    env = dict(os.environ, GWE_APP_NAME=bf.package.name, GWE_APP_VERSION=bf.package.version)
    commands = BuildCommands()
    for cmd in bf.pre_build_cmds:
        commands.run(cmd, base, env)
    files = collect_files(bf)
    entries: Dict[str, Entry] = {}
    for rel in files:
        path = os.path.join(base, rel)
        if os.path.islink(path):
            target = os.readlink(path)
            if os.path.isabs(target) or not _inside(os.path.normpath(os.path.join(base, os.path.dirname(rel),
                                                                                   target)), base):
                raise BuildError("symlink %s points outside the package (%s); gateways would refuse it"
                                 % (rel, target))
            entries[rel] = ("link", target, 0, 0)
        else:
            mode = safe_mode(os.stat(path).st_mode | (0o111 if rel == INSTALL_SH else 0))
            entries[rel] = _file_entry(path, mode)
    try:
        find_layout([rel for rel, e in entries.items() if e[0] == "file"])
    except OtauError as exc:
        raise BuildError("buildfile %s: %s" % (buildfile, exc))
    target = os.path.join(os.path.abspath(output_dir or base), bf.package.filename)
    os.makedirs(os.path.dirname(target), exist_ok=True)

    def write(out: tarfile.TarFile) -> None:
        for info, data in _signed_extras(bf.package, entries, key_path, "", os.path.getmtime(buildfile)):
            out.addfile(info, data)
        for rel in files:
            path = os.path.join(base, rel)
            info = _normalise(out.gettarinfo(path, arcname=rel))
            if entries[rel][0] == "file":
                info.mode = entries[rel][3]
                with open(path, "rb") as f:
                    out.addfile(info, f)
            else:
                out.addfile(info)

    _write_atomically(target, write)
    env["GWE_BUILD_TARBALL"] = target
    for cmd in bf.post_build_cmds:
        commands.run(cmd, base, env)
    return target


def _scan(tarball: str) -> Tuple[Dict[str, Entry], List[str]]:
    """Hash every member of an existing package (streaming): archive path -> entry, plus all names."""
    entries: Dict[str, Entry] = {}
    names: List[str] = []
    try:
        with tarfile.open(tarball, mode="r|gz") as tf:
            for member in tf:
                rel = clean_member_name(member.name)
                if rel is None or member.isdir():
                    continue
                names.append(rel)
                if member.isreg():
                    digest = hashlib.sha256()
                    source = tf.extractfile(member)
                    for chunk in iter(functools.partial(source.read, CHUNK), b""):
                        digest.update(chunk)
                    entries[rel] = ("file", digest.hexdigest(), member.size, safe_mode(member.mode))
                elif member.issym():
                    entries[rel] = ("link", member.linkname, 0, 0)
                elif member.islnk():
                    entries[rel] = entries[clean_member_name(member.linkname) or ""]
                else:
                    raise BuildError("%s: cannot sign a package holding %r" % (tarball, rel))
    except (tarfile.TarError, EOFError, OSError, KeyError) as exc:
        raise BuildError("%s is not a readable package: %s" % (tarball, exc))
    return entries, names


def sign_tarball(tarball: str, key_path: str) -> str:
    """Add (or replace) the manifest and its signature in an existing package, in place."""
    package = parse_package_name(tarball)
    load_private_key(key_path)
    entries, _ = _scan(tarball)
    layout = find_layout([rel for rel, e in entries.items() if e[0] == "file"])
    prefix = layout.root + "/" if layout.root else ""
    skip = {prefix + MANIFEST, prefix + SIGNATURE}
    relative = {rel[len(prefix):]: e for rel, e in entries.items() if rel.startswith(prefix) and rel not in skip}
    extras = _signed_extras(package, relative, key_path, layout.root, os.path.getmtime(tarball))

    def write(out: tarfile.TarFile) -> None:
        for info, data in extras:
            out.addfile(info, data)
        with tarfile.open(tarball, mode="r|gz") as tf:
            for member in tf:
                if clean_member_name(member.name) in skip:
                    continue
                out.addfile(member, tf.extractfile(member) if member.isreg() else None)

    _write_atomically(os.path.abspath(tarball), write)
    return os.path.abspath(tarball)
