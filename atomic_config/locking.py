"""Read-modify-write of a config file that is safe across processes."""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator, Optional

from .files import PathLike
from .parser import AtomicConfigParser


def lock_path(path: PathLike) -> str:
    head, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(head, "." + name + ".lock")


@contextlib.contextmanager
def file_lock(path: PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on the lock file beside ``path``."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def edit_config(path: PathLike, mode: Optional[int] = None) -> Iterator[AtomicConfigParser]:
    """Lock, read, let the caller change the parser, then write atomically.

    Nothing is written if the block raises. Other processes editing through this
    function wait, so no update is lost.
    """
    with file_lock(path):
        cfg = AtomicConfigParser()
        cfg.read(path)
        before = cfg.to_string()
        yield cfg
        if cfg.to_string() != before or not os.path.exists(path):
            cfg.write(path, mode=mode)


def set_option(path: PathLike, section: str, option: str, value: str, mode: Optional[int] = None) -> None:
    """Set one option (creating its section) under the file's lock."""
    with edit_config(path, mode=mode) as cfg:
        if not cfg.has_section(section):
            cfg.add_section(section)
        cfg.set(section, option, value)


def read_config(path: PathLike) -> AtomicConfigParser:
    """Parse ``path`` (recovering it if damaged); an absent file gives an empty parser."""
    cfg = AtomicConfigParser()
    cfg.read(path)
    return cfg
