"""Why each recipient was or was not pushed, gathered in memory as runs and written in
batches by the push service's record loop (never in the send transaction).

A run is consecutive seqs of one conversation decided alike for one user: a busy chat
between people who are looking costs one `push_decisions` row per second per
recipient, not one per message. The user's own messages, which are never decided for
them, do not break a run: it spans them (its `message_id` names the one message
decided when there is one). "online" runs (the bulk under load) stay open up to
`hold` seconds so they can grow; the other reasons are written at the next flush.

`sent` means the recipient's devices were pushed for the message, or for a newer one
of the conversation decided in the same batch whose notification stands for it (one
notification per conversation, saying how many are unread): push_attempts holds only
the push made. `blocked` (the recipient blocked the sender) is this server's addition
to the contract's reasons.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

SENT = "sent"
ONLINE = "online"
BLOCKED = "blocked"
MUTED = "muted"
NOTIFY_LEVEL = "notify_level"
QUIET_HOURS = "quiet_hours"
READ_BEFORE_DELAY = "read_before_delay"
NO_DEVICE = "no_device"
# Written after `sent` once every delivery of the notification is known to have gone
# nowhere (push.history): failed or given up after retries, or a dead token among them.
FAILED = "failed"
DEAD_TOKEN = "dead_token"
REASONS = (
    SENT,
    ONLINE,
    BLOCKED,
    MUTED,
    NOTIFY_LEVEL,
    QUIET_HOURS,
    READ_BEFORE_DELAY,
    NO_DEVICE,
    FAILED,
    DEAD_TOKEN,
)

HOLD = 1.0  # seconds an online run may grow before it is written
LIMIT = 100_000  # rows kept while the database cannot take them; past it the oldest go

# A run: [reason, first seq, last seq, message id (one message) or None, started]
Run = list[Any]


class DecisionLog:
    def __init__(
        self, hold: float = HOLD, limit: int = LIMIT, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._hold = hold
        self._limit = limit
        self._clock = clock
        # (user, conversation) -> its open run; in the order the runs began.
        self._runs: dict[tuple[int, str], Run] = {}
        self._closed: list[dict[str, Any]] = []
        self._counts: dict[str, int] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._runs) + len(self._closed)

    def add(
        self, user_id: int, conversation_id: str, seq: int, message_id: str, reason: str
    ) -> None:
        """One decision: `user_id` for the message `seq` of the conversation."""
        self._counts[reason] = self._counts.get(reason, 0) + 1
        key = (user_id, conversation_id)
        runs = self._runs
        run = runs.get(key)
        if run is not None:
            if run[0] == reason:
                if seq == run[2] + 1:
                    run[2] = seq
                    run[3] = None
                    return
                if run[1] <= seq <= run[2]:
                    return  # decided again (a job taken up again): already in the run
                if seq == run[1] - 1:
                    run[1] = seq
                    run[3] = None
                    return
            self._closed.append(_row(key, run))
            del runs[key]  # the new run goes to the end: runs stay in the order begun
        runs[key] = [reason, seq, seq, message_id, self._clock()]

    def add_many(
        self, user_ids: list[int], conversation_id: str, seq: int, message_id: str, reason: str
    ) -> None:
        """The same decision for several users; the common case (each extends the run it
        has) without a call per user."""
        runs = self._runs
        left: list[int] = []
        for user_id in user_ids:
            run = runs.get((user_id, conversation_id))
            if run is not None and run[0] == reason and seq == run[2] + 1:
                run[2] = seq
                run[3] = None
            else:
                left.append(user_id)
        self._counts[reason] = self._counts.get(reason, 0) + len(user_ids) - len(left)
        for user_id in left:
            self.add(user_id, conversation_id, seq, message_id, reason)

    def own(self, user_id: int, conversation_id: str, seq: int) -> None:
        """The user sent the message `seq`: their open run there may span it."""
        run = self._runs.get((user_id, conversation_id))
        if run is not None and seq == run[2] + 1:
            run[2] = seq

    def counts(self) -> dict[str, int]:
        """Decisions by reason since the last call."""
        counts, self._counts = self._counts, {}
        return counts

    def take(self, force: bool = False) -> list[dict[str, Any]]:
        """The rows to write now: every closed run, every open one but the online runs
        younger than `hold` (all of them with `force`). Those taken are closed."""
        rows, self._closed = self._closed, []
        oldest = self._clock() - self._hold
        for key, run in list(self._runs.items()):
            if force or run[0] != ONLINE or run[4] <= oldest:
                rows.append(_row(key, run))
                del self._runs[key]
        return rows

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Put back rows that could not be written; past the limit the oldest are dropped."""
        self._closed[:0] = rows
        excess = len(self._closed) - self._limit
        if excess > 0:
            del self._closed[:excess]
            self.dropped += excess

    def next_due(self) -> float | None:
        """Seconds until an open run must be written; None when none is open."""
        for run in self._runs.values():  # the first begun is due first
            started: float = run[4]
            return max(0.0, started + self._hold - self._clock())
        return None


def _row(key: tuple[int, str], run: Run) -> dict[str, Any]:
    return {
        "user_id": key[0],
        "conversation_id": key[1],
        "message_id": run[3],
        "first_seq": run[1],
        "last_seq": run[2],
        "reason": run[0],
    }
