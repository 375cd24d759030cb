"""A power-loss filesystem for the reliability lab (FUSE, on mfusepy and libfuse3).

It passes every operation through to a backing directory, so the mounted tree behaves like a
normal filesystem, and keeps aside what a disk would not yet hold if the power went now:

- file data until ``fsync``/``fdatasync`` of that file: before the first change of a page of
  the durable content, that page is saved (and the durable size remembered);
- directory entries (create, mkdir, link, symlink, unlink, rmdir, rename) until ``fsync`` of
  the directory: before its first change, the directory's durable listing (name -> inode) is
  saved; an unlinked inode is kept alive by a hard link in a side directory (limbo), so a
  reverted entry can bring it back with its durable data. A rename is one operation of both
  directories, made durable by an ``fsync`` of either (as a journalling filesystem commits it).

``cut`` (over the control socket) is the power cut: from that instant every operation fails
with EIO, then the backing directory is rebuilt from the durable state, optionally keeping a
random prefix of the operations not yet synced (a disk that wrote some of its queue, in order),
and tearing the next write at a 512-byte boundary. Then the daemon exits and the tree can be
mounted again on what survived.

Not simulated: a disk's own volatile cache (an fsync here is final), sectors torn below the
filesystem other than by ``tear``, metadata-only changes (chmod, chown, utimes are durable at
once), reordering of unsynced writes (``prefix`` keeps them in issue order).

sqlite on this filesystem: WAL mode works as on a disk. The ``-shm`` wal-index is mmapped
MAP_SHARED, which FUSE allows only with the page cache on (so no ``direct_io``); sqlite never
fsyncs it and rebuilds it from the WAL when the first connection opens the database, so its
unsynced writes being thrown away is what sqlite expects. POSIX locks are left to the kernel
(no ``lock`` operation), which is correct for processes of one machine.

Run: ``python tests/powerloss_fs.py BACKING MOUNTPOINT --control SOCKET``; the test side is
``PowerLossMount`` below.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

PAGE = 4096
SECTOR = 512
LOG_CAP_BYTES = 64 << 20  # unsynced operations remembered for ``prefix`` (older ones are still undone)


class _FileState:
    """What of one inode's data is durable: its size and the durable content of changed pages."""

    __slots__ = ("size", "pages")

    def __init__(self, size: int) -> None:
        self.size = size
        self.pages: Dict[int, bytes] = {}


