"""The install journal: which step an install reached, so a restart can finish or undo it.

One install runs at a time (an flock beside the journal), so one journal file suffices.
It is written through ``atomic_write`` before each step that changes what runs:

- ``unpacking``   staging dir and target may exist; nothing running changed.
- ``installing``  install.sh / setup.py runs; nothing running changed.
- ``registering`` the new program file, ``current`` link and supervisord group are being
                  switched; the previous program file's content is in the journal.
- ``committed``   the health gate passed; only bookkeeping remains.
- ``rolling_back`` the previous version is being restored.

Recovery: before ``registering`` the new version is discarded (the old one never stopped);
``registering`` resumes (re-applies the new program, runs the health gate, then commits or
rolls back); ``committed`` finishes the bookkeeping; ``rolling_back`` finishes the rollback.

Every write is checked against :data:`TRANSITIONS`, as supervisor's process model guards its
state changes: a journal moves only forward, may be rewritten in its own state with more
facts, and may always turn to ``rolling_back`` until it is committed; nothing else.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Iterator, Optional

from atomic_config import (GwePaths, RecoveryError, atomic_write, file_lock, fsync_dir, previous_path,
                           read_recovering)

from .errors import OtauError
from .settings import otau_dir

log = logging.getLogger(__name__)

UNPACKING = "unpacking"
INSTALLING = "installing"
REGISTERING = "registering"
COMMITTED = "committed"
ROLLING_BACK = "rolling_back"
STATES = (UNPACKING, INSTALLING, REGISTERING, COMMITTED, ROLLING_BACK)
# state -> the states a journal in it may be written in next (besides its own)
TRANSITIONS = {
    UNPACKING: (INSTALLING, ROLLING_BACK),
    INSTALLING: (REGISTERING, ROLLING_BACK),
    REGISTERING: (COMMITTED, ROLLING_BACK),
    COMMITTED: (),
    ROLLING_BACK: (),
}


class JournalError(OtauError):
    """A journal write that the transition table does not allow (a bug, never a package's fault)."""
    step = "journal"


@dataclass
class Journal:
    name: str
    version: str
    package: str
    state: str
    staging: str
    previous_version: Optional[str] = None
    previous_conf: Optional[str] = None
    new_conf: Optional[str] = None
    startsecs: float = 1.0
    autostart: bool = True
    self_update: bool = False
    status: Dict = field(default_factory=dict)  # fetch_status fields gathered so far
    installer: Optional[Dict] = None  # runner.installer_identity() of a running install.sh / setup.py
    directory: Optional[str] = None            # the new version's directory (None: the version)
    previous_directory: Optional[str] = None   # the previous version's (None: the previous version)
    sha256: Optional[str] = None               # of the package being installed

    @property
    def new_dir(self) -> str:
        return self.directory or self.version

    @property
    def previous_dir(self) -> Optional[str]:
        return self.previous_directory or self.previous_version

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def journal_path(paths: GwePaths) -> str:
    return os.path.join(otau_dir(paths), "journal.json")


@contextlib.contextmanager
def install_lock(paths: GwePaths) -> Iterator[None]:
    """Serialise installs and recoveries across processes (released if the holder dies)."""
    os.makedirs(otau_dir(paths), exist_ok=True)
    with file_lock(journal_path(paths)):
        yield


def begin_journal(paths: GwePaths, journal: Journal) -> None:
    """Write a new journal (state ``unpacking``); there must be none (recovery runs first)."""
    if journal.state != UNPACKING:
        raise JournalError("a journal begins in %s, not %s" % (UNPACKING, journal.state))
    if os.path.exists(journal_path(paths)):
        raise JournalError("an unfinished install journal exists: recover first")
    os.makedirs(otau_dir(paths), exist_ok=True)
    atomic_write(journal_path(paths), journal.to_json(), mode=0o600)


def write_journal(paths: GwePaths, journal: Journal, state: Optional[str] = None) -> None:
    """Write ``journal``, moved to ``state`` when given, if :data:`TRANSITIONS` allows it."""
    if state is not None and state != journal.state:
        # a state this version does not know (written by a later one) may only be rolled back
        allowed = TRANSITIONS.get(journal.state, (ROLLING_BACK,))
        if state not in allowed:
            raise JournalError("install journal of %s %s: %s -> %s is not allowed"
                               % (journal.name, journal.version, journal.state, state))
        journal.state = state
    atomic_write(journal_path(paths), journal.to_json(), mode=0o600)


def read_journal(paths: GwePaths) -> Optional[Journal]:
    """The journal, or None. Unknown keys are ignored: a self-updated gwe may read its predecessor's.

    A journal damaged beyond its previous generation is moved aside (and logged), so that gwe
    still starts; the install it described is then neither resumed nor undone.
    """
    path = journal_path(paths)
    try:
        doc = read_recovering(path, lambda raw: json.loads(raw.decode("utf-8")))
    except RecoveryError as exc:
        aside = "%s.damaged-%d" % (path, int(time.time()))
        os.replace(path, aside)
        log.error("install journal unreadable, moved to %s: %s", aside, exc)
        return None
    if not doc:
        return None
    known = {f.name for f in fields(Journal)}
    return Journal(**{k: v for k, v in doc.items() if k in known})


def clear_journal(paths: GwePaths) -> None:
    path = journal_path(paths)
    for target in (path, previous_path(path)):
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass
    fsync_dir(os.path.dirname(path))
