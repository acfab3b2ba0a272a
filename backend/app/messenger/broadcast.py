"""Announcements on their way: the durable, batched job that delivers each one.

An announcement row is its own job. Every node runs one loop that claims an
unfinished announcement whose lease is free or ran out (PostgreSQL: FOR UPDATE SKIP
LOCKED, so two nodes never take the same one; SQLite: the one node), renews the lease
while it works, and goes through the recipients in chunks by user id. One transaction
per chunk:

- checks the job is still this node's and advances `cursor` and the counters,
- makes the recipients' "Announcements" conversations that do not exist yet (one
  insert for the chunk; direct_key "announcement:<user id>" keeps one per user) and
  their one participant (one INSERT ... SELECT),
- writes one message per conversation (sender: the admin; client_msg_id
  "announcement:<id>", so a chunk written twice is refused by the unique constraint
  and skipped here), and one push job for them all, leased to this node.

After the commit the frames go to the recipients with a socket open (any node), and
the push job to the push service's low-priority lane (push.lane), whose backlog this
job keeps bounded. A node that dies mid-way leaves the lease to run out; the node that
takes over resumes after the last committed chunk. Frames of the chunk being written
when a node dies are not sent (clients catch up from history); its pushes are (the
push job is durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import Row, Select, case, func, literal_column, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.config import Settings
from app.db import database_unavailable, one_of, utcnow
from app.jsonutil import dumps
from app.messenger.broadcast_chunk import TYPE, write_chunk
from app.messenger.db_clock import db_later, db_now
from app.messenger.fanout import Fanout
from app.messenger.message_store import Committed
from app.messenger.models import (
    ANNOUNCEMENT_MESSAGES,
    Announcement,
    Message,
    PushAttempt,
    PushJob,
)
from app.messenger.presence import Presence
from app.messenger.push.lane import quiet_turn
from app.messenger.push.service import PushService
from app.models import User

log = logging.getLogger(__name__)

_announcements = Announcement.__table__
_messages = Message.__table__
_attempts = PushAttempt.__table__
_users = User.__table__
_jobs = PushJob.__table__

# Announcement messages waiting to be planned in the push lane before the job waits.
LANE_BACKLOG = 5_000
# A chunk that keeps failing (the database away) is tried again with a growing backoff,
# the lease renewed meanwhile, for this long before the announcement fails.
CHUNK_RETRY_SECONDS = 300.0
CHUNK_BACKOFF_MAX = 10.0
# How long the end waits for push jobs of the announcement held by other nodes (taken over
# after a node died) before it records its counts anyway.
PUSH_WAIT_SECONDS = 120.0
PUSH_WAIT_POLL = 0.5
COUNT_SECONDS = 1.0  # how often `pushed` is brought up to date while sending
FINAL_COUNT_TRIES = 3  # the count at the end, tried this often before it is given up
FINAL_COUNT_BACKOFF = 1.0  # seconds, times the try, between two of them
FRAMES_PER_TURN = 100  # announcement frames sent between two looks at the event loop


class Lost(Exception):
    """The announcement is no longer this node's (its lease ran out and another took it)."""


class Chunk(NamedTuple):
    """What one chunk's transaction wrote."""

    job_id: str
    committed: list[Committed]


def client_msg_id(announcement_id: str) -> str:
    return f"{TYPE}:{announcement_id}"


def message_text(title: str, content: str) -> str:
    return f"{title}\n\n{content}"


class PushCounts(NamedTuple):
    pushed: int  # recipients with at least one device that took the push
    failed: int  # recipients pushed on some device, and every one of them failed


def push_counts_query(announcement_id: str, created_by: int) -> Select[int, int]:
    """The announcement's push outcomes per recipient: (pushed, failed). Its messages are
    found through the partial index on announcement messages (the predicate is repeated
    for PostgreSQL to see that the index applies), their attempts through the attempts'
    message index.

    No bound on the attempts' time: the messages are the announcement's own already, and
    on tables never analysed PostgreSQL combined such a bound with the message index,
    reading every attempt since the announcement once per message (52 s for 100,000)."""
    m, a = _messages.c, _attempts.c
    delivered = func.max(case((a.outcome == "delivered", 1), else_=0))
    per_user = (
        select(a.user_id, delivered.label("delivered"))
        .select_from(_attempts.join(_messages, m.id == a.message_id))
        .where(
            literal_column(ANNOUNCEMENT_MESSAGES),
            m.client_msg_id == client_msg_id(announcement_id),
            m.sender_id == created_by,
        )
        .group_by(a.user_id)
        .subquery()
    )
    return select(
        func.count().filter(per_user.c.delivered == 1),
        func.count().filter(per_user.c.delivered == 0),
    ).select_from(per_user)