class PowerLossState:
    """The bookkeeping, independent of FUSE (so it can be tested and reasoned about alone)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.limbo = self.root + ".limbo"
        shutil.rmtree(self.limbo, ignore_errors=True)
        os.mkdir(self.limbo, 0o700)
        self.lock = threading.RLock()
        self.files: Dict[int, _FileState] = {}
        self.dirs: Dict[int, Dict[str, int]] = {}      # dirty directory inode -> durable listing
        self.pending: Dict[Tuple[str, int], List[int]] = {}  # ("d"/"f", inode) -> seqs of its unsynced ops
        self.ops: Dict[int, tuple] = {}                 # seq -> operation
        self.seq = 0
        self.log_bytes = 0
        self.in_limbo: set = set()
        self.frozen = False
        self.stats = {"writes": 0, "fsyncs": 0, "dir_fsyncs": 0, "dir_ops": 0}

    # -- paths and inodes
    def real(self, path: str) -> str:
        return self.root + path

    def ino(self, path: str) -> int:
        return os.lstat(self.real(path)).st_ino

    def check(self) -> None:
        if self.frozen:
            raise OSError(errno.EIO, "power cut")

    # -- the operation log (for ``prefix``)
    def _log(self, keys: List[Tuple[str, int]], op: tuple, nbytes: int = 0) -> None:
        if self.log_bytes + nbytes > LOG_CAP_BYTES:
            return
        self.seq += 1
        self.ops[self.seq] = op
        self.log_bytes += nbytes
        for key in keys:
            self.pending.setdefault(key, []).append(self.seq)

    def _forget(self, key: Tuple[str, int]) -> List[int]:
        seqs = self.pending.pop(key, [])
        for s in seqs:
            op = self.ops.get(s)
            if op is not None and op[0] == "write":
                self.log_bytes -= len(op[3])
        return seqs

    # -- file data
    def file_state(self, ino: int, fd: int) -> _FileState:
        st = self.files.get(ino)
        if st is None:
            st = self.files[ino] = _FileState(os.fstat(fd).st_size)
        return st

    def new_file(self, ino: int) -> None:
        self.files[ino] = _FileState(0)
        self._forget(("f", ino))

    def _save_pages(self, st: _FileState, fd: int, start: int, end: int) -> None:
        end = min(end, st.size)
        for page in range(start // PAGE, (end + PAGE - 1) // PAGE):
            if page not in st.pages:
                st.pages[page] = os.pread(fd, min(PAGE, st.size - page * PAGE), page * PAGE)

    def write(self, fd: int, data: bytes, offset: int) -> int:
        ino = os.fstat(fd).st_ino
        st = self.file_state(ino, fd)
        self._save_pages(st, fd, offset, offset + len(data))
        self._log([("f", ino)], ("write", ino, offset, bytes(data)), len(data))
        self.stats["writes"] += 1
        return os.pwrite(fd, data, offset)

    def truncate(self, fd: int, length: int) -> None:
        ino = os.fstat(fd).st_ino
        st = self.file_state(ino, fd)
        self._save_pages(st, fd, length - length % PAGE, os.fstat(fd).st_size)
        self._log([("f", ino)], ("truncate", ino, length))
        os.ftruncate(fd, length)

    def fsync(self, fd: int, datasync: bool) -> None:  # fdatasync: the same here
        # bookkeeping only: the backing disk's own durability is not under test (the host stays up)
        ino = os.fstat(fd).st_ino
        self.files.pop(ino, None)
        for s in self._forget(("f", ino)):
            self.ops.pop(s, None)
        self.stats["fsyncs"] += 1

    # -- directories
    def _listing(self, dir_real: str) -> Dict[str, int]:
        return {e.name: e.inode() for e in os.scandir(dir_real)}

    def touch_dir(self, dir_path: str) -> int:
        """Before a change to a directory's entries: save its durable listing if not yet saved."""
        dino = self.ino(dir_path)
        if dino not in self.dirs:
            self.dirs[dino] = self._listing(self.real(dir_path))
        return dino

    def new_dir(self, ino: int) -> None:
        self.dirs[ino] = {}
        self._forget(("d", ino))

    def dir_op(self, dinos: List[int], op: tuple) -> None:
        self._log([("d", d) for d in dinos], op)
        self.stats["dir_ops"] += 1

    def to_limbo(self, real_path: str) -> None:
        """Keep an inode that is losing a name reachable, so a cut can give the name back."""
        st = os.lstat(real_path)
        dst = os.path.join(self.limbo, str(st.st_ino))
        if st.st_ino in self.in_limbo:
            if stat.S_ISDIR(st.st_mode):  # a directory removed again after coming back
                os.rmdir(real_path)
            return
        if stat.S_ISDIR(st.st_mode):
            os.rename(real_path, dst)
        else:
            os.link(real_path, dst, follow_symlinks=False)
        self.in_limbo.add(st.st_ino)

    def fsyncdir(self, dir_path: str) -> None:
        dino = self.ino(dir_path)
        self.stats["dir_fsyncs"] += 1
        if dino not in self.dirs:
            return
        for s in self._forget(("d", dino)):
            op = self.ops.pop(s, None)
            if op is None:
                continue
            # a rename's other side becomes durable too (one journal transaction)
            for other in (op[1], op[3]) if op[0] == "rename" else ():
                if other != dino and other in self.dirs:
                    self._apply_dir_op(self.dirs, op, only=other)
                    seqs = self.pending.get(("d", other), [])
                    if s in seqs:
                        seqs.remove(s)
        del self.dirs[dino]
        if len(self.in_limbo) > 512:
            self._collect_limbo()

    @staticmethod
    def _apply_dir_op(maps: Dict[int, Dict[str, int]], op: tuple, only: Optional[int] = None) -> None:
        kind = op[0]
        if kind == "link":  # ("link", dir, name, ino)
            if only in (None, op[1]) and op[1] in maps:
                maps[op[1]][op[2]] = op[3]
        elif kind == "unlink":  # ("unlink", dir, name)
            if only in (None, op[1]) and op[1] in maps:
                maps[op[1]].pop(op[2], None)
        elif kind == "rename":  # ("rename", src_dir, src_name, dst_dir, dst_name, ino)
            if only in (None, op[1]) and op[1] in maps:
                maps[op[1]].pop(op[2], None)
            if only in (None, op[3]) and op[3] in maps:
                maps[op[3]][op[4]] = op[5]

    def _referenced(self) -> set:
        refs = set()
        for listing in self.dirs.values():
            refs.update(listing.values())
        for op in self.ops.values():
            if op[0] in ("link", "rename"):
                refs.add(op[-1])
        return refs

    def _collect_limbo(self) -> None:
        refs = self._referenced()
        for ino in list(self.in_limbo):
            if ino in refs:
                continue
            path = os.path.join(self.limbo, str(ino))
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            if st.st_nlink <= 1:
                self.files.pop(ino, None)
            self.in_limbo.discard(ino)

    def sync_all(self) -> None:
        """Everything durable now, as sync(2) and a quiet minute would make it (test set-up)."""
        with self.lock:
            self.files.clear()
            self.dirs.clear()
            self.pending.clear()
            self.ops.clear()
            self.log_bytes = 0
            self._collect_limbo()

    # -- the power cut
    def sync(self) -> None:
        """Make everything durable (sync(2)): for test set-up that is not under test."""
        self._command({"cmd": "sync"})

    def cut(self, keep: str = "none", tear: bool = False, seed: Optional[int] = None) -> dict:
        """Freeze, then rebuild the backing directory as a disk would hold it now."""
        with self.lock:
            self.frozen = True
            rng = random.Random(seed)
            where = self._where()
            durable = {d: dict(listing) for d, listing in self.dirs.items()}
            seqs = sorted(s for s in self.ops)
            kept = rng.randint(0, len(seqs)) if keep == "prefix" else 0
            report = {"unsynced_ops": len(seqs), "kept_ops": kept, "torn": False,
                      "reverted_files": 0, "reverted_dirs": len(durable)}
            replay = [self.ops[s] for s in seqs[:kept]]
            for op in replay:
                self._apply_dir_op(durable, op)
            # file data: back to durable, then the kept prefix (and a torn next write)
            for ino, st in self.files.items():
                path = where.get(ino)
                if path is None or not os.path.isfile(path) or os.path.islink(path):
                    continue
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, st.size)
                    for page, data in st.pages.items():
                        os.pwrite(fd, data, page * PAGE)
                finally:
                    os.close(fd)
                report["reverted_files"] += 1
            for op in replay:
                self._replay_data(where, op)
            if tear and kept < len(seqs):
                report["torn"] = self._replay_data(where, self.ops[seqs[kept]], rng)
            self._materialize(where, durable)
            return report

    @staticmethod
    def _replay_data(where: Dict[int, str], op: tuple, torn_by: Optional[random.Random] = None) -> bool:
        """Apply one logged data operation to its inode; with ``torn_by``, only a part of a write
        that ends at a random 512-byte boundary inside it (False when there is none)."""
        if op[0] not in ("write", "truncate") or where.get(op[1]) is None:
            return False
        data = b""
        if op[0] == "write":
            offset, data = op[2], op[3]
            if torn_by is not None:
                bounds = list(range(offset - offset % SECTOR + SECTOR, offset + len(data), SECTOR))
                if not bounds:
                    return False
                data = data[:torn_by.choice(bounds) - offset]
        elif torn_by is not None:
            return False
        fd = os.open(where[op[1]], os.O_WRONLY)
        try:
            if op[0] == "truncate":
                os.ftruncate(fd, op[2])
            else:
                os.pwrite(fd, data, op[2])
        finally:
            os.close(fd)
        return True

    def _where(self) -> Dict[int, str]:
        """Every inode's current backing path (the live tree first, then limbo)."""
        where: Dict[int, str] = {}
        for top in (self.root, self.limbo):
            where.setdefault(os.lstat(top).st_ino, top)
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    path = os.path.join(dirpath, name)
                    where.setdefault(os.lstat(path).st_ino, path)
        return where

    def _materialize(self, where: Dict[int, str], durable: Dict[int, Dict[str, int]]) -> None:
        new_root = self.root + ".cut"
        shutil.rmtree(new_root, ignore_errors=True)
        os.mkdir(new_root)
        shutil.copymode(self.root, new_root)
        visited = set()

        def build(dir_ino: int, src: str, dst: str) -> None:
            visited.add(dir_ino)
            listing = durable[dir_ino] if dir_ino in durable else self._listing(src)
            for name, ino in sorted(listing.items()):
                path = where.get(ino)
                if path is None:
                    continue
                target = os.path.join(dst, name)
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    if ino in visited:
                        continue
                    os.mkdir(target)
                    os.chmod(target, stat.S_IMODE(st.st_mode))
                    os.chown(target, st.st_uid, st.st_gid)
                    build(ino, path, target)
                else:
                    os.link(path, target, follow_symlinks=False)

        build(os.lstat(self.root).st_ino, self.root, new_root)
        old = self.root + ".old"
        os.rename(self.root, old)
        os.rename(new_root, self.root)
        shutil.rmtree(old)
        shutil.rmtree(self.limbo)


