"""Recipients who were not pushed because they looked active, remembered until they
are active nowhere.

Someone active may leave without reading: they go idle, or close the page. And
attention can be wrong for a while: a socket whose peer vanished (a phone that lost
its network) counts as active until the server's ping times out, and the users of a
node that died until their attention TTL runs out. A message committed in that window
was skipped for them. The push service remembers each such (message, recipient) pair
for about that long, and once attention sees the recipient active nowhere it writes a
push job for the pairs still unread (the way Zulip's missed-message hook notifies a
user whose last event queue was dropped). The memory is bounded in time and in count: past the
count, the oldest pairs are forgotten first.

An announcement's messages get jobs of their own, marked as the announcement's like its
chunks' jobs: they are pushed in the low-priority lane, never ahead of ordinary pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import and_, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import metrics
from app.config import Settings
from app.db import utcnow
from app.messenger.broadcast_chunk import announcement_of
from app.messenger.message_store import Committed
from app.messenger.models import Conversation, Message, PushJob
from app.messenger.presence import Presence
from app.messenger.push.decision import pushed, unread
from app.messenger.push.jobs import CHUNK, load_committed

log = logging.getLogger(__name__)
_messages = Message.__table__
_conversations = Conversation.__table__

# Takes a job the re-check wrote, leased to this node: its id, messages, recipient, and
# whether it is an announcement's (low priority).
Hold = Callable[[str, list[Committed], int, bool], None]


class Unpushed(NamedTuple):
    """A message in a skipped range, for a recipient other than its sender."""

    user_id: int
    message_id: str
    conversation_id: str
    seq: int
    announcement_id: str | None  # the announcement it was written for, if any


class Skipped(NamedTuple):
    """Messages of a conversation a recipient was not pushed because they looked active:
    seqs `first` to `last` (their own messages among them are never pushed)."""

    user_id: int
    conversation_id: str
    first: int
    last: int


class SkippedRecipients:
    """Per recipient and conversation, the range of seqs skipped, kept `window` seconds
    after the latest; at most `limit` ranges (past it, the earliest begun go first).

    A range, not each message: planning adds to it for every active recipient of every
    message, so this must cost a dictionary look-up, not a record per message."""

    def __init__(
        self, window: float, limit: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = window
        self._limit = limit
        self._clock = clock
        # (user, conversation) -> [first seq, last seq, when it is forgotten]
        self._ranges: dict[tuple[int, str], list[float]] = {}
        self._by_user: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self._ranges)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._by_user

    def add(self, conversation_id: str, seq: int, user_ids: Iterable[int]) -> int:
        """Remember that these users were skipped for a message; how many older ranges
        were forgotten to stay within the limit."""
        if self._limit == 0:
            return 0  # remembering nobody: the re-check is off
        until = self._clock() + self._window
        ranges = self._ranges
        for user_id in user_ids:
            key = (user_id, conversation_id)
            found = ranges.get(key)
            if found is None:
                ranges[key] = [seq, seq, until]
                self._by_user.setdefault(user_id, set()).add(conversation_id)
            else:
                found[0] = min(found[0], seq)
                found[1] = max(found[1], seq)
                found[2] = until
        dropped = 0
        while len(ranges) > self._limit:
            self._forget(next(iter(ranges)))
            dropped += 1
        return dropped

    def restore(self, skipped: Iterable[Skipped]) -> None:
        """Put back ranges taken (their push jobs could not be written)."""
        for s in skipped:
            self.add(s.conversation_id, s.first, [s.user_id])
            self.add(s.conversation_id, s.last, [s.user_id])

    def users(self) -> list[int]:
        """Everyone with a range still remembered (forgetting those too old first)."""
        now = self._clock()
        for key in [k for k, (_, _, until) in self._ranges.items() if until <= now]:
            self._forget(key)
        return list(self._by_user)

    def take(self, user_ids: Collection[int]) -> list[Skipped]:
        """Remove and return these users' ranges."""
        self.users()  # (forgets the ranges too old)
        taken: list[Skipped] = []
        for user_id in user_ids:
            for conversation_id in self._by_user.pop(user_id, ()):
                first, last, _ = self._ranges.pop((user_id, conversation_id))
                taken.append(Skipped(user_id, conversation_id, int(first), int(last)))
        return taken

    def _forget(self, key: tuple[int, str]) -> None:
        del self._ranges[key]
        user_id, conversation_id = key
        conversations = self._by_user[user_id]
        conversations.discard(conversation_id)
        if not conversations:
            del self._by_user[user_id]


