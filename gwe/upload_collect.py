"""Collecting and packing the files of an upload: globs matched inside the allowed roots only.

A pattern's literal part (up to its first wildcard) must resolve inside a root; the matching
walks down from there without following directory symlinks, so a link in a log directory
can neither widen the search nor send it round a loop. A file symlink is followed only if
its target is inside a root too, and every file is checked again once open (through
``/proc/self/fd``), so a path swapped after the check is not read. Only regular files are
read (a FIFO would block, a device would never end). The archive (tar, gzip by default,
with ``upload-manifest.json`` listing every file's size and sha256) is capped as it is
written: one byte over ``max_bytes`` and the whole upload fails, leaving nothing behind.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tarfile
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Dict, List, Optional, Tuple

from atomic_config import fsync_dir

from .upload_request import Roots

MANIFEST = "upload-manifest.json"
MAX_FILES = 10000
READ_BLOCK = 64 * 1024
_MAGIC = re.compile(r"[*?\[]")


class CollectError(Exception):
    """The files cannot be collected or packed as asked (for upload_status)."""


@dataclass
class Collected:
    files: List[Tuple[str, str, str]] = field(default_factory=list)  # (real path, root, name in the archive)
    skipped: List[Dict[str, str]] = field(default_factory=list)      # [{"path", "reason"}]
    missing: List[str] = field(default_factory=list)                 # patterns that matched nothing


@dataclass
class Packed:
    path: str
    size: int
    sha256: str
    files: List[dict]


def glob_regex(pattern: str) -> "re.Pattern[str]":
    """A path glob as a regex: ``*`` and ``?`` stay within one path component, ``**`` spans any."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append("[%s]" % body.replace("\\", "\\\\").replace("/", ""))
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _anchor(pattern: str, roots: Roots, base: str) -> Tuple[List[str], int, str, str]:
    """(parts, index of the first wildcard part, literal path, its real path); CollectError when the
    literal part (symlinks followed) is not inside a root."""
    full = os.path.normpath(pattern if os.path.isabs(pattern) else os.path.join(base, pattern))
    parts = full.split(os.sep)
    magic_at = next((i for i, p in enumerate(parts) if _MAGIC.search(p)), len(parts))
    literal = os.sep.join(parts[:magic_at]) or os.sep
    literal_real = os.path.realpath(literal)
    if roots.holding(literal_real) is None:
        raise CollectError("%s is outside the allowed roots (%s)" % (pattern, ", ".join(roots.paths)))
    return parts, magic_at, literal, literal_real


def check_patterns(patterns, roots: Roots, base: str) -> None:
    """Refuse (CollectError) a request naming anything outside the roots, before it is taken."""
    for pattern in patterns:
        _anchor(pattern, roots, base)


def collect(patterns, roots: Roots, base: str, home: str) -> Collected:
    """Match ``patterns`` (relative ones from ``base``) inside ``roots``; refuse any that reaches out."""
    found = Collected()
    seen = set()
    for pattern in patterns:
        parts, magic_at, literal, literal_real = _anchor(pattern, roots, base)
        matched = 0
        if magic_at == len(parts):  # a plain path: one file, or a whole directory
            if not os.path.lexists(literal):
                found.missing.append(pattern)
                continue
            candidates = [literal_real] if not os.path.isdir(literal_real) else _walk(literal_real, None)
        else:
            candidates = _walk(literal_real, glob_regex("/".join(parts[magic_at:])))
        for path in candidates:
            matched += 1
            real = os.path.realpath(path)
            if roots.holding(real) is None:
                found.skipped.append({"path": path, "reason": "a symlink leading out of the allowed roots"})
                continue
            if real in seen:
                continue
            try:
                mode = os.stat(real).st_mode
            except OSError as exc:
                found.skipped.append({"path": path, "reason": exc.strerror or str(exc)})
                continue
            if not stat.S_ISREG(mode):
                found.skipped.append({"path": path, "reason": "not a regular file"})
                continue
            seen.add(real)
            found.files.append((real, roots.holding(real), _member_name(path, home)))
            if len(found.files) > MAX_FILES:
                raise CollectError("more than %d files match" % MAX_FILES)
        if not matched:
            found.missing.append(pattern)
    if not found.files:
        raise CollectError("no file to upload: %s" % ("; ".join(
            ["%s matched nothing" % p for p in found.missing] + ["%s: %s" % (s["path"], s["reason"])
                                                                 for s in found.skipped])[:300] or "nothing matched"))
    return found