def _backing_flags(flags: int) -> int:
    """The kernel gives offsets for appends (pwrite with O_APPEND would ignore them); the durable
    content of a page must be readable before a write-only handle changes it."""
    flags &= ~(os.O_APPEND | os.O_TRUNC | os.O_CREAT | os.O_EXCL)
    return (flags & ~os.O_ACCMODE) | os.O_RDWR if flags & os.O_ACCMODE == os.O_WRONLY else flags


def _operations(state: PowerLossState):
    """The FUSE operations over ``state`` (mfusepy imported here: the state needs no libfuse)."""
    import mfusepy as fuse

    def guarded(method):
        def wrapper(self, *args):
            with state.lock:
                state.check()
                try:
                    return method(self, *args)
                except OSError as exc:
                    raise fuse.FuseOSError(exc.errno or errno.EIO)
        wrapper.__name__ = method.__name__
        return wrapper

    class PowerLossOps(fuse.Operations):
        use_ns = True

        @guarded
        def getattr(self, path, fh=None):
            st = os.fstat(fh) if fh is not None else os.lstat(state.real(path))
            attrs = {k: getattr(st, k) for k in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size",
                                                 "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blocks")}
            for k in ("st_atime", "st_mtime", "st_ctime"):
                attrs[k] = attrs.pop(k + "_ns")
            if st.st_ino in state.in_limbo and not stat.S_ISDIR(st.st_mode):
                attrs["st_nlink"] -= 1
            return attrs

        @guarded
        def access(self, path, amode):
            if not os.access(state.real(path), amode):
                raise OSError(errno.EACCES, path)
            return 0

        @guarded
        def readlink(self, path):
            return os.readlink(state.real(path))

        @guarded
        def opendir(self, path):
            return 0

        @guarded
        def readdir(self, path, fh):
            # with use_ino, an entry needs its inode number (readdir(3) skips d_ino 0)
            entries = [(e.name, {"st_ino": e.inode(), "st_mode": e.stat(follow_symlinks=False).st_mode}, 0)
                       for e in os.scandir(state.real(path))]
            return [".", ".."] + entries

        @guarded
        def statfs(self, path):
            sv = os.statvfs(state.real(path))
            return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                                "f_files", "f_flag", "f_frsize", "f_namemax")}

        @guarded
        def open(self, path, flags):
            fd = os.open(state.real(path), _backing_flags(flags))
            if flags & os.O_TRUNC:
                state.truncate(fd, 0)
            return fd

        @guarded
        def create(self, path, mode, flags=os.O_WRONLY):
            if os.path.lexists(state.real(path)):
                if flags & os.O_EXCL:
                    raise OSError(errno.EEXIST, path)
                return self.open(path, flags)
            parent, name = os.path.split(path)
            dino = state.touch_dir(parent)
            fd = os.open(state.real(path), _backing_flags(flags) | os.O_CREAT | os.O_EXCL, mode)
            ino = os.fstat(fd).st_ino
            state.new_file(ino)
            state.dir_op([dino], ("link", dino, name, ino))
            return fd

        @guarded
        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        @guarded
        def write(self, path, data, offset, fh):
            return state.write(fh, data, offset)

        @guarded
        def truncate(self, path, length, fh=None):
            if fh is not None:
                state.truncate(fh, length)
                return 0
            fd = os.open(state.real(path), os.O_RDWR)
            try:
                state.truncate(fd, length)
            finally:
                os.close(fd)
            return 0

        @guarded
        def fsync(self, path, datasync, fh):
            state.fsync(fh, bool(datasync))
            return 0

        @guarded
        def fsyncdir(self, path, datasync, fh):
            state.fsyncdir(path)
            return 0

        @guarded
        def flush(self, path, fh):
            return 0

        def release(self, path, fh):
            os.close(fh)
            return 0

        def releasedir(self, path, fh):
            return 0

        @guarded
        def mkdir(self, path, mode):
            parent, name = os.path.split(path)
            dino = state.touch_dir(parent)
            os.mkdir(state.real(path), mode)
            ino = state.ino(path)
            state.new_dir(ino)
            state.dir_op([dino], ("link", dino, name, ino))
            return 0

        @guarded
        def mknod(self, path, mode, dev):
            parent, name = os.path.split(path)
            dino = state.touch_dir(parent)
            os.mknod(state.real(path), mode, dev)
            state.dir_op([dino], ("link", dino, name, state.ino(path)))
            return 0

        @guarded
        def symlink(self, target, source):
            parent, name = os.path.split(target)
            dino = state.touch_dir(parent)
            os.symlink(source, state.real(target))
            state.dir_op([dino], ("link", dino, name, state.ino(target)))
            return 0

        @guarded
        def link(self, target, source):
            parent, name = os.path.split(target)
            dino = state.touch_dir(parent)
            os.link(state.real(source), state.real(target))
            state.dir_op([dino], ("link", dino, name, state.ino(target)))
            return 0

        @guarded
        def unlink(self, path):
            parent, name = os.path.split(path)
            dino = state.touch_dir(parent)
            state.to_limbo(state.real(path))
            if os.path.lexists(state.real(path)):
                os.unlink(state.real(path))
            state.dir_op([dino], ("unlink", dino, name))
            return 0

        @guarded
        def rmdir(self, path):
            if os.listdir(state.real(path)):
                raise OSError(errno.ENOTEMPTY, path)
            parent, name = os.path.split(path)
            dino = state.touch_dir(parent)
            state.to_limbo(state.real(path))
            state.dir_op([dino], ("unlink", dino, name))
            return 0

        @guarded
        def rename(self, old, new):
            (op, on), (np_, nn) = os.path.split(old), os.path.split(new)
            src_dino, dst_dino = state.touch_dir(op), state.touch_dir(np_)
            ino = state.ino(old)
            dst = state.real(new)
            if os.path.lexists(dst):
                if stat.S_ISDIR(os.lstat(dst).st_mode):
                    if os.listdir(dst):
                        raise OSError(errno.ENOTEMPTY, new)
                    state.to_limbo(dst)
                else:
                    state.to_limbo(dst)
            os.rename(state.real(old), dst)
            state.dir_op([src_dino, dst_dino], ("rename", src_dino, on, dst_dino, nn, ino))
            return 0

        @guarded
        def chmod(self, path, mode, fh=None):
            os.chmod(fh if fh is not None else state.real(path), mode)
            return 0

        @guarded
        def chown(self, path, uid, gid, fh=None):
            os.chown(fh if fh is not None else state.real(path), uid, gid, follow_symlinks=False)
            return 0

        @guarded
        def utimens(self, path, times=None, fh=None):
            target = fh if fh is not None else state.real(path)
            if times is None:
                os.utime(target)
            else:
                os.utime(target, ns=times)
            return 0

    return PowerLossOps()


