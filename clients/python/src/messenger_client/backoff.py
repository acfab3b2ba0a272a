"""How long to wait before the next reconnect: exponential, capped, with jitter.

Jitter spreads out the clients of a node that went away, so they do not all come back
in the same instant and knock it over again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.5  # seconds before the first retry, on average
    factor: float = 2.0
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """The wait before retry number `attempt` (0 first): half fixed, half random
        ("equal jitter"), so a retry never comes at once nor all at the same moment."""
        ceiling = min(self.cap, self.base * self.factor ** min(attempt, 32))
        return ceiling / 2 + random.uniform(0, ceiling / 2)
