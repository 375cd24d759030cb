"""On every start of gwe: finish or undo an install a crash or power loss cut short.

Almost every start finds no journal; then only the journal is read and the self-update markers
cleared, and the install pipeline's modules (checks, runner, unpacker, verifier) are not loaded
into a daemon that may not install anything for weeks.
"""
from __future__ import annotations

from typing import List, Optional

from atomic_config import GwePaths, gwe_paths

from . import selfupdate
from .journal import install_lock, read_journal
from .settings import OtauSettings
from .status import FetchStatus


def recover(paths: Optional[GwePaths] = None, settings: Optional[OtauSettings] = None) -> List[FetchStatus]:
    """Finishes or undoes an interrupted install; returns the statuses it produced."""
    paths = paths or gwe_paths()
    with install_lock(paths):
        if read_journal(paths) is None:
            selfupdate.remove_all_markers(paths)
            return []
    from .install import Installer

    return Installer(paths, settings).recover()  # takes the lock again and reads the journal afresh
