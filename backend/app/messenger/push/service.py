"""The push service: takes committed messages, decides, delivers, records.

The push work of each commit is a `push_jobs` row written in that transaction
and leased to the node that wrote it. This node works its jobs in the background
(the WebSocket handler never waits on it), renews their leases while they run,
and deletes a job once every device of every message in it has an outcome. A job
whose lease ran out (its node died) is claimed by whichever node asks first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.config import Settings
from app.db import one_of, utcnow
from app.messenger.message_store import Committed, message_dict
from app.messenger.models import DeviceToken, Message, Participant, PushAttempt, PushJob
from app.messenger.presence import Presence
from app.messenger.push.base import Outcome, Provider
from app.messenger.push.decision import PlannedPush, offline_recipients, plan_for_offline
from app.messenger.push.delivery import Delivery, RetryPolicy, deliver
from app.messenger.push.providers import start_providers

log = logging.getLogger(__name__)

_jobs = PushJob.__table__
_messages = Message.__table__
_participants = Participant.__table__
_devices = DeviceToken.__table__
BATCH = 500
RECOVER_JOBS = 50  # jobs claimed per round (each holds up to one commit's messages)
PLAN_DELAY = 0.01  # seconds a committed message may wait to be planned with others
RECORD_DELAY = 0.05  # seconds an outcome may wait to be written with others


class Queued(NamedTuple):
    """A committed message waiting to be planned."""

    committed: Committed
    # Taken up from a node that stopped: devices that already have an outcome are skipped.
    recovered: bool


class PushService:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        presence: Presence,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._presence = presence
        self._providers: dict[str, Provider] = dict(providers or {})
        self._own_providers = providers is None
        self._policy = RetryPolicy(
            max_attempts=settings.push_max_attempts,
            base_seconds=settings.push_backoff_base_seconds,
            max_seconds=settings.push_backoff_max_seconds,
            timeout_seconds=settings.push_timeout_seconds,
        )
        # Each provider's in-flight limit (made at start, once the providers are known).
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._queue: list[Queued] = []
        self._wake = asyncio.Event()
        # Jobs this node holds: job id -> its messages still without outcomes, and back.
        self._jobs: dict[str, set[str]] = {}
        self._job_of: dict[str, str] = {}
        # Messages being pushed: message id -> devices still without an outcome.
        self._in_flight: dict[str, int] = {}
        self._outcomes: list[tuple[PlannedPush, Delivery]] = []
        self._finished: list[str] = []
        self._flush = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._deliveries: set[asyncio.Task[None]] = set()

    @property
    def providers(self) -> Mapping[str, Provider]:
        return self._providers

    async def start(self) -> None:
        if self._own_providers:
            self._providers = await start_providers(self._settings)
        self._limits = {
            name: asyncio.Semaphore(self._settings.push_concurrency_for(name))
            for name in self._providers
        }
        self._tasks = [
            asyncio.create_task(self._plan_loop(), name="push-plan"),
            asyncio.create_task(self._record_loop(), name="push-record"),
            asyncio.create_task(self._lease_loop(), name="push-lease"),
        ]

    async def stop(self) -> None:
        # Let deliveries under way finish briefly; what is cut off stays leased and is
        # taken up again (by this node on its next start or another) once the lease ends.
        if self._deliveries:
            await asyncio.wait(self._deliveries, timeout=5)
        for task in self._deliveries:
            task.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._deliveries, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._record()
        if self._own_providers:
            for provider in self._providers.values():
                with contextlib.suppress(Exception):
                    await provider.close()

    def job_committed(self, job_id: str, committed: list[Committed]) -> None:
        """A commit of this node wrote a job (leased to this node) for these new messages:
        hold the job and queue its messages for planning."""
        self._take(job_id, committed, recovered=False)

    def _take(self, job_id: str, committed: Iterable[Committed], recovered: bool) -> None:
        """The one way a job reaches this node's push work: committed here, or recovered."""
        queued = [Queued(c, recovered) for c in committed]
        if not queued:
            return
        self._jobs[job_id] = {q.committed.message["id"] for q in queued}
        for q in queued:
            self._job_of[q.committed.message["id"]] = job_id
        self._queue += queued
        self._wake.set()

    async def recover(self) -> int:
        """Claim jobs whose lease ran out and queue them; how many were claimed."""
        now = utcnow()
        expired = (
            select(_jobs.c.id)
            .where(_jobs.c.lease_until < now)
            .order_by(_jobs.c.created_at)
            .limit(RECOVER_JOBS)
            .with_for_update(skip_locked=True)
        )
        async with self._engine.begin() as conn:
            claimed: list[tuple[str, list[str]]] = [
                (r.id, r.message_ids)
                for r in await conn.execute(
                    update(PushJob)
                    .where(_jobs.c.id.in_(expired), _jobs.c.lease_until < now)
                    .values(claimed_by=self._settings.node_id, lease_until=self._lease_end())
                    .returning(_jobs.c.id, _jobs.c.message_ids)
                )
            ]
            if not claimed:
                return 0
            wanted = [m for _, message_ids in claimed for m in message_ids]
            messages = {
                r.id: message_dict(r)
                for r in await conn.execute(select(_messages).where(_messages.c.id.in_(wanted)))
            }
            members: dict[str, set[int]] = {}
            for r in await conn.execute(
                select(_participants.c.conversation_id, _participants.c.user_id).where(
                    _participants.c.conversation_id.in_(
                        {m["conversation_id"] for m in messages.values()}
                    )
                )
            ):
                members.setdefault(r.conversation_id, set()).add(r.user_id)
            jobs = {
                job_id: [
                    Committed(m, frozenset(members.get(m["conversation_id"], ())))
                    for m in (messages[i] for i in message_ids if i in messages)
                ]
                for job_id, message_ids in claimed
            }
            # A job whose messages are all gone (their conversation deleted) has nothing left.
            if empty := [job_id for job_id, committed in jobs.items() if not committed]:
                await conn.execute(delete(PushJob).where(_jobs.c.id.in_(empty)))
        for job_id, committed in jobs.items():
            self._take(job_id, committed, recovered=True)
        metrics.push_jobs_recovered.inc(len(claimed))
        log.info(
            "push jobs recovered jobs=%d messages=%d node=%s",
            len(claimed),
            len(messages),
            self._settings.node_id,
        )
        return len(claimed)

    def _lease_end(self) -> datetime:
        return utcnow() + timedelta(seconds=self._settings.push_lease_seconds)

    async def _plan_loop(self) -> None:
        while True:
            await self._wake.wait()
            # Let the messages of a few commits gather: one presence round trip (and at
            # most one set of queries) for all of them, not one per commit.
            await asyncio.sleep(PLAN_DELAY)
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                try:
                    await self._plan(batch)
                except Exception:
                    # The jobs stay leased and are taken up again when the lease ends.
                    log.exception("push planning failed messages=%d", len(batch))

    async def _plan(self, batch: list[Queued]) -> None:
        participants = {
            q.committed.message["conversation_id"]: q.committed.participants for q in batch
        }
        plans: list[PlannedPush] = []
        # Presence first, once for the whole batch: when every recipient is online (the
        # common case under load) the database is not asked at all.
        offline = await offline_recipients(
            self._presence, [q.committed.message for q in batch], participants
        )
        if offline:
            async with self._engine.connect() as conn:
                for recovered in (False, True):
                    messages = [q.committed.message for q in batch if q.recovered is recovered]
                    conversations = {m["conversation_id"] for m in messages}
                    wanted = {(c, u) for c, u in offline if c in conversations}
                    if wanted:
                        plans += await plan_for_offline(
                            conn,
                            messages,
                            participants,
                            wanted,
                            self._settings.public_base_url,
                            skip_done=recovered,
                        )
        # Devices whose provider is off are left alone (that was said once, at start).
        plans = [p for p in plans if p.device.provider in self._providers]
        per_message: dict[str, int] = {}
        for plan in plans:
            per_message[plan.message_id] = per_message.get(plan.message_id, 0) + 1
        for q in batch:
            message_id = q.committed.message["id"]
            count = per_message.get(message_id, 0)
            if count:
                self._in_flight[message_id] = count
            else:
                self._finished.append(message_id)
        committed_at = message_times(batch)
        for plan in plans:
            task = asyncio.create_task(self._deliver(plan, committed_at))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
        self._flush.set()

    async def _deliver(self, plan: PlannedPush, committed_at: Mapping[str, float]) -> None:
        name = plan.device.provider
        delivery = await deliver(
            self._providers[name], plan.device, plan.notification, self._policy, self._limits[name]
        )
        metrics.pushes.labels(name, delivery.outcome.value).inc()
        if delivery.accepted_at is not None and plan.message_id in committed_at:
            metrics.push_latency.labels(name).observe(
                max(0.0, delivery.accepted_at - committed_at[plan.message_id])
            )
        log.info(
            "push %s provider=%s message=%s device=%s user=%s attempts=%d ms=%.1f%s",
            delivery.outcome,
            name,
            plan.message_id,
            plan.device.id,
            plan.device.user_id,
            delivery.attempts,
            delivery.latency_ms,
            f" error={delivery.error}" if delivery.error else "",
        )
        self._outcomes.append((plan, delivery))
        left = self._in_flight.get(plan.message_id, 1) - 1
        if left > 0:
            self._in_flight[plan.message_id] = left
        else:
            self._in_flight.pop(plan.message_id, None)
            self._finished.append(plan.message_id)
        self._flush.set()

    async def _record_loop(self) -> None:
        while True:
            await self._flush.wait()
            # Let a burst gather: one transaction for many outcomes and finished jobs,
            # not one per push or per message batch.
            await asyncio.sleep(RECORD_DELAY)
            self._flush.clear()
            try:
                await self._record()
            except Exception:
                log.exception("recording push outcomes failed")
                await asyncio.sleep(1)
                self._flush.set()

    async def _record(self) -> None:
        """Write outcomes, update devices, delete finished jobs: a few statements for all."""
        outcomes, self._outcomes = self._outcomes, []
        finished, self._finished = self._finished, []
        if not outcomes and not finished:
            return
        now = utcnow()
        try:
            async with self._engine.begin() as conn:
                if outcomes:
                    await conn.execute(
                        insert(PushAttempt),
                        [
                            {
                                "message_id": plan.message_id,
                                "device_id": plan.device.id,
                                "user_id": plan.device.user_id,
                                "provider": plan.device.provider,
                                "outcome": d.outcome.value,
                                "attempts": d.attempts,
                                "latency_ms": d.latency_ms,
                                "error": d.error[:500] if d.error else None,
                                "created_at": now,
                            }
                            for plan, d in outcomes
                        ],
                    )
                delivered = {p.device.id for p, d in outcomes if d.outcome == Outcome.DELIVERED}
                dead = {p.device.id for p, d in outcomes if d.outcome == Outcome.DEAD_TOKEN}
                dialect = self._engine.dialect.name
                if delivered:
                    await conn.execute(
                        update(DeviceToken)
                        .where(one_of(_devices.c.id, delivered, dialect))
                        .values(last_used_at=now)
                    )
                if dead:
                    await conn.execute(
                        update(DeviceToken)
                        .where(one_of(_devices.c.id, dead, dialect))
                        .values(is_active=False)
                    )
                    log.info("devices deactivated (dead token) count=%d", len(dead))
                if done := self._jobs_done(finished):
                    await conn.execute(delete(PushJob).where(one_of(_jobs.c.id, done, dialect)))
        except Exception:
            # Put them back so the next flush tries again.
            self._outcomes[:0] = outcomes
            self._finished[:0] = finished
            raise
        self._forget(finished)

    def _jobs_done(self, finished: list[str]) -> list[str]:
        """The jobs whose messages still open are all among these."""
        done = set(finished)
        jobs = {self._job_of[m] for m in finished if m in self._job_of}
        return [job for job in jobs if self._jobs[job] <= done]

    def _forget(self, finished: list[str]) -> None:
        """Once recorded: these messages are done, and the jobs they emptied gone."""
        for message_id in finished:
            job_id = self._job_of.pop(message_id, None)
            if job_id is not None and job_id in self._jobs:
                left = self._jobs[job_id]
                left.discard(message_id)
                if not left:
                    del self._jobs[job_id]

    async def _lease_loop(self) -> None:
        """Keep this node's jobs leased, and take up those whose node is gone."""
        interval = self._settings.push_recovery_interval_seconds
        while True:
            try:
                await self.recover()
                working = {self._job_of[m] for m in self._in_flight if m in self._job_of}
                if working:
                    async with self._engine.begin() as conn:
                        await conn.execute(
                            update(PushJob)
                            .where(
                                _jobs.c.id.in_(working),
                                _jobs.c.claimed_by == self._settings.node_id,
                            )
                            .values(lease_until=self._lease_end())
                        )
            except Exception:
                log.exception("push lease loop failed node=%s", self._settings.node_id)
            await asyncio.sleep(interval)


def message_times(batch: list[Queued]) -> dict[str, float]:
    """When each message was committed, as time.time() (its created_at, set at commit)."""
    return {q.committed.message["id"]: q.committed.message["created_at"].timestamp() for q in batch}
