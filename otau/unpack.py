"""Safe, streaming extraction of a package into a new directory.

tarfile's own extraction is not trusted (and ``filter=`` only exists from Python 3.12):
every member is checked and written here. Refused outright: absolute names, ``..``,
device files and fifos, sparse files, duplicates, symlinks or hard links that lead
outside the package, writes through a symlinked directory, and archives over the
member-count or unpacked-size limits (checked from each header before its data is
read, so a gzip bomb is stopped without inflating it), and pax or GNU long-name headers over
1 MiB (tarfile would read them whole into memory). The manifest and its signature must lead
the archive: they are decided on (signature policy, :mod:`otau.verify`) before anything else is
written, and every later member is checked against the manifest as it streams. Files are written with
O_EXCL|O_NOFOLLOW, hashed while written, stripped of setuid/setgid/sticky and
group/other write bits, and fsynced, so an unpacked version survives a power cut.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Dict, List, Optional, Set

from atomic_config import free_disk, fsync_dir

from .errors import UnpackError, VerifyError
from .package import MANIFEST, SIGNATURE, Layout, find_layout
from .verify import CHUNK, Entry, ManifestGate


@dataclass(frozen=True)
class Unpacked:
    directory: str               # the package root, now at its final place
    layout: Layout
    entries: Dict[str, Entry]    # relative to the package root, manifest and signature left out
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
    """tarfile reads pax and GNU long-name headers whole into memory: cap them before it does.

    ``frombuf`` (public) builds each header from its 512-byte block, before its data is read.
    """

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        info = super().frombuf(buf, encoding, errors)
        if info.type in _METADATA_TYPES and info.size > MAX_METADATA_BYTES:
            raise tarfile.HeaderError("a %d-byte metadata header (limit %d)" % (info.size, MAX_METADATA_BYTES))
        return info


MAX_MANIFEST_BYTES = 16 << 20
MAX_SIGNATURE_BYTES = 4096
# Decides on the package's head (manifest and signature bytes, or None) before anything is written:
# raises to refuse it, returns the gate every member is then checked against (or None: no manifest).
HeadCheck = Callable[[Optional[bytes], Optional[bytes]], Optional[ManifestGate]]


class _Extractor:
    """Writes members one by one. The manifest and its signature must lead the archive: they are
    held in memory, and ``head_check`` decides on them before the first other member (or the
    first directory) is written. From then on every member is checked against the manifest:
    kind, size and mode from its header before its data is read, sha256 right after."""

    def __init__(self, root: str, max_bytes: int, max_members: int, head_check: Optional[HeadCheck],
                 min_free: int = 0) -> None:
        self.root = root
        self.min_free = min_free
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.head_check = head_check
        self.decided = head_check is None
        self.held: Dict[str, bytes] = {}         # manifest / signature, by archive path
        self.held_dirs: List[tarfile.TarInfo] = []
        self.gate: Optional[ManifestGate] = None
        self.prefix = ""                         # the package root in the archive, from the manifest's path
        self.entries: Dict[str, Entry] = {}
        self.dirs: Set[str] = set()
        self.total = 0
        self.count = 0

    def _head_member(self, member: tarfile.TarInfo, rel: str) -> bool:
        """Is this the manifest or its signature, at the top level or in a top directory?"""
        return member.isreg() and rel.count("/") <= 1 and os.path.basename(rel) in (MANIFEST, SIGNATURE)

    def _hold(self, tf: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        if rel in self.held:
            raise UnpackError("duplicate member %r" % rel)
        limit = MAX_MANIFEST_BYTES if rel.endswith(MANIFEST) else MAX_SIGNATURE_BYTES
        if member.size > limit:
            raise VerifyError("%s is larger than %d bytes" % (rel, limit))
        data = tf.extractfile(member).read(limit + 1)
        if len(data) != member.size:
            raise UnpackError("member %r is truncated" % rel)
        self.total += len(data)
        self.held[rel] = data

    def decide(self) -> None:
        """Run the head check on what was held, then write the held members."""
        if self.decided:
            return
        self.decided = True
        roots = {os.path.dirname(rel) for rel in self.held}
        if len(roots) > 1:
            raise VerifyError("gwe-manifest.json and gwe-manifest.sig are in different directories")
        root = roots.pop() if roots else ""
        self.prefix = root + "/" if root else ""
        manifest = self.held.get(self.prefix + MANIFEST)
        self.gate = self.head_check(manifest, self.held.get(self.prefix + SIGNATURE))
        for member in self.held_dirs:
            self._directory(member, clean_member_name(member.name))
        for rel, data in self.held.items():
            self._makedirs(os.path.dirname(rel), rel)
            self._write(rel, io.BytesIO(data), len(data), 0o644)

    def member(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > self.max_members:
            raise UnpackError("archive has more than %d members" % self.max_members)
        rel = clean_member_name(member.name)
        if rel is None:
            return
        if not self.decided:
            if self._head_member(member, rel):
                self._hold(tf, member, rel)
                return
            if member.isdir():
                self.held_dirs.append(member)
                return
            self.decide()
        elif self._head_member(member, rel):
            raise VerifyError("%s comes after the package's files; it must lead the archive "
                              "(gwe --sign-tarball puts it there)" % rel)
        if member.isdir():
            self._directory(member, rel)
            return
        if rel in self.entries or rel in self.dirs:
            raise UnpackError("duplicate member %r" % rel)
        self._makedirs(os.path.dirname(rel), rel)
        _check_no_symlinked_parent(self.root, rel, rel)
        if member.issparse():
            raise UnpackError("sparse file %r in archive" % rel)
        if member.isreg():
            self._expect(rel, "file", member.size, safe_mode(member.mode))
            self.total += member.size
            if self.total > self.max_bytes:
                raise UnpackError("archive unpacks to more than %d bytes" % self.max_bytes)
            self._write(rel, tf.extractfile(member), member.size, member.mode)
        elif member.issym():
            self._expect(rel, "link", 0, 0, member.linkname)
            self._symlink(member, rel)
        elif member.islnk():
            self._hardlink(member, rel)
        elif member.ischr() or member.isblk():
            raise UnpackError("device file %r in archive" % rel)
        elif member.isfifo():
            raise UnpackError("fifo %r in archive" % rel)
        else:
            raise UnpackError("unsupported member type for %r" % rel)
        self._confirm(rel)

    def _package_path(self, rel: str) -> Optional[str]:
        """``rel`` relative to the package root, or None when it lies outside (refused with a manifest)."""
        if not self.prefix:
            return rel
        return rel[len(self.prefix):] if rel.startswith(self.prefix) else None

    def _expect(self, rel: str, kind: str, size: int, mode: int, link: str = "") -> None:
        if self.gate is None:
            return
        path = self._package_path(rel)
        if path is None:
            raise VerifyError("%s is outside the manifest's directory" % rel)
        self.gate.expect(path, kind, size, mode, link)

    def _confirm(self, rel: str) -> None:
        if self.gate is not None:
            self.gate.confirm(self._package_path(rel), self.entries[rel])

    def _directory(self, member: tarfile.TarInfo, rel: str) -> None:
        if rel in self.entries:
            raise UnpackError("duplicate member %r" % rel)
        self._makedirs(rel, rel)
        os.chmod(os.path.join(self.root, rel), safe_mode(member.mode, True))

    def _makedirs(self, rel: str, member: str) -> None:
        if not rel:
            return
        _check_no_symlinked_parent(self.root, rel + "/", member)
        path = os.path.join(self.root, rel)
        os.makedirs(path, mode=0o755, exist_ok=True)
        self.dirs.add(rel)

    def _write(self, rel: str, source: BinaryIO, size: int, member_mode: int) -> None:
        if self.min_free:
            free = free_disk(self.root)
            if free - size < self.min_free:
                raise UnpackError("unpacking %s (%d bytes) would leave %d bytes free, below the disk reserve of %d "
                                  "bytes" % (rel, size, max(0, free - size), self.min_free))
        path = os.path.join(self.root, rel)
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
            if written != size:
                raise UnpackError("member %r is truncated" % rel)
            mode = safe_mode(member_mode, False)
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


def unpack_package(tarball: str, staging: str, target: str, max_bytes: int, max_members: int,
                   head_check: Optional[HeadCheck] = None, min_free: int = 0) -> Unpacked:
    """Extract ``tarball`` into ``staging`` (must not exist), then move its root to ``target``.

    ``head_check`` decides on the manifest and signature before anything else is written
    (see :class:`_Extractor`); no file is written that would leave less than ``min_free`` bytes
    free on the filesystem. On any error both directories are removed and UnpackError
    (VerifyError, or PackageError for a bad layout) is raised; nothing is ever written outside them.
    """
    if os.path.lexists(target):
        raise UnpackError("%s already exists" % target)
    os.makedirs(staging, mode=0o755)
    extractor = _Extractor(staging, max_bytes, max_members, head_check, min_free)
    try:
        try:
            with tarfile.open(tarball, mode="r|gz", tarinfo=_BoundedTarInfo) as tf:
                for member in tf:
                    extractor.member(tf, member)
            extractor.decide()
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
        entries = {rel[len(prefix):]: e for rel, e in extractor.entries.items()
                   if rel.startswith(prefix) and rel[len(prefix):] not in (MANIFEST, SIGNATURE)}
        if extractor.gate is not None:
            if extractor.prefix != prefix:
                raise VerifyError("gwe-manifest.json is not in the package's top directory")
            extractor.gate.finish(entries)
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
