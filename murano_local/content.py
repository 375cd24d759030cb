"""Content-area blobs as files under ``DIR/content``, metadata in the store.

A blob is streamed to a temporary file, fsynced and renamed to a random name before its
metadata row is committed, so a crash leaves either the old blob or the new one, never a
torn one. File names never come from the network. A device's upload (see
:mod:`murano_local.device_uploads`) is moved in whole and is visible to that device only
(and to the operator): logs are not for every device of the product to download.
"""
from __future__ import annotations

import logging
import os
import secrets
from typing import BinaryIO, Callable, List, Optional, Tuple

from atomic_config import fsync_dir

from .store import NotFound, Store, private_directory

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_NAME = 255


class ContentError(Exception):
    """An upload that cannot be stored (bad name, short body, too big)."""


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME:
        raise ContentError("content name must be 1..%d characters" % MAX_NAME)
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or "," in name:
        raise ContentError("content name must not contain control characters or commas")
    return name


class ContentArea:
    def __init__(self, data_dir: str, store: Store) -> None:
        self.directory = os.path.join(data_dir, "content")
        private_directory(self.directory)
        self.store = store
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Drop temp files and blobs no row points at (what a crash mid-upload leaves)."""
        known = set(self.store.content_files())
        for entry in os.listdir(self.directory):
            if entry not in known:
                try:
                    os.unlink(os.path.join(self.directory, entry))
                except OSError as exc:
                    log.warning("cannot remove orphan content file %s: %s", entry, exc)

    def path(self, info: dict) -> str:
        return os.path.join(self.directory, info["file"])

    def put(self, pid: str, name: str, source: BinaryIO, length: int, content_type: str, meta: str = "") -> dict:
        """Store exactly ``length`` bytes read from ``source`` as ``name``."""
        check_name(name)
        file = secrets.token_hex(16)
        final = os.path.join(self.directory, file)
        tmp = final + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = length
                while remaining > 0:
                    chunk = source.read(min(CHUNK, remaining))
                    if not chunk:
                        raise ContentError("body ended after %d of %d bytes" % (length - remaining, length))
                    out.write(chunk)
                    remaining -= len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
            fsync_dir(self.directory)
        except BaseException:
            _unlink(tmp)
            raise
        return self._record(pid, name, file, length, content_type, meta, None, lambda: _unlink(final))

    def adopt(self, pid: str, name: str, path: str, content_type: str, meta: str,
              uploaded_by: Tuple[str, str]) -> dict:
        """Move the complete, fsynced file ``path`` (on this filesystem) in as ``name``, a device's
        upload (``uploaded_by`` = identity, sha256). If the row cannot be committed the file goes back."""
        check_name(name)
        file = secrets.token_hex(16)
        final = os.path.join(self.directory, file)
        size = os.path.getsize(path)
        os.replace(path, final)
        fsync_dir(self.directory)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
        return self._record(pid, name, file, size, content_type, meta, uploaded_by, lambda: os.replace(final, path))

    def _record(self, pid: str, name: str, file: str, size: int, content_type: str, meta: str,
                uploaded_by: Optional[Tuple[str, str]], undo: Callable[[], None]) -> dict:
        try:
            replaced = self.store.content_put(pid, name, content_type, size, meta, file, uploaded_by)
        except BaseException:
            undo()
            raise
        if replaced:
            _unlink(os.path.join(self.directory, replaced))
        return self.info(pid, name)

    def info(self, pid: str, name: str, visible_to: Optional[str] = None) -> dict:
        """``visible_to``: the device asking; another device's upload is not found."""
        info = self.store.content_info(pid, name)
        if info is None or not _visible(info, visible_to):
            raise NotFound("no such content")
        return info

    def list(self, pid: str, device: Optional[str] = None, visible_to: Optional[str] = None) -> List[dict]:
        """Blobs by name; ``device``: only its uploads; ``visible_to``: what that device may see."""
        return [c for c in self.store.content_list(pid, device) if _visible(c, visible_to)]

    def delete(self, pid: str, name: str) -> None:
        file = self.store.content_delete(pid, name)
        _unlink(os.path.join(self.directory, file))

    def open(self, pid: str, name: str, visible_to: Optional[str] = None) -> Tuple[dict, Optional[BinaryIO]]:
        """The blob's metadata and an open file (None if the file vanished)."""
        info = self.info(pid, name, visible_to)
        try:
            return info, open(self.path(info), "rb")
        except FileNotFoundError:
            return info, None


def _visible(info: dict, identity: Optional[str]) -> bool:
    return identity is None or info.get("device") in (None, identity)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