class Recheck:
    """Looks again, every interval, at the users with skipped messages; one active nowhere
    at two looks in a row (or said so by attention at least half an interval before a look)
    gets a push job for the skipped messages still unread and unpushed. A reconnect in
    between (a network switch, a node restarting) costs no push."""

    def __init__(
        self, settings: Settings, engine: AsyncEngine, attention: Presence, hold: Hold
    ) -> None:
        self._settings = settings
        self._engine = engine
        # Who is looking: active sockets only (app.messenger.attention).
        self._attention = attention
        self._hold = hold
        self._interval = settings.push_recheck_interval_seconds
        # Long enough for attention to notice a vanished socket (ping timeout) or a dead
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

    def skipped(self, conversation_id: str, seq: int, user_ids: Iterable[int]) -> None:
        """Planning skipped these recipients of a message: they looked active."""
        if forgotten := self._skipped.add(conversation_id, seq, user_ids):
            metrics.push_rechecks_forgotten.inc(forgotten)

    def users_gone(self, user_ids: Collection[int]) -> None:
        """Attention here saw these users become active nowhere (their last active socket
        here went idle or closed, or a dead node's users were taken over)."""
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
        if not users or not self._attention.complete:
            # Nobody to look at; or attention sees only this node (Redis away), and would
            # call everyone elsewhere gone.
            self._suspects.clear()
            return
        gone: set[int] = set()
        for i in range(0, len(users), CHUNK):
            chunk = users[i : i + CHUNK]
            gone |= set(chunk) - await self._attention.online(chunk)
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
            self._skipped.restore(skipped)  # the next look tries again
            raise

    async def _write(self, skipped: list[Skipped]) -> None:
        """A job per recipient for their skipped messages that are unread and unpushed,
        written like a commit's (leased to this node), then handed to the push service."""
        node = self._settings.node_id
        async with self._engine.begin() as conn:
            pairs = await _messages_in(conn, skipped)
            still = await unread(conn, {(p.conversation_id, p.user_id, p.seq) for p in pairs})
            todo = [p for p in pairs if (p.conversation_id, p.user_id, p.seq) in still]
            done = await pushed(conn, {(p.message_id, p.user_id) for p in todo})
            todo = [p for p in todo if (p.message_id, p.user_id) not in done]
            committed = await load_committed(conn, {p.message_id for p in todo})
            # One job per recipient, and per announcement: those stay in the low lane.
            by_job: dict[tuple[int, str | None], list[str]] = {}
            for p in sorted(todo, key=lambda p: p.seq):
                if p.message_id in committed:
                    by_job.setdefault((p.user_id, p.announcement_id), []).append(p.message_id)
            if not by_job:
                return
            now = utcnow()
            until = now + timedelta(seconds=self._settings.push_lease_seconds)
            jobs = {str(uuid.uuid4()): (key, ids) for key, ids in by_job.items()}
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
                        "announcement_id": announcement_id,
                    }
                    for job_id, ((user_id, announcement_id), ids) in jobs.items()
                ],
            )
        for job_id, ((user_id, announcement_id), ids) in jobs.items():
            self._hold(job_id, [committed[m] for m in ids], user_id, announcement_id is not None)
        count = sum(len(ids) for _, ids in jobs.values())
        metrics.push_rechecks.inc(count)
        log.info(
            "push recheck jobs=%d messages=%d node=%s (recipients gone, messages unread)",
            len(jobs),
            count,
            node,
        )


async def _messages_in(conn: AsyncConnection, skipped: list[Skipped]) -> list[Unpushed]:
    """Every message in the ranges, for its recipient, but the recipient's own."""
    rows: list[Any] = []
    for i in range(0, len(skipped), CHUNK):
        chunk = skipped[i : i + CHUNK]
        in_ranges = or_(
            *(
                and_(
                    _messages.c.conversation_id == s.conversation_id,
                    _messages.c.seq.between(s.first, s.last),
                )
                for s in chunk
            )
        )
        rows += (
            await conn.execute(
                select(
                    _messages.c.id,
                    _messages.c.conversation_id,
                    _messages.c.seq,
                    _messages.c.sender_id,
                    _messages.c.client_msg_id,
                    _conversations.c.type,
                )
                .join(_conversations, _conversations.c.id == _messages.c.conversation_id)
                .where(in_ranges)
            )
        ).all()
    by_conversation: dict[str, list[Any]] = {}
    for row in rows:
        by_conversation.setdefault(row.conversation_id, []).append(row)
    return [
        Unpushed(
            s.user_id,
            row.id,
            s.conversation_id,
            row.seq,
            announcement_of(row.type, row.client_msg_id),
        )
        for s in skipped
        for row in by_conversation.get(s.conversation_id, ())
        if s.first <= row.seq <= s.last and row.sender_id != s.user_id
    ]
