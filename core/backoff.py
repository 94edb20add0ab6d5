"""Capped, jittered exponential backoff as a pure object (no sleeping inside)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# One generator for every schedule: seeding a new Random per request costs more than the request's
# own bookkeeping, and jitter needs no independent streams.
_SHARED_RNG = random.Random()


@dataclass(slots=True)
class Backoff:
    """Delays for reconnects and retries: min * factor**n, capped at max, with +-jitter.

    `next_delay()` returns the delay to wait before the next attempt; `reset()` after a
    healthy link starts the schedule again from `min_delay`.
    """

    min_delay: float = 1.0
    max_delay: float = 30.0
    factor: float = 2.0
    jitter: float = 0.1
    rng: random.Random = field(default=_SHARED_RNG)
    attempts: int = 0

    def next_delay(self) -> float:
        """The next delay in seconds; each call moves one step along the schedule."""
        base = min(self.max_delay, self.min_delay * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        spread = base * self.jitter
        return max(0.0, min(self.max_delay, base + self.rng.uniform(-spread, spread)))

    def reset(self) -> None:
        """Start again from the shortest delay."""
        self.attempts = 0
