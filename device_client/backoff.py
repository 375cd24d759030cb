"""Exponential backoff with full jitter, shared by every retry loop in the suite."""
from __future__ import annotations

import random
from typing import Optional


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each drawn with jitter.

    ``next_delay()`` gives the wait before the next attempt; ``reset()`` after a success.
    With ``jitter`` j the delay is uniform in ``[(1 - j) * d, d]`` so that many gateways
    that lost the network together do not come back in step.
    """

    def __init__(self, initial: float = 1.0, maximum: float = 300.0, factor: float = 2.0,
                 jitter: float = 0.5, rng: Optional[random.Random] = None) -> None:
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("bad backoff parameters")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (self.factor ** self.attempts))
        if ceiling < self.maximum:  # past the maximum, counting on would overflow the power (days offline)
            self.attempts += 1
        return ceiling * (1 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0
