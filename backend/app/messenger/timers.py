"""Durable timers: scheduled messages and reminders come due here.

The database holds every timer (a pending row with its due time); each node runs one
small loop that looks for due rows every `timer_poll_seconds` and claims them in
batches: one short transaction marks them as its own for `timer_lease_seconds`
(claimed_by, lease_until). On PostgreSQL the claim is SELECT ... FOR UPDATE SKIP LOCKED,
so nodes asking at once take different rows; on SQLite the one node takes them. A node
that dies holding rows leaves them pending: once the lease runs out, any node claims
them again. A node that stops lets go of what it has not finished, at once. Due times
and leases are the database's clock (db_clock), so nodes whose clocks disagree agree.

The claimed rows go to their kind (scheduled.ScheduledSends, reminders.Reminders),
which fires them and marks them done under this node's claim. Several batches may be
in flight at once, so a burst of due rows keeps the message writer's batches full; a
kind whose batches are all in flight is skipped for the round, so slow scheduled sends
never hold reminders back (nor the other way). A batch whose firing raised lets go of
its rows with a short backoff, rather than keeping them until the lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Column, Row, Table, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.config import Settings
from app.db import database_unavailable
from app.messenger.db_clock import db_later, db_now

log = logging.getLogger(__name__)

IN_FLIGHT = 4  # batches of one kind being fired at once on a node
STOP_WAIT = 5.0  # seconds batches under way may finish when the node stops
RETRY_BACKOFF = 1.0  # seconds a batch whose firing raised waits before it is claimed again


class TimerKind(Protocol):
    """A table of timers: rows with `status` "pending", due at `due`, claimed with
    `claimed_by` and `lease_until`."""

    name: str
    table: Table
    # Statuses a row may be claimed in: "pending", and a kind's own in-between one (a
    # reminder `firing` when its node died) once its lease runs out.
    claimable: tuple[str, ...]

    @property
    def due(self) -> Column[Any]: ...

    async def fire(self, rows: Sequence[Row[Any]]) -> None:
        """Fire rows claimed by this node and mark each done (or release it)."""
        ...


async def claim_due(
    engine: AsyncEngine, kind: TimerKind, node_id: str, lease_seconds: float, limit: int
) -> list[Row[Any]]:
    """Up to `limit` due rows of this kind, soonest first, now claimed by this node."""
    table = kind.table
    dialect = engine.dialect.name
    now = db_now(dialect)
    due = (
        select(table.c.id)
        .where(
            table.c.status.in_(kind.claimable),
            kind.due <= now,
            or_(table.c.lease_until.is_(None), table.c.lease_until < now),
        )
        .order_by(kind.due)
        .limit(limit)
    )
    if engine.dialect.name == "postgresql":
        # Rows another node is claiming right now are skipped, not waited for.
        due = due.with_for_update(skip_locked=True)
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
                update(table)
                .where(table.c.id.in_(due.scalar_subquery()))
                .values(claimed_by=node_id, lease_until=db_later(dialect, lease_seconds))
                .returning(*table.c)
            )
        ).all()
    return sorted(rows, key=lambda row: getattr(row, kind.due.key))


async def cancel_unclaimed(conn: AsyncConnection, table: Table, row_id: str) -> bool:
    """Cancel a pending timer no node is firing now; False when it is not pending, or a
    node holds a claim on it that has not run out (too late to cancel)."""
    now = db_now(conn.dialect.name)
    done = await conn.execute(
        update(table)
        .where(
            table.c.id == row_id,
            table.c.status == "pending",
            (table.c.claimed_by.is_(None)) | (table.c.lease_until < now),
        )
        .values(status="cancelled", claimed_by=None, lease_until=None)
    )
    return done.rowcount == 1


async def renew_lease(
    conn: AsyncConnection,
    table: Table,
    ids: Sequence[Any],
    node_id: str,
    status: str,
    lease_seconds: float,
) -> set[Any]:
    """Renew the lease of those of `ids` this node still holds in `status`: their ids
    (a row missing was taken over by another node once its lease ran out)."""
    renewed = await conn.execute(
        update(table)
        .where(table.c.id.in_(ids), table.c.claimed_by == node_id, table.c.status == status)
        .values(lease_until=db_later(conn.dialect.name, lease_seconds))
        .returning(table.c.id)
    )
    return set(renewed.scalars())


class TimerLoop:
    """Started with the node: looks for due timers of every kind and fires them."""

    def __init__(self, engine: AsyncEngine, settings: Settings, kinds: Sequence[TimerKind]) -> None:
        self._engine = engine
        self._node = settings.node_id
        self._poll = settings.timer_poll_seconds
        self._lease = settings.timer_lease_seconds
        self._batch = settings.timer_batch
        self._kinds = list(kinds)
        self._room = {kind.name: asyncio.Semaphore(IN_FLIGHT) for kind in self._kinds}
        self._firing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="timers")

    def wake(self) -> None:
        """Look now (a timer was just made due soon)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._firing:
            await asyncio.wait(self._firing, timeout=STOP_WAIT)
        for task in self._firing:
            task.cancel()
        await asyncio.gather(*self._firing, return_exceptions=True)
        # What was claimed and not finished goes back at once, not after the lease.
        for kind in self._kinds:
            try:
                await self._release_all(kind)
            except Exception as exc:  # the lease runs out instead
                log.warning("timers: releasing claims failed kind=%s error=%r", kind.name, exc)

    async def _release_all(self, kind: TimerKind) -> None:
        table = kind.table
        async with self._engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(table.c.claimed_by == self._node, table.c.status.in_(kind.claimable))
                .values(claimed_by=None, lease_until=None)
            )

    async def _release(self, kind: TimerKind, ids: Sequence[Any], backoff: float) -> None:
        """Let go of these rows (still pending, still ours): claimable again in `backoff`."""
        table = kind.table
        async with self._engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(
                    table.c.id.in_(ids),
                    table.c.claimed_by == self._node,
                    table.c.status.in_(kind.claimable),
                )
                .values(claimed_by=None, lease_until=db_later(self._engine.dialect.name, backoff))
            )

    async def _run(self) -> None:
        while True:
            more = False
            for kind in self._kinds:
                try:
                    more |= await self.look(kind)
                except Exception as exc:
                    if database_unavailable(exc):  # an outage: one line per look, no trace
                        log.warning(
                            "timers: database unavailable kind=%s error=%s",
                            kind.name,
                            exc.__class__.__name__,
                        )
                    else:
                        log.exception("timers: claiming due rows failed kind=%s", kind.name)
            if not more:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._poll)
                except TimeoutError:
                    pass
                self._wake.clear()

    async def look(self, kind: TimerKind) -> bool:
        """Claim one batch of due rows and start firing it; whether more may be due."""
        room = self._room[kind.name]
        if room.locked():
            return False  # every slot of this kind is firing: the other kinds go on
        await room.acquire()  # a batch's slot, held until it is fired (free: no wait)
        try:
            rows = await claim_due(self._engine, kind, self._node, self._lease, self._batch)
        except BaseException:
            room.release()
            raise
        if not rows:
            room.release()
            return False
        task = asyncio.create_task(self._fire(kind, rows), name=f"timers-{kind.name}")
        self._firing.add(task)
        task.add_done_callback(self._firing.discard)
        return len(rows) == self._batch

    async def _fire(self, kind: TimerKind, rows: Sequence[Row[Any]]) -> None:
        try:
            await kind.fire(rows)
        except Exception:
            log.exception("timers: firing failed kind=%s rows=%d", kind.name, len(rows))
            # Let go after a short backoff (not every poll, not after the whole lease).
            try:
                await self._release(kind, [row.id for row in rows], RETRY_BACKOFF)
            except Exception as exc:  # the lease runs out instead
                log.warning("timers: release failed kind=%s error=%r", kind.name, exc)
        finally:
            self._room[kind.name].release()
