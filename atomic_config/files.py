"""Crash-safe whole-file replacement.

Every rewrite goes: temporary file in the target's directory -> write -> fsync ->
keep the current version as the previous generation (a hard link, so no copy) ->
rename over the target -> fsync the directory. After a crash or power cut the target
holds either the old or the new bytes; a target damaged by some other writer is
recovered from the previous generation on read.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import time
from typing import Callable, Optional, Union

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

TMP_MARK = ".atomic-"
TMP_SUFFIX = ".tmp"
PREV_SUFFIX = ".prev"
STALE_AGE_S = 3600.0


class RecoveryError(Exception):
    """The file and its previous generation are both unreadable."""


def previous_path(path: PathLike) -> str:
    """Where the previous generation of ``path`` is kept."""
    path = os.fspath(path)
    head, name = os.path.split(path)
    return os.path.join(head, "." + name + PREV_SUFFIX)


def _tmp_prefix(name: str) -> str:
    return "." + name + TMP_MARK


def fsync_dir(directory: PathLike) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(os.fspath(directory) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: PathLike, mode: int = 0o777) -> None:
    """``os.makedirs(path, mode, exist_ok=True)``, and each directory it creates made durable in
    its parent: without the parent's fsync a power cut can take a new directory back, and with
    it every file already fsynced inside (sqlite fsyncs only the directory holding its WAL)."""
    path = os.path.abspath(os.fspath(path))
    created = []
    probe = path
    while not os.path.isdir(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(path, mode=mode, exist_ok=True)
    for directory in reversed(created):
        fsync_dir(os.path.dirname(directory))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: PathLike) -> int:
    """Remove temporary files a crashed writer of ``path`` left in its directory.

    A temp file names the pid that made it; it is stale once that process is gone
    (or, against pid reuse, once it is older than an hour). Returns how many were removed.
    """
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    prefix = _tmp_prefix(name)
    removed = 0
    try:
        entries = os.listdir(directory)
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(TMP_SUFFIX)):
            continue
        full = os.path.join(directory, entry)
        try:
            pid = int(entry[len(prefix):].split(".", 1)[0])
        except ValueError:
            pid = -1
        try:
            old = now - os.lstat(full).st_mtime > STALE_AGE_S
        except FileNotFoundError:
            continue
        if pid == os.getpid() or (pid > 0 and _pid_alive(pid) and not old):
            continue
        try:
            os.unlink(full)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove stale temporary file %s: %s", full, exc)
    return removed


def _keep_previous(path: str, is_valid: Callable[[bytes], bool]) -> None:
    """Point the previous-generation name at the current target, if it is sound.

    A hard link, not a copy; a crash between unlink and link only loses the spare.
    """
    try:
        with open(path, "rb") as f:
            current = f.read()
    except FileNotFoundError:
        return
    if not current or not is_valid(current):
        return
    prev = previous_path(path)
    try:
        os.unlink(prev)
    except FileNotFoundError:
        pass
    try:
        os.link(path, prev)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
            raise
        _write_replace(prev, current, os.stat(path).st_mode & 0o7777, fsync_parent=False)


def _write_replace(path: str, data: bytes, mode: Optional[int], fsync_parent: bool = True,
                   before_replace: Optional[Callable[[], None]] = None) -> None:
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, "%s%d.%s%s" % (_tmp_prefix(name), os.getpid(), os.urandom(4).hex(), TMP_SUFFIX))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            existing = os.stat(path)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if os.geteuid() == 0:
                os.fchown(fd, existing.st_uid, existing.st_gid)
            os.fchmod(fd, stat.S_IMODE(existing.st_mode))
        elif mode is not None:
            os.fchmod(fd, mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if fsync_parent:
        fsync_dir(directory)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write(path: PathLike, data: Union[bytes, str], mode: Optional[int] = None,
                 keep_previous: bool = True,
                 is_valid: Callable[[bytes], bool] = lambda data: True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content.

    An existing file keeps its permissions (and owner, when run as root); a new file gets
    ``mode`` (default 0666 less the umask). With ``keep_previous`` the replaced version
    stays beside it as the previous generation, used by :func:`read_recovering`, but only
    when ``is_valid`` accepts it, so a damaged file never evicts a good generation.
    """
    path = os.path.abspath(os.fspath(path))
    if isinstance(data, str):
        data = data.encode("utf-8")
    remove_stale_temps(path)
    before = (lambda: _keep_previous(path, is_valid)) if keep_previous else None
    _write_replace(path, data, mode, before_replace=before)


def read_recovering(path: PathLike, parse: Callable[[bytes], object]) -> Optional[object]:
    """Read and parse ``path``, falling back to its previous generation when it is damaged.

    A zero-length file or one ``parse`` rejects (raises) is what a power cut leaves on
    some flash filesystems. The previous generation is then parsed, written back over
    the target, and a warning logged. Returns None when ``path`` does not exist; raises
    :class:`RecoveryError` when it and its previous generation are both damaged.
    """
    path = os.path.abspath(os.fspath(path))
    remove_stale_temps(path)
    problem = None
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raw = None
    if raw:
        try:
            return parse(raw)
        except Exception as exc:  # configparser's messages span lines: errors are one line
            problem = "unparsable (%s)" % " ".join(str(exc).split())
    elif raw is not None:
        problem = "empty"
    if raw is None:
        return None
    prev = previous_path(path)
    try:
        with open(prev, "rb") as f:
            prev_raw = f.read()
    except FileNotFoundError:
        raise RecoveryError("%s is %s and has no previous generation: repair or remove it" % (path, problem)) from None
    try:
        if not prev_raw:
            raise ValueError("empty")
        parsed = parse(prev_raw)
    except Exception as exc:
        raise RecoveryError("%s is %s and its previous generation is damaged (%s): repair or remove it"
                            % (path, problem, " ".join(str(exc).split()))) from None
    log.warning("%s is %s; recovered the previous generation", path, problem)
    _write_replace(path, prev_raw, None)
    return parsed