async def push_counts(conn: AsyncConnection, row: Any) -> PushCounts:
    found = (await conn.execute(push_counts_query(row.id, row.created_by))).one()
    return PushCounts(int(found[0] or 0), int(found[1] or 0))


class Broadcasts:
    """Started with the node: works the announcements still sending, one at a time."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        presence: Presence,
        fanout: Fanout,
        push: PushService,
    ) -> None:
        self._engine = engine
        self._node = settings.node_id
        self._chunk = settings.announcement_chunk
        self._lease = settings.announcement_lease_seconds
        self._poll = settings.announcement_poll_seconds
        self._push_lease = settings.push_lease_seconds
        self._presence = presence
        self._fanout = fanout
        self._push = push
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="announcements")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # What this node was sending is free at once for another node (or the next start),
        # not after its lease; the cursor says where to go on.
        a = _announcements.c
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(_announcements)
                    .where(a.claimed_by == self._node, a.status == "sending")
                    .values(claimed_by=None, lease_until=None)
                )
        except Exception as exc:  # the lease runs out instead
            log.warning(
                "announcements not released node=%s error=%s", self._node, type(exc).__name__
            )

    def wake(self) -> None:
        """Look now (an announcement was just made)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                row = await self.claim()
                if row is not None:
                    await self.work(row)
                    continue
            except Exception:
                log.exception("announcements: loop failed node=%s", self._node)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            self._wake.clear()

    def _lease_end(self) -> Any:
        """The end of a lease taken now, by the database's clock."""
        return db_later(self._engine.dialect.name, self._lease)

    async def claim(self) -> Row[Any] | None:
        """One announcement still sending whose lease is free or ran out, now this node's."""
        a = _announcements.c
        now = db_now(self._engine.dialect.name)
        free = (
            select(a.id)
            .where(a.status == "sending", or_(a.lease_until.is_(None), a.lease_until < now))
            .order_by(a.created_at)
            .limit(1)
        )
        if self._engine.dialect.name == "postgresql":
            free = free.with_for_update(skip_locked=True)
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    update(_announcements)
                    .where(a.id.in_(free.scalar_subquery()))
                    .values(claimed_by=self._node, lease_until=self._lease_end())
                    .returning(*_announcements.c)
                )
            ).first()
        if row is not None:
            log.info("announcement claimed id=%s cursor=%d node=%s", row.id, row.cursor, self._node)
        return row

    async def work(self, row: Row[Any]) -> None:
        """Deliver the announcement from its cursor on, then record it done."""
        renewing = asyncio.create_task(self._renew(row.id), name=f"announcement-lease-{row.id}")
        counting = asyncio.create_task(self._count(row), name=f"announcement-count-{row.id}")
        try:
            await self._deliver(row, renewing)
        except Lost:
            log.warning("announcement taken over id=%s node=%s", row.id, self._node)
        finally:
            for task in (renewing, counting):
                task.cancel()
            await asyncio.gather(renewing, counting, return_exceptions=True)

    async def _count(self, row: Row[Any]) -> None:
        """Keep `pushed` current while sending: readers take the row as it is, so
        progress costs one count per round however many admins watch it. The count
        reads every attempt so far: a round waits ten times as long as the last count
        took, so a large announcement's counting stays a tenth of a connection's time."""
        a = _announcements.c
        loop = asyncio.get_running_loop()
        took = 0.0
        while True:
            await asyncio.sleep(max(COUNT_SECONDS, 10 * took))
            started = loop.time()
            try:
                async with self._engine.begin() as conn:
                    counts = await push_counts(conn, row)
                    await conn.execute(
                        update(_announcements)
                        .where(a.id == row.id, a.claimed_by == self._node, a.status == "sending")
                        .values(pushed=counts.pushed)
                    )
            except Exception as exc:  # the next round counts again
                log.warning(
                    "announcement not counted id=%s node=%s error=%s",
                    row.id,
                    self._node,
                    type(exc).__name__,
                )
            finally:
                # A count that failed (timed out) spaces the next one out too.
                took = loop.time() - started

    async def _renew(self, announcement_id: str) -> None:
        """Keep the lease while working; stop (Lost) once another node holds it."""
        a = _announcements.c
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                async with self._engine.begin() as conn:
                    kept = await conn.scalar(
                        update(_announcements)
                        .where(a.id == announcement_id, a.claimed_by == self._node)
                        .values(lease_until=self._lease_end())
                        .returning(a.id)
                    )
            except Exception as exc:  # the next round tries again, well within the lease
                log.warning(
                    "announcement lease not renewed id=%s node=%s error=%s",
                    announcement_id,
                    self._node,
                    type(exc).__name__,
                )
                continue
            if kept is None:
                raise Lost(announcement_id)

    async def _deliver(self, row: Row[Any], renewing: asyncio.Task[None]) -> None:
        listed = sorted(set(row.user_ids)) if row.audience == "list" and row.user_ids else None
        cursor: int = row.cursor
        jobs: list[str] = []
        failures = 0
        failing_since = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if renewing.done():
                renewing.result()  # raises Lost
            if listed is not None:
                start = _after(listed, cursor)
                wanted = listed[start : start + self._chunk]
            else:
                async with self._engine.connect() as conn:
                    wanted = list(
                        (
                            await conn.execute(
                                select(_users.c.id)
                                .where(_users.c.id > cursor)
                                .order_by(_users.c.id)
                                .limit(self._chunk)
                            )
                        ).scalars()
                    )
            if not wanted:
                break
            await quiet_turn()
            try:
                chunk = await self._write_chunk(row, wanted)
                failures = 0
            except Lost:
                raise
            except Exception as exc:
                failures += 1
                if failures == 1:
                    failing_since = loop.time()
                if database_unavailable(exc):  # an outage: one line per try, no trace
                    log.warning(
                        "announcement chunk failed id=%s cursor=%d attempt=%d error=%s",
                        row.id,
                        cursor,
                        failures,
                        type(exc).__name__,
                    )
                else:
                    log.exception(
                        "announcement chunk failed id=%s cursor=%d attempt=%d",
                        row.id,
                        cursor,
                        failures,
                    )
                if loop.time() - failing_since >= CHUNK_RETRY_SECONDS:
                    # Those not reached are counted failed, not left out of the counts.
                    left = await self._remaining(listed, cursor)
                    await self._push.announcement_jobs_done(jobs)
                    await self._finish(row, "failed", left)
                    return
                # The lease is renewed meanwhile (_renew): an outage of minutes is waited
                # out, and a node that loses the lease stops at the next chunk (Lost).
                await asyncio.sleep(min(CHUNK_BACKOFF_MAX, 0.5 * 2 ** min(failures, 8)))
                continue
            cursor = wanted[-1]
            if chunk.committed:
                jobs.append(chunk.job_id)
                self._push.announcement_committed(chunk.job_id, chunk.committed)
                # Keep the lane's backlog bounded: the messages wait in the database, not
                # in this node's memory.
                await self._push.lane.wait_below(LANE_BACKLOG)
        # Done once its pushes are recorded, so the final `pushed` is the whole count.
        await self._push.announcement_jobs_done(jobs)
        await self._finish(row, "done")

    async def _remaining(self, listed: list[int] | None, cursor: int) -> int:
        """Recipients after the cursor (not reached)."""
        if listed is not None:
            return len(listed) - _after(listed, cursor)
        async with self._engine.connect() as conn:
            return int(
                await conn.scalar(
                    select(func.count()).select_from(_users).where(_users.c.id > cursor)
                )
                or 0
            )

    async def _wait_for_other_nodes(self, announcement_id: str) -> None:
        """Until no push job of the announcement is left (other nodes took some over after
        a node died), or PUSH_WAIT_SECONDS: then the counts are recorded as they are."""
        loop = asyncio.get_running_loop()
        until = loop.time() + PUSH_WAIT_SECONDS
        while loop.time() < until:
            async with self._engine.connect() as conn:
                left = await conn.scalar(
                    select(_jobs.c.id).where(_jobs.c.announcement_id == announcement_id).limit(1)
                )
            if left is None:
                return
            await asyncio.sleep(PUSH_WAIT_POLL)
        log.warning("announcement push jobs still open id=%s node=%s", announcement_id, self._node)

    async def _write_chunk(self, row: Row[Any], wanted: Sequence[int]) -> Chunk:
        """One chunk in one transaction, then its frames to those with a socket open."""
        dialect = self._engine.dialect.name
        async with self._engine.connect() as conn:
            users = list(
                (
                    await conn.execute(
                        select(_users.c.id).where(one_of(_users.c.id, wanted, dialect))
                    )
                ).scalars()
            )
        online = await self._presence.online(users) if users else set()
        now = utcnow()
        job_id = str(uuid.uuid4())
        async with self._engine.begin() as conn:
            a = _announcements.c
            # First: still ours? Also locks the row, so nothing else moves the cursor. It
            # answers the push job's lease end too, by the database's clock as every lease.
            kept = (
                await conn.execute(
                    update(_announcements)
                    .where(a.id == row.id, a.claimed_by == self._node, a.status == "sending")
                    .values(
                        cursor=wanted[-1],
                        recipients=a.recipients + len(users),
                        delivered_live=a.delivered_live + len(online),
                        failed=a.failed + len(wanted) - len(users),
                        lease_until=self._lease_end(),
                    )
                    .returning(a.id, db_later(dialect, self._push_lease).label("push_lease_until"))
                )
            ).first()
            if kept is None:
                raise Lost(row.id)
            job = {"id": job_id, "claimed_by": self._node, "lease_until": kept.push_lease_until}
            text = message_text(row.title, row.content)
            committed = await write_chunk(conn, row, users, text, now, job)
        for n, c in enumerate(committed):
            (user_id,) = c.participants
            if n % FRAMES_PER_TURN == 0:
                await quiet_turn()  # ordinary frames and sends go first
            if user_id in online:
                await self._fanout.publish(
                    (user_id,), dumps({"type": "message.new", "message": c.message})
                )
        log.info(
            "announcement chunk id=%s to=%d recipients=%d live=%d unknown=%d node=%s",
            row.id,
            wanted[-1],
            len(users),
            len(online),
            len(wanted) - len(users),
            self._node,
        )
        return Chunk(job_id, committed)

    async def _finish(self, row: Row[Any], status: str, not_reached: int = 0) -> None:
        a = _announcements.c
        await self._wait_for_other_nodes(row.id)
        counts = await self._final_counts(row)
        async with self._engine.begin() as conn:
            done = (
                await conn.execute(
                    update(_announcements)
                    .where(a.id == row.id, a.claimed_by == self._node, a.status == "sending")
                    .values(
                        status=status,
                        # Not counted: `pushed` as the last count while sending left it.
                        pushed=a.pushed if counts is None else counts.pushed,
                        # Unknown ids (counted per chunk), those every push failed, and those
                        # never reached (an announcement that failed).
                        failed=a.failed + (0 if counts is None else counts.failed) + not_reached,
                        finished_at=utcnow(),
                        claimed_by=None,
                        lease_until=None,
                    )
                    .returning(a.id, a.pushed)
                )
            ).first()
        if done is None:
            raise Lost(row.id)
        log.info(
            "announcement %s id=%s pushed=%d node=%s%s",
            status,
            row.id,
            done.pushed,
            self._node,
            "" if counts is not None else " (not counted at the end)",
        )

    async def _final_counts(self, row: Row[Any]) -> PushCounts | None:
        """The final count, tried FINAL_COUNT_TRIES times; None when every try failed:
        the announcement is recorded done with its counts as they stand, not claimed and
        counted again after every lease for ever."""
        for attempt in range(1, FINAL_COUNT_TRIES + 1):
            try:
                async with self._engine.connect() as conn:
                    return await push_counts(conn, row)
            except Exception as exc:
                log.warning(
                    "announcement not counted id=%s attempt=%d node=%s error=%s",
                    row.id,
                    attempt,
                    self._node,
                    type(exc).__name__,
                )
                if attempt < FINAL_COUNT_TRIES:
                    await asyncio.sleep(FINAL_COUNT_BACKOFF * attempt)
        return None


def _after(ids: Sequence[int], cursor: int) -> int:
    """The index of the first id above the cursor (ids sorted)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if ids[mid] <= cursor:
            lo = mid + 1
        else:
            hi = mid
    return lo
