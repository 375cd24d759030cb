"""The free-disk reserve every writer of the suite keeps, and the free space it is checked against.

gmq refuses new values below it (507) and otau fails an install that would leave less, so one
setting serves both: ``[queue] min_free_disk`` in gmq.cfg (the name gmq has always used), read
here by both, with one default.
"""
from __future__ import annotations

import logging
import os

from .locking import read_config
from .paths import GwePaths

log = logging.getLogger(__name__)

DEFAULT_MIN_FREE_DISK = 16 * 1024 * 1024
RESERVE_SECTION = "queue"
RESERVE_OPTION = "min_free_disk"


def free_disk(path: str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def min_free_disk(paths: GwePaths) -> int:
    """The reserve configured in gmq.cfg, or the default when it is unset or unusable."""
    try:
        raw = read_config(paths.gmq_cfg).get(RESERVE_SECTION, RESERVE_OPTION, fallback="").strip()
        if raw:
            value = int(raw)
            if value >= 0:
                return value
            raise ValueError(raw)
    except Exception as exc:  # an unreadable gmq.cfg is gmq's to report; the reserve stays in force
        log.warning("using the default disk reserve of %d bytes: [%s] %s in %s: %s", DEFAULT_MIN_FREE_DISK,
                    RESERVE_SECTION, RESERVE_OPTION, paths.gmq_cfg, exc)
    return DEFAULT_MIN_FREE_DISK