def _serve_control(state: PowerLossState, sock_path: str) -> None:
    """One JSON command per connection: {"cmd": "cut", "keep", "tear", "seed"}, {"cmd": "sync"} or
    {"cmd": "stats"}."""
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(4)
    while True:
        conn, _ = server.accept()
        with conn:
            request = json.loads(conn.makefile().readline())
            if request["cmd"] == "cut":
                answer = state.cut(request.get("keep", "none"), bool(request.get("tear")), request.get("seed"))
            elif request["cmd"] == "sync":
                state.sync_all()
                answer = {"synced": True}
            else:
                with state.lock:
                    answer = dict(state.stats, unsynced_ops=len(state.ops), dirty_files=len(state.files),
                                  dirty_dirs=len(state.dirs), frozen=state.frozen)
            conn.sendall(json.dumps(answer).encode() + b"\n")
            if request["cmd"] == "cut":
                os.kill(os.getpid(), signal.SIGTERM)  # fuse_main unmounts and returns


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--control", required=True, help="unix socket for cut/stats commands")
    args = parser.parse_args(argv)
    import mfusepy as fuse

    state = PowerLossState(args.backing)
    threading.Thread(target=_serve_control, args=(state, args.control), daemon=True).start()
    # without hard_remove, libfuse renames a file unlinked while open to .fuse_hidden* (our rename and
    # unlink ops) and keeps its path, which mfusepy needs for truncate/chmod with a file handle
    fuse.FUSE(_operations(state), args.mountpoint, foreground=True, use_ino=True,
              fsname="powerloss", subtype="powerloss", default_permissions=True, allow_other=True)
    return 0


