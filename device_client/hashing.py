"""Hashing a file's bytes in constant memory: one copy for downloads (resumed) and uploads."""
from __future__ import annotations

BLOCK = 1 << 20


def hash_file(path: str, length: int, digest) -> None:
    """Feed the first ``length`` bytes of ``path`` to ``digest`` (a hashlib object)."""
    if length <= 0:
        return
    with open(path, "rb") as f:
        left = length
        while left:
            block = f.read(min(left, BLOCK))
            if not block:
                break
            digest.update(block)
            left -= len(block)
