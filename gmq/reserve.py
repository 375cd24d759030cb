"""A preallocated file that keeps room on the queue's filesystem for the writes that free it.

A 100 % full disk must not stop the drain that would empty the queue: every delivery is
recorded (marks, deletes, counters: WAL frames, and a checkpoint that may grow gmq.db by the
WAL's new pages), and sqlite needs room for its -wal and -shm to open the database at all.
The reserve holds that room while the disk fills: a write of deliveries that finds the disk
full releases it and runs again. While it is released new values are refused (507); it is
taken back once the filesystem has room for it again.
"""
from __future__ import annotations

import errno
import logging
import os

log = logging.getLogger(__name__)

# a WAL at its automatic checkpoint (1000 pages of 4 KiB, every one of them perhaps a new page
# gmq.db grows by when it is checkpointed), the 32 KiB -shm, and a few deliveries' frames
RESERVE_BYTES = 4 * 1024 * 1024 + 256 * 1024
SUFFIX = ".reserve"


class DiskReserve:
    """``path``, a file of ``size`` allocated bytes (held), or nothing (released)."""

    def __init__(self, path: str, size: int = RESERVE_BYTES) -> None:
        self.path = path
        self.size = size
        self.held = self._on_disk()
        _unlink(path + ".tmp")  # a take() cut short by a crash

    def _on_disk(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return st.st_size == self.size and st.st_blocks * 512 >= self.size  # allocated, not a sparse file

    def take(self) -> bool:
        """Allocate the reserve; False if the filesystem has no room for it (nothing kept)."""
        if self.held:
            return True
        tmp = self.path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, self.size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise  # ENOSPC: no room
                    _write_zeros(fd, self.size)  # a filesystem without fallocate (vfat)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except OSError as exc:
            _unlink(tmp)
            log.debug("no room for the %d-byte disk reserve: %s", self.size, exc)
            return False
        self.held = True
        return True

    def release(self) -> bool:
        """Free the reserve's space; False if it was not held."""
        if not self.held:
            return False
        _unlink(self.path)
        self.held = False
        return True


def _write_zeros(fd: int, size: int) -> None:
    chunk = b"\0" * 65536
    for offset in range(0, size, len(chunk)):
        os.pwrite(fd, chunk[:size - offset], offset)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
