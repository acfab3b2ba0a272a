"""Recipients who were not pushed because they looked online, remembered until they go.

Presence can be wrong for a while: a socket whose peer vanished (a phone that lost
its network) counts as online until the server's ping times out, and the users of a
node that died until their presence TTL runs out. A message committed in that window
was skipped for them. The push service remembers each such (message, recipient) pair
for about that long, and once presence sees the recipient gone it writes a push job
for the pairs still unread (the way Zulip's missed-message hook notifies a user whose
last event queue was dropped). The memory is bounded in time and in count: past the
count, the oldest pairs are forgotten first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from datetime import timedelta
from typing import NamedTuple

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.config import Settings
from app.db import utcnow
from app.messenger.message_store import Committed
from app.messenger.models import PushJob
from app.messenger.presence import Presence
from app.messenger.push.decision import pushed, unread
from app.messenger.push.jobs import CHUNK, load_committed

log = logging.getLogger(__name__)

# Takes a job the re-check wrote, leased to this node: its id, messages, and recipient.
Hold = Callable[[str, list[Committed], int], None]


class Skipped(NamedTuple):
    """A recipient a message was not pushed to, because they looked online."""

    user_id: int
    message_id: str
    conversation_id: str
    seq: int


class SkippedRecipients:
    """The pairs, oldest first, each kept `window` seconds; at most `limit` of them."""

    def __init__(
        self, window: float, limit: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = window
        self._limit = limit
        self._clock = clock
        # (user, message) -> (the pair, when it is forgotten); insertion order is age order.
        self._pairs: OrderedDict[tuple[int, str], tuple[Skipped, float]] = OrderedDict()
        self._by_user: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self._pairs)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._by_user

    def add(self, skipped: Iterable[Skipped]) -> int:
        """Remember these; how many older pairs were forgotten to stay within the limit."""
        if self._limit == 0:
            return 0  # remembering nobody: the re-check is off
        until = self._clock() + self._window
        for s in skipped:
            key = (s.user_id, s.message_id)
            if key in self._pairs:
                continue
            self._pairs[key] = (s, until)
            self._by_user.setdefault(s.user_id, set()).add(s.message_id)
        dropped = 0
        while len(self._pairs) > self._limit:
            self._pop_oldest()
            dropped += 1
        return dropped

    def users(self) -> list[int]:
        """Everyone with a pair still remembered (forgetting the pairs too old first)."""
        self._expire()
        return list(self._by_user)

    def take(self, user_ids: Collection[int]) -> list[Skipped]:
        """Remove and return these users' pairs."""
        self._expire()
        taken: list[Skipped] = []
        for user_id in user_ids:
            for message_id in self._by_user.pop(user_id, ()):
                pair, _ = self._pairs.pop((user_id, message_id))
                taken.append(pair)
        return taken

    def _expire(self) -> None:
        now = self._clock()
        while self._pairs and next(iter(self._pairs.values()))[1] <= now:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        (user_id, message_id), _ = self._pairs.popitem(last=False)
        messages = self._by_user[user_id]
        messages.discard(message_id)
        if not messages:
            del self._by_user[user_id]


class Recheck:
    """Looks again, every interval, at the users with skipped messages; one gone at two
    looks in a row (or said gone by presence at least half an interval before a look)
    gets a push job for the skipped messages still unread and unpushed. A reconnect in
    between (a network switch, a node restarting) costs no push."""

    def __init__(
        self, settings: Settings, engine: AsyncEngine, presence: Presence, hold: Hold
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._presence = presence
        self._hold = hold
        self._interval = settings.push_recheck_interval_seconds
        # Long enough for presence to notice a vanished socket (ping timeout) or a dead
        # node (TTL), and for the looks after that.
        window = (
            settings.presence_ttl_seconds
            + settings.websocket_ping_interval_seconds
            + settings.websocket_ping_timeout_seconds
            + 2 * self._interval
        )
        self._skipped = SkippedRecipients(window, settings.push_recheck_max_pairs)
        # Users seen gone, and since when (loop time).
        self._suspects: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="push-recheck")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def skipped(self, pairs: Iterable[Skipped]) -> None:
        """Planning skipped these recipients: they looked online."""
        if forgotten := self._skipped.add(pairs):
            metrics.push_rechecks_forgotten.inc(forgotten)

    def users_gone(self, user_ids: Collection[int]) -> None:
        """Presence here saw these users go offline everywhere (their last socket here
        closed, or a dead node's users were taken over)."""
        now = asyncio.get_running_loop().time()
        for user_id in user_ids:
            if user_id in self._skipped:
                self._suspects.setdefault(user_id, now)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._look()
            except Exception:
                log.exception("push recheck failed node=%s", self._settings.node_id)

    async def _look(self) -> None:
        users = self._skipped.users()
        if not users or not self._presence.complete:
            # Nobody to look at; or presence sees only this node (Redis away), and would
            # call everyone elsewhere gone.
            self._suspects.clear()
            return
        gone: set[int] = set()
        for i in range(0, len(users), CHUNK):
            chunk = users[i : i + CHUNK]
            gone |= set(chunk) - await self._presence.online(chunk)
        now = asyncio.get_running_loop().time()
        settled = now - self._interval / 2
        due = {u for u in gone if u in self._suspects and self._suspects[u] <= settled}
        self._suspects = {u: self._suspects.get(u, now) for u in gone - due}
        if not due:
            return
        skipped = self._skipped.take(due)
        try:
            await self._write(skipped)
        except Exception:
            self._skipped.add(skipped)  # the next look tries again
            raise

    async def _write(self, skipped: list[Skipped]) -> None:
        """A job per recipient for their skipped messages that are unread and unpushed,
        written like a commit's (leased to this node), then handed to the push service."""
        node = self._settings.node_id
        async with self._engine.begin() as conn:
            still = await unread(conn, {(s.conversation_id, s.user_id, s.seq) for s in skipped})
            todo = [s for s in skipped if (s.conversation_id, s.user_id, s.seq) in still]
            done = await pushed(conn, {(s.message_id, s.user_id) for s in todo})
            todo = [s for s in todo if (s.message_id, s.user_id) not in done]
            committed = await load_committed(conn, {s.message_id for s in todo})
            by_user: dict[int, list[str]] = {}
            for s in sorted(todo, key=lambda s: s.seq):
                if s.message_id in committed:
                    by_user.setdefault(s.user_id, []).append(s.message_id)
            if not by_user:
                return
            now = utcnow()
            until = now + timedelta(seconds=self._settings.push_lease_seconds)
            jobs = {str(uuid.uuid4()): (user_id, ids) for user_id, ids in by_user.items()}
            await conn.execute(
                insert(PushJob),
                [
                    {
                        "id": job_id,
                        "message_ids": ids,
                        "created_at": now,
                        "claimed_by": node,
                        "lease_until": until,
                        "recipient_id": user_id,
                    }
                    for job_id, (user_id, ids) in jobs.items()
                ],
            )
        for job_id, (user_id, ids) in jobs.items():
            self._hold(job_id, [committed[m] for m in ids], user_id)
        count = sum(len(ids) for _, ids in jobs.values())
        metrics.push_rechecks.inc(count)
        log.info(
            "push recheck jobs=%d messages=%d node=%s (recipients gone, messages unread)",
            len(jobs),
            count,
            node,
        )
