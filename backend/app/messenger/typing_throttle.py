"""Typing indicators: about one per interval per user and conversation goes out.

A client sends `typing` every few seconds while its user types; anything more often is
noise that every other participant's socket would pay for, so it is dropped without an
answer (the client expects none). Kept per node: an indicator is not worth a Redis call.
"""

from __future__ import annotations

import time

# A frame may come this share of an interval early and still go out (a client's timer
# of the same length, and the network's jitter); the long-run rate stays one per interval.
EARLY_SHARE = 0.25


class TypingThrottle:
    def __init__(self, interval: float, max_keys: int = 100_000) -> None:
        self._interval = interval
        self._max_keys = max_keys
        # (user, conversation) -> when its next indicator is due (monotonic seconds).
        self._due: dict[tuple[int, str], float] = {}

    def allow(self, user_id: int, conversation_id: str) -> bool:
        """Whether this typing frame goes out; it counts only if it does."""
        now = time.monotonic()
        key = (user_id, conversation_id)
        due = self._due.get(key, now)
        if now < due - self._interval * EARLY_SHARE:
            return False
        if len(self._due) >= self._max_keys:
            # Entries already due are the same as none: forgetting them changes nothing.
            self._due = {k: t for k, t in self._due.items() if t > now}
        self._due[key] = max(due, now) + self._interval
        return True
