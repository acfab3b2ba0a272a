"""Clearing: taking a conversation's notifications down from a user's devices once they
read it anywhere, or once a message of it is deleted.

A read mark that moves up to `seq` (a `read` frame or REST, on any node) looks for the
user's pushes in that conversation at or below `seq` that were delivered and not cleared
yet (push_attempts, by its (user_id, conversation_id) index): each device among them gets
one clearing push, whatever the number of messages it was shown, carrying the user's
unread total as its badge, and those rows get `cleared_at`. A read with nothing pushed
costs that one query, in the background.

The read never waits for it: marks are queued per user and conversation (a burst of
them is one clearing, up to the highest seq), a bounded number run at once, and past
QUEUE_LIMIT waiting on a node a new one is dropped, counted and logged: a notification
left on a lock screen is harmless next to a read that blocks.

Durability: nothing of a clearing is kept but the rows it looks at, and they are marked
cleared only after the provider's answer. A node that dies between the read and the
clear leaves them uncleared: the next read of that conversation (on any node) clears
them. Two nodes clearing the same rows at once (reads on both) may each send one; a
second clear of a notification already gone does nothing on the device.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.config import Settings
from app.db import one_of, utcnow
from app.locales import DEFAULT_LOCALE
from app.messenger.models import DeviceToken, PushAttempt
from app.messenger.push.base import Device, Notification, Outcome
from app.messenger.push.decision import unread_totals
from app.messenger.push.delivery import Delivery, RetryPolicy, deactivate_dead, deliver
from app.messenger.push.notification import clear_notification
from app.messenger.push.service import PushService
from app.models import NotificationSettings

log = logging.getLogger(__name__)

_attempts = PushAttempt.__table__
_devices = DeviceToken.__table__
_settings = NotificationSettings.__table__

QUEUE_LIMIT = 10_000  # clearings waiting or under way on one node; past it, dropped
WORKERS = 64  # clearings under way at once on one node
CONCURRENCY = 50  # clearing pushes in flight per provider (at most the provider's limit)
DROP_LOG_SECONDS = 10.0  # a run of drops is logged once per this many seconds


@dataclass(frozen=True, slots=True)
class _Work:
    """What to clear: a user's conversation up to a seq, or one message for everyone."""

    conversation_id: str
    user_id: int | None = None  # a read: this user's devices
    message_id: str | None = None  # a deleted message: every device it was shown on
    # A read from this device's notification action: it closed that itself, no push.
    skip_device: str | None = None


@dataclass(frozen=True, slots=True)
class _Shown:
    """One delivered, uncleared push: a device of a user was shown a message."""

    id: int
    user_id: int
    device_id: str
    seq: int