def _walk(top: str, regex: Optional["re.Pattern[str]"]) -> List[str]:
    """Files (and file symlinks) under ``top`` whose path relative to it matches ``regex`` (None: all)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, top)
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            rel = name if rel_dir == "." else rel_dir + "/" + name
            if regex is None or regex.match(rel):
                out.append(os.path.join(dirpath, name))
                if len(out) > MAX_FILES:
                    raise CollectError("more than %d files match under %s" % (MAX_FILES, top))
    return out


def _member_name(path: str, home: str) -> str:
    path = os.path.abspath(path)
    home = os.path.realpath(home)
    if home != os.sep and path.startswith(home + os.sep):
        return os.path.relpath(path, home)
    return path.lstrip(os.sep)


class _CappedWriter(io.RawIOBase):
    """The archive file: counts and hashes what tarfile writes, and stops it at the cap."""

    def __init__(self, out: BinaryIO, cap: int) -> None:
        self.out = out
        self.cap = cap
        self.size = 0
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.size += len(data)
        if self.size > self.cap:
            raise CollectError("the archive is over max_bytes (%d bytes)" % self.cap)
        self.digest.update(data)
        self.out.write(data)
        return len(data)


class _SnapshotReader:
    """Exactly ``size`` bytes of an open log file (which may grow or be truncated meanwhile)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.left = size
        self.digest = hashlib.sha256()
        self.short = False

    def read(self, n: int = READ_BLOCK) -> bytes:
        n = min(n if n >= 0 else self.left, self.left)
        chunks, got = [], 0
        while got < n:
            data = os.read(self.fd, n - got) if not self.short else b""
            if not data:  # truncated while read (a rotation): the rest is zeros, and the manifest says so
                self.short = True
                data = b"\0" * (n - got)
            chunks.append(data)
            got += len(data)
        data = b"".join(chunks)
        self.left -= len(data)
        self.digest.update(data)
        return data


def _open_checked(real: str, roots: Roots) -> Tuple[int, os.stat_result]:
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        opened = os.readlink("/proc/self/fd/%d" % fd) if os.path.exists("/proc/self/fd") else real
        if not stat.S_ISREG(st.st_mode) or roots.holding(opened) is None:
            raise CollectError("%s changed while being collected" % real)
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def pack(collected: Collected, roots: Roots, dest: str, max_bytes: int, compress: bool, about: dict) -> Packed:
    """Write the archive to ``dest`` (atomically, fsynced); CollectError if over ``max_bytes``."""
    tmp = dest + ".tmp"
    files: List[dict] = []
    try:
        with open(tmp, "wb") as out:
            writer = _CappedWriter(out, max_bytes)
            with tarfile.open(fileobj=writer, mode="w|gz" if compress else "w|", format=tarfile.PAX_FORMAT) as tar:
                for real, _root, name in collected.files:
                    try:
                        fd, st = _open_checked(real, roots)
                    except OSError as exc:
                        collected.skipped.append({"path": real, "reason": exc.strerror or str(exc)})
                        continue
                    try:
                        info = tarfile.TarInfo(name)
                        info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
                        reader = _SnapshotReader(fd, st.st_size)
                        tar.addfile(info, reader)
                    finally:
                        os.close(fd)
                    entry = {"name": name, "size": st.st_size, "mtime": int(st.st_mtime),
                             "sha256": reader.digest.hexdigest()}
                    if reader.short:
                        entry["truncated_while_read"] = True
                    files.append(entry)
                if not files:
                    raise CollectError("no file could be read: %s" % "; ".join(
                        "%s: %s" % (s["path"], s["reason"]) for s in collected.skipped)[:300])
                manifest = json.dumps(dict(about, files=files, skipped=collected.skipped, missing=collected.missing,
                                           created=time.time()), indent=1, sort_keys=True).encode("utf-8")
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mtime, info.mode = len(manifest), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(manifest))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
        fsync_dir(os.path.dirname(os.path.abspath(dest)))
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return Packed(dest, writer.size, writer.digest.hexdigest(), files)
