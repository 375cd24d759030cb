"""A device token kept in a private file, written crash-safe through atomic_config.

Murano hands a token out only once (a second activation answers 409), so losing the
file after a power cut would strand the gateway: the file is replaced atomically,
its previous generation is kept for recovery, and it is readable by its owner only.
"""
from __future__ import annotations

import logging
import os
import re
import stat
from typing import Optional

from atomic_config import RecoveryError, atomic_write, previous_path, read_recovering

log = logging.getLogger(__name__)

TOKEN_MODE = 0o600
# What may travel in an X-Exosite-CIK header: printable ASCII without spaces.
_TOKEN = re.compile(r"^[\x21-\x7e]{1,512}$")


def valid_token(token: str) -> bool:
    return bool(_TOKEN.match(token))


def _parse(raw: bytes) -> str:
    token = raw.decode("ascii").strip()
    if not valid_token(token):
        raise ValueError("not a token")
    return token


class TokenStore:
    """Load, save and drop the token in ``path`` (mode 0600)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def load(self) -> Optional[str]:
        """The stored token, or None when there is none (or it is beyond recovery)."""
        self._tighten()
        try:
            return read_recovering(self.path, _parse)  # type: ignore[return-value]
        except RecoveryError as exc:
            log.warning("token file unusable, the device must re-activate: %s", exc)
            return None

    def save(self, token: str) -> None:
        if not valid_token(token):
            raise ValueError("refusing to store a malformed token")
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self._tighten()
        atomic_write(self.path, token + "\n", mode=TOKEN_MODE)

    def clear(self) -> None:
        """Forget the token (after a 401), previous generation included."""
        for path in (self.path, previous_path(self.path)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _tighten(self) -> None:
        """A token file someone made group- or world-readable is put back to 0600."""
        for path in (self.path, previous_path(self.path)):
            try:
                mode = stat.S_IMODE(os.stat(path).st_mode)
            except FileNotFoundError:
                continue
            if mode != TOKEN_MODE:
                log.warning("token file %s had mode %o; setting 0600", path, mode)
                os.chmod(path, TOKEN_MODE)