# -- the test side --------------------------------------------------------------------------------

def fuse_available() -> Optional[str]:
    """None if a power-loss filesystem can be mounted here, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import mfusepy  # noqa: F401  (loads libfuse)
    except (ImportError, OSError, EnvironmentError) as exc:
        return "mfusepy/libfuse: %s" % exc
    return None


class PowerLossMount:
    """A power-loss filesystem mounted at ``mountpoint`` over ``backing`` (a daemon subprocess).

    ``cut()`` is the power cut (the daemon rebuilds the backing directory and unmounts);
    ``mount()`` again starts a fresh daemon on what survived.
    """

    def __init__(self, backing: str, mountpoint: str) -> None:
        self.backing, self.mountpoint = os.path.abspath(backing), os.path.abspath(mountpoint)
        self.control = self.backing + ".ctl"
        self.log = self.backing + ".log"
        self.proc: Optional[subprocess.Popen] = None
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)

    def mount(self, timeout: float = 20.0, attempts: int = 3) -> "PowerLossMount":
        """Start the daemon and wait for the mount. On a loaded machine the lazy unmount of the
        previous daemon can still be in progress, and libfuse then exits at once: try again."""
        for attempt in range(attempts):
            if os.path.exists(self.control):
                os.unlink(self.control)  # the previous daemon's; the new one makes its own
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), self.backing,
                                              self.mountpoint, "--control", self.control], stdout=log, stderr=log)
            deadline = time.monotonic() + timeout
            while not (self._in_mount_table() and os.path.exists(self.control)):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            else:
                return self
            self.unmount()
            time.sleep(0.5 * (attempt + 1))
        raise RuntimeError("power-loss filesystem did not mount (log %s): %s" % (self.log, self._log_tail()))

    def internal_errors(self) -> List[str]:
        """Operations that failed inside the filesystem itself (a bug of the lab, not of the code
        under test): mfusepy logs them and answers EINVAL."""
        if not os.path.exists(self.log):
            return []
        with open(self.log, errors="replace") as f:
            return [line.strip() for line in f if "Uncaught exception" in line or "critical exception" in line]

    def _log_tail(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-2000:]

    def _command(self, request: dict, timeout: float = 120.0) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.control)
            s.sendall(json.dumps(request).encode() + b"\n")
            return json.loads(s.makefile().readline())

    def stats(self) -> dict:
        return self._command({"cmd": "stats"})

    def sync(self) -> None:
        """Make everything durable (sync(2)): for test set-up that is not under test."""
        self._command({"cmd": "sync"})

    def cut(self, keep: str = "none", tear: bool = False, seed: Optional[int] = None) -> dict:
        """Power cut now; returns what was thrown away. Processes using the mount get EIO from
        now on (kill them), and the filesystem is unmounted."""
        report = self._command({"cmd": "cut", "keep": keep, "tear": tear, "seed": seed})
        self.unmount()
        return report

    def unmount(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            self.proc = None
        # a daemon that exited while a file was open leaves a dead mount (ENOTCONN), which
        # os.path.ismount does not see: ask the kernel's table, and detach every layer
        for _ in range(5):
            if not self._in_mount_table():
                break
            subprocess.run(["umount", "-l", self.mountpoint], check=False, stderr=subprocess.DEVNULL)

    def _in_mount_table(self) -> bool:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == self.mountpoint for line in f if len(line.split()) > 1)


if __name__ == "__main__":
    sys.exit(main())
