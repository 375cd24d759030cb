"""The queue's limits (gmq.cfg ``[queue]``): their own module, so that reading gmq.cfg (gwe, the
``gmq`` command) does not load the queue, sqlite and the salvage code."""
from __future__ import annotations

from dataclasses import dataclass

from atomic_config import DEFAULT_MIN_FREE_DISK

POLICIES = ("drop_oldest", "reject_new")


@dataclass
class Limits:
    max_bytes: int = 64 * 1024 * 1024
    min_free_disk: int = DEFAULT_MIN_FREE_DISK
    policy: str = "drop_oldest"
    max_value_bytes: int = 64 * 1024
    ttl: float = 0.0

    def validate(self) -> "Limits":
        if self.policy not in POLICIES:
            raise ValueError("policy must be one of %s" % ", ".join(POLICIES))
        if self.max_bytes <= 0 or self.max_value_bytes <= 0 or self.min_free_disk < 0 or self.ttl < 0:
            raise ValueError("queue limits must be positive")
        if self.max_value_bytes > self.max_bytes:
            raise ValueError("max_value_bytes is larger than max_bytes")
        return self