class Clearing:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        push: PushService,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        self._settings = settings
        self._engine = engine
        # The providers the push service started (known once it has started).
        self._push = push
        self._queue_limit = queue_limit
        self._policy = RetryPolicy.from_settings(settings)
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._slots = asyncio.Semaphore(WORKERS)
        # Work waiting (a read: the highest seq marked), and one task per work item.
        self._waiting: dict[_Work, int] = {}
        self._tasks: dict[_Work, asyncio.Task[None]] = {}
        self._stopped = False
        self._dropped = 0
        self._drop_logged_at = 0.0

    @property
    def pending(self) -> int:
        """Clearings waiting or under way on this node."""
        return len(self._tasks)

    def read_moved(
        self, user_id: int, conversation_id: str, seq: int, skip_device: str | None = None
    ) -> None:
        """The user's read mark moved up to `seq`: clear what their devices were shown of
        the conversation up to there (in the background), but for `skip_device`'s (the
        read came from its notification): its rows are only recorded cleared."""
        self._queue(_Work(conversation_id, user_id=user_id, skip_device=skip_device), seq)

    def message_deleted(self, conversation_id: str, message_id: str) -> None:
        """A message was deleted: clear its notification from every device it was shown
        on (in the background). The clear names the message (`message_id`, `reason:
        "deleted"`): a client closes the notification only if it shows that message,
        and takes its seq for no read mark."""
        self._queue(_Work(conversation_id, message_id=message_id), 0)

    def _queue(self, work: _Work, seq: int) -> None:
        if self._stopped:
            return  # shutting down: the rows stay uncleared, the next read clears them
        if work in self._tasks:
            if seq > self._waiting.get(work, -1):
                self._waiting[work] = seq
            return
        if len(self._tasks) >= self._queue_limit:
            self._drop(work)
            return
        self._waiting[work] = seq
        self._tasks[work] = asyncio.create_task(self._run(work))

    def _drop(self, work: _Work) -> None:
        metrics.push_clears_dropped.inc()
        self._dropped += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_SECONDS:
            log.warning(
                "push clearing dropped (queue full) count=%d limit=%d conversation=%s user=%s",
                self._dropped,
                self._queue_limit,
                work.conversation_id,
                work.user_id,
            )
            self._dropped, self._drop_logged_at = 0, now

    async def _run(self, work: _Work) -> None:
        try:
            async with self._slots:
                # Marks that came while one clearing ran make one more, to their highest.
                while (seq := self._waiting.pop(work, None)) is not None:
                    try:
                        await self._clear(work, seq)
                    except Exception as exc:
                        log.warning(
                            "push clearing failed conversation=%s user=%s message=%s %s",
                            work.conversation_id,
                            work.user_id,
                            work.message_id,
                            type(exc).__name__,
                        )
        finally:
            self._waiting.pop(work, None)
            del self._tasks[work]

    async def _clear(self, work: _Work, seq: int) -> None:
        shown = await self._shown(work, seq)
        if shown:
            read_seq = seq if work.user_id is not None else None
            await self._take_down(
                work.conversation_id, shown, read_seq, work.skip_device, work.message_id
            )

    async def _shown(self, work: _Work, seq: int) -> list[_Shown]:
        """The delivered, uncleared pushes this work clears: one indexed query."""
        delivered = (
            _attempts.c.conversation_id == work.conversation_id,
            _attempts.c.outcome == Outcome.DELIVERED.value,
            _attempts.c.cleared_at.is_(None),
        )
        columns = (
            _attempts.c.id,
            _attempts.c.user_id,
            _attempts.c.device_id,
            _attempts.c.seq,
        )
        if work.user_id is not None:
            query = select(*columns).where(
                _attempts.c.user_id == work.user_id, _attempts.c.seq <= seq, *delivered
            )
        else:
            query = select(*columns).where(_attempts.c.message_id == work.message_id, *delivered)
        async with self._engine.connect() as conn:
            rows = await conn.execute(query)
            return [_Shown(r.id, r.user_id, r.device_id, r.seq or 0) for r in rows]

    async def _take_down(
        self,
        conversation_id: str,
        shown: list[_Shown],
        read_seq: int | None,
        skip_device: str | None = None,
        deleted: str | None = None,
    ) -> None:
        """One clearing push per device shown something (the newest seq it was shown, or
        the read mark's; `deleted`: that message's), then its rows marked cleared."""
        by_device: dict[tuple[int, str], list[_Shown]] = {}
        for s in shown:
            by_device.setdefault((s.user_id, s.device_id), []).append(s)
        async with self._engine.connect() as conn:
            devices = {
                r.id: r
                for r in await conn.execute(
                    select(_devices).where(
                        one_of(
                            _devices.c.id,
                            {d for _, d in by_device},
                            self._engine.dialect.name,
                        )
                    )
                )
            }
            users = {u for u, _ in by_device}
            badges = await unread_totals(conn, users)
            # The clear's title is in the user's language (a browser may show it).
            locales = dict(
                (
                    await conn.execute(
                        select(_settings.c.user_id, _settings.c.locale).where(
                            _settings.c.user_id.in_(users)
                        )
                    )
                ).all()
            )

        providers = self._push.providers
        sends: list[tuple[Device, list[_Shown], Coroutine[Any, Any, Delivery]]] = []
        gone: list[_Shown] = []
        for (user_id, device_id), rows in by_device.items():
            row = devices.get(device_id)
            # A device removed, switched off, or registered by someone else since (never
            # tell another user about this one): nothing of this user's left to clear.
            if row is None or not row.is_active or row.user_id != user_id:
                gone += rows
                continue
            if device_id == skip_device:
                gone += rows  # it took its notification down itself
                continue
            if row.provider not in providers:
                continue  # its provider is off on this node: left for a read later
            device = Device(row.id, row.user_id, row.token, row.platform, row.provider)
            seq = read_seq if read_seq is not None else max(r.seq for r in rows)
            notification = clear_notification(
                conversation_id,
                seq,
                badges.get(user_id, 0),
                locales.get(user_id, DEFAULT_LOCALE),
                deleted_message_id=deleted,
            )
            sends.append((device, rows, self._send(device, notification)))

        deliveries: list[Delivery] = list(await asyncio.gather(*(s for _, _, s in sends)))
        cleared = [s.id for s in gone]
        dead: list[str] = []
        for (device, rows, _), delivery in zip(sends, deliveries, strict=True):
            metrics.push_clears.labels(device.provider, delivery.outcome.value).inc()
            log.info(
                "push clear %s provider=%s device=%s user=%s conversation=%s attempts=%d ms=%.1f%s",
                delivery.outcome,
                device.provider,
                device.id,
                device.user_id,
                conversation_id,
                delivery.attempts,
                delivery.latency_ms,
                f" error={delivery.error}" if delivery.error else "",
            )
            if delivery.outcome in (Outcome.DELIVERED, Outcome.DEAD_TOKEN):
                cleared += [r.id for r in rows]
            if delivery.outcome == Outcome.DEAD_TOKEN:
                dead.append(device.id)
            # Failed or given up: left uncleared, so the next read tries again.
        await self._record(cleared, dead)

    async def _send(self, device: Device, notification: Notification) -> Delivery:
        name = device.provider
        limit = self._limits.get(name)
        if limit is None:
            size = min(CONCURRENCY, self._settings.push_concurrency_for(name))
            limit = self._limits[name] = asyncio.Semaphore(size)
        return await deliver(self._push.providers[name], device, notification, self._policy, limit)

    async def _record(self, cleared: Collection[int], dead: Collection[str]) -> None:
        if not cleared and not dead:
            return
        dialect = self._engine.dialect.name
        async with self._engine.begin() as conn:
            if cleared:
                await conn.execute(
                    update(PushAttempt)
                    .where(
                        one_of(_attempts.c.id, cleared, dialect), _attempts.c.cleared_at.is_(None)
                    )
                    .values(cleared_at=utcnow())
                )
            await deactivate_dead(conn, dead)

    async def stop(self) -> None:
        """Let clearings under way finish briefly (the providers close next); what is cut
        off stays uncleared."""
        self._stopped = True
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
