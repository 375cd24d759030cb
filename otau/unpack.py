"""Safe, streaming extraction of a package into a new directory.

tarfile's own extraction is not trusted (and ``filter=`` only exists from Python 3.12):
every member is checked and written here. Refused outright: absolute names, ``..``,
device files and fifos, sparse files, duplicates, symlinks or hard links that lead
outside the package, writes through a symlinked directory, and archives over the
member-count or unpacked-size limits (checked from each header before its data is
read, so a gzip bomb is stopped without inflating it), and pax or GNU long-name headers over
1 MiB (tarfile would read them whole into memory). Files are written with
O_EXCL|O_NOFOLLOW, hashed while written, stripped of setuid/setgid/sticky and
group/other write bits, and fsynced, so an unpacked version survives a power cut.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from typing import Dict, Optional, Set

from atomic_config import fsync_dir

from .errors import UnpackError
from .package import Layout, find_layout
from .verify import CHUNK, Entry


@dataclass(frozen=True)
class Unpacked:
    directory: str               # the package root, now at its final place
    layout: Layout
    entries: Dict[str, Entry]    # relative to the package root
    unpacked_bytes: int
    members: int


def clean_member_name(name: str) -> Optional[str]:
    """The member's path relative to the package, or None for the archive root itself."""
    if "\x00" in name:
        raise UnpackError("member name with a NUL byte")
    if name.startswith("/"):
        raise UnpackError("absolute path %r in archive" % name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnpackError("path traversal %r in archive" % name)
    return "/".join(parts) or None


def _check_no_symlinked_parent(root: str, rel: str, member: str) -> None:
    """Refuse ``member`` when a directory on the way to ``rel`` is a symlink or a file."""
    path = root
    for part in rel.split("/")[:-1]:
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise UnpackError("member %r would be written through the symlink %r" % (member, part))
        if not stat.S_ISDIR(st.st_mode):
            raise UnpackError("member %r is below the file %r" % (member, part))


def safe_mode(mode: int, is_dir: bool = False) -> int:
    """The mode an unpacked member gets: no setuid/setgid/sticky, no group/other write."""
    mode &= 0o755
    return mode | (0o700 if is_dir else 0o600)


MAX_METADATA_BYTES = 1 << 20
_METADATA_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                   tarfile.GNUTYPE_LONGLINK)


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads pax and GNU long-name headers whole into memory: cap them before it does."""

    def _proc_member(self, tarfile_obj):  # tarfile's own hook, stable from 3.9 to 3.13
        if self.type in _METADATA_TYPES and self.size > MAX_METADATA_BYTES:
            raise tarfile.HeaderError("a %d-byte metadata header (limit %d)" % (self.size, MAX_METADATA_BYTES))
        return super()._proc_member(tarfile_obj)


class _Extractor:
    def __init__(self, root: str, max_bytes: int, max_members: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.entries: Dict[str, Entry] = {}
        self.dirs: Set[str] = set()
        self.total = 0
        self.count = 0

    def _makedirs(self, rel: str, member: str) -> None:
        if not rel:
            return
        _check_no_symlinked_parent(self.root, rel + "/", member)
        path = os.path.join(self.root, rel)
        os.makedirs(path, mode=0o755, exist_ok=True)
        self.dirs.add(rel)

    def member(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > self.max_members:
            raise UnpackError("archive has more than %d members" % self.max_members)
        rel = clean_member_name(member.name)
        if rel is None:
            return
        if member.isdir():
            if rel in self.entries:
                raise UnpackError("duplicate member %r" % rel)
            self._makedirs(rel, rel)
            os.chmod(os.path.join(self.root, rel), safe_mode(member.mode, True))
            return
        if rel in self.entries or rel in self.dirs:
            raise UnpackError("duplicate member %r" % rel)
        self._makedirs(os.path.dirname(rel), rel)
        _check_no_symlinked_parent(self.root, rel, rel)
        if member.issparse():
            raise UnpackError("sparse file %r in archive" % rel)
        if member.isreg():
            self._file(tf, member, rel)
        elif member.issym():
            self._symlink(member, rel)
        elif member.islnk():
            self._hardlink(member, rel)
        elif member.ischr() or member.isblk():
            raise UnpackError("device file %r in archive" % rel)
        elif member.isfifo():
            raise UnpackError("fifo %r in archive" % rel)
        else:
            raise UnpackError("unsupported member type for %r" % rel)

    def _file(self, tf: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        self.total += member.size
        if self.total > self.max_bytes:
            raise UnpackError("archive unpacks to more than %d bytes" % self.max_bytes)
        path = os.path.join(self.root, rel)
        source = tf.extractfile(member)
        digest = hashlib.sha256()
        written = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            while True:
                chunk = source.read(CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                written += len(chunk)
            if written != member.size:
                raise UnpackError("member %r is truncated" % rel)
            mode = safe_mode(member.mode, False)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.entries[rel] = ("file", digest.hexdigest(), written, mode)

    def _symlink(self, member: tarfile.TarInfo, rel: str) -> None:
        target = member.linkname
        if not target or target.startswith("/") or "\x00" in target:
            raise UnpackError("symlink %r points to an absolute path %r" % (rel, target))
        resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
        if resolved == ".." or resolved.startswith("../"):
            raise UnpackError("symlink %r points outside the package (%r)" % (rel, target))
        os.symlink(target, os.path.join(self.root, rel))
        self.entries[rel] = ("link", target, 0, 0)

    def _hardlink(self, member: tarfile.TarInfo, rel: str) -> None:
        target = clean_member_name(member.linkname)
        source = self.entries.get(target or "")
        if source is None or source[0] != "file":
            raise UnpackError("hard link %r points outside the package or to no earlier file (%r)"
                              % (rel, member.linkname))
        os.link(os.path.join(self.root, target), os.path.join(self.root, rel))
        self.entries[rel] = source


def _check_links_inside(root: str, entries: Dict[str, Entry]) -> None:
    """Resolve every symlink on disk: chains like ``a -> .`` then ``b -> a/../x`` are caught here."""
    real_root = os.path.realpath(root)
    for rel, (kind, target, _, _) in entries.items():
        if kind != "link":
            continue
        real = os.path.realpath(os.path.join(root, rel))
        if real != real_root and not real.startswith(real_root + os.sep):
            raise UnpackError("symlink %r resolves outside the package (%r)" % (rel, target))


def _fsync_tree(root: str) -> None:
    for directory, _, _ in os.walk(root):
        fsync_dir(directory)


def unpack_package(tarball: str, staging: str, target: str, max_bytes: int, max_members: int) -> Unpacked:
    """Extract ``tarball`` into ``staging`` (must not exist), then move its root to ``target``.

    On any error both directories are removed and UnpackError (or PackageError for a bad
    layout) is raised; nothing is ever written outside them.
    """
    if os.path.lexists(target):
        raise UnpackError("%s already exists" % target)
    os.makedirs(staging, mode=0o755)
    extractor = _Extractor(staging, max_bytes, max_members)
    try:
        try:
            with tarfile.open(tarball, mode="r|gz", tarinfo=_BoundedTarInfo) as tf:
                for member in tf:
                    extractor.member(tf, member)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise UnpackError("corrupt archive: %s" % exc)
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise UnpackError("corrupt archive: %s" % exc)
        files = sorted(rel for rel, entry in extractor.entries.items() if entry[0] == "file")
        layout = find_layout(files)
        source = os.path.join(staging, layout.root) if layout.root else staging
        if layout.root and os.path.islink(source):
            raise UnpackError("top directory %r is a symlink" % layout.root)
        prefix = layout.root + "/" if layout.root else ""
        entries = {rel[len(prefix):]: e for rel, e in extractor.entries.items() if rel.startswith(prefix)}
        _fsync_tree(staging)
        os.rename(source, target)
        fsync_dir(os.path.dirname(target))
        _check_links_inside(target, entries)
    except BaseException:
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if layout.root:
        shutil.rmtree(staging, ignore_errors=True)
    return Unpacked(target, layout, entries, extractor.total, extractor.count)
