"""The push service: takes committed messages, decides, delivers, records.

The push work of each commit is a `push_jobs` row written in that transaction and
leased to the node that wrote it. This node works its jobs in the background (the
WebSocket handler never waits on it), renews the lease of every job it holds until
the job is recorded done, and then deletes it, unless another node has taken it
over meanwhile. A job whose lease ran out (its node died or stalled) is claimed by
whichever node asks first.

Deliveries planned and not finished are bounded per node: beyond the bound, planning
waits, and the jobs waiting keep their leases. So are the messages waiting to be
planned: beyond as many again, a new job stays in the database until its lease runs
out and a node with room claims it.

A recipient skipped because they looked active is remembered for a while (recheck);
once attention says they are active nowhere, the messages they have not read get a job
of their own, written and held like any other, so a crash in between loses nothing.

A push the provider took for a message its recipient read meanwhile (the read came
while the push was in flight, before its outcome was recorded, so the read's clearing
found nothing) is cleared as soon as its outcome is recorded (`read_already`).

A recipient with a push delay gets a delayed job (push.jobs), claimed when it is due:
the node that wrote it wakes then, and every node looks ahead for the next one due
at each recovery round (after a restart, too). Every decision, with its reason, goes
to push_decisions from the record loop (push.decision_log), never the send path.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.config import Settings
from app.db import one_of, utcnow
from app.messenger.message_store import Committed
from app.messenger.models import DeviceToken, PushAttempt, PushDecision, PushJob
from app.messenger.presence import Presence
from app.messenger.push.base import Device, Notification, Outcome, Provider
from app.messenger.push.decision import (
    Candidate,
    PlannedPush,
    decide,
    inattentive_recipients,
    read_marks,
    recipients,
)
from app.messenger.push.decision_log import ONLINE, SENT, DecisionLog
from app.messenger.push.delivery import Delivery, RetryPolicy, deactivate_dead, deliver
from app.messenger.push.history import (
    Unreached,
    accepted_time,
    attempt_row,
    blank_deleted,
    notification_row,
    unique_rows,
    write_notifications,
)
from app.messenger.push.image_links import ImageLinks
from app.messenger.push.jobs import (
    CHUNK,
    delayed_jobs,
    load_committed,
    next_delayed,
    write_delayed,
)
from app.messenger.push.lane import Lane, lane_cap, quiet_turn
from app.messenger.push.providers import start_providers
from app.messenger.push.read_connection import KeptReadConnection
from app.messenger.push.recheck import Recheck

log = logging.getLogger(__name__)

_jobs = PushJob.__table__
_devices = DeviceToken.__table__
BATCH = 500
# The announcement lane plans this many at a time: planning runs without a pause, and
# 500 recipients of an announcement held the event loop for tens of ms.
LOW_BATCH = 50
LANE_TURN = 16  # announcement deliveries started between two looks at the event loop
RECOVER_JOBS = 50  # jobs claimed per round (each holds up to one commit's messages)
RECORD_DELAY = 0.05  # seconds an outcome may wait to be written with others
PLAN_ATTEMPTS = 3  # a batch whose planning fails this often in a row is let go
DUE_MARGIN = 0.005  # seconds past a delayed job's time before it is claimed (lease_until < now)
DUE_LIMIT = 10_000  # due times a node keeps waking for; the recovery round finds the rest

# One message of one job.
Item = tuple[str, str]
# Told (user, conversation, read mark) of a push delivered for a message read already.
ReadAlready = Callable[[int, str, int], None]


class Queued(NamedTuple):
    """A committed message of a job this node holds, waiting to be planned."""

    job_id: str
    committed: Committed
    # Taken up again (recovered, or a re-check): devices with an outcome are skipped.
    skip_done: bool
    # A re-check job's one recipient, pushed only while the message is unread; None: all.
    recipient: int | None
    # A delayed job come due: the recipient's push delay is over.
    after_delay: bool = False
    # An announcement's: planned and delivered in the low-priority lane (push.lane).
    low: bool = False

    @property
    def item(self) -> Item:
        return (self.job_id, self.committed.message["id"])


class PushService:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        attention: Presence,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        # Who is looking: active sockets only (app.messenger.attention).
        self._attention = attention
        self._providers: dict[str, Provider] = dict(providers or {})
        self._own_providers = providers is None
        self._node = settings.node_id
        # The planner's reads: one connection kept, not one from the pool per batch.
        self._reads = KeptReadConnection(engine)
        self._policy = RetryPolicy.from_settings(settings)
        # Signs the thumbnail links of image pushes (the key is read at the first one).
        self._images = ImageLinks(lambda: settings.signing_key, settings.public_base_url)
        # Each provider's in-flight limit (made at start, once the providers are known).
        self._limits: dict[str, asyncio.Semaphore] = {}
        # Deliveries planned and not finished, whatever the provider.
        self._room = asyncio.Semaphore(settings.push_max_pending_deliveries)
        self._queue: list[Queued] = []
        self._wake = asyncio.Event()
        # Announcement pushes: their own queue and delivery cap, behind ordinary work.
        self.lane: Lane[Queued] = Lane()
        self._low_started = 0  # announcement deliveries started (LANE_TURN)
        # Jobs this node holds, from commit (or claim) until recorded done: job id -> its
        # messages still without an outcome on every device. All of them are kept leased.
        self._jobs: dict[str, set[str]] = {}
        # Items being pushed: devices still without an outcome.
        self._in_flight: dict[Item, int] = {}
        self._outcomes: list[tuple[PlannedPush, Delivery]] = []
        self._finished: list[Item] = []
        self._flush = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # The announcement lane's batch whose deliveries are being started (_plan_loop).
        self._starting: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        # Recipients skipped because they looked active, looked at again until they go.
        self.recheck = Recheck(settings, engine, attention, hold=self._hold_recheck)
        # Jobs being deleted as done right now: not lost when a renewal misses them.
        self._closing: set[str] = set()
        # Every decision with its reason, waiting to be written by the record loop.
        self.decisions = DecisionLog()
        # Notifications with deliveries under way: those that reach no device are decided
        # `failed` or `dead_token` once the last outcome is in.
        self._unreached = Unreached()
        # When delayed jobs are due (time.time()), soonest first; and the same as a set.
        self._due: list[float] = []
        self._due_set: set[float] = set()
        self._due_changed = asyncio.Event()
        # Clearing's entry (set once clearing is made): a delivered push whose message
        # its recipient has read by the time its outcome is recorded is cleared.
        self.read_already: ReadAlready | None = None

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
        self.lane.cap = asyncio.Semaphore(
            lane_cap(
                self._settings.push_announcement_concurrency,
                {name: self._settings.push_concurrency_for(name) for name in self._providers},
                self._settings.push_max_pending_deliveries,
            )
        )
        self._tasks = [
            asyncio.create_task(self._plan_loop(self._queue, self._wake, BATCH), name="push-plan"),
            asyncio.create_task(
                self._plan_loop(self.lane.queue, self.lane.wake, LOW_BATCH, overlap=True),
                name="push-low",
            ),
            asyncio.create_task(self._record_loop(), name="push-record"),
            asyncio.create_task(self._lease_loop(), name="push-lease"),
            asyncio.create_task(self._due_loop(), name="push-due"),
        ]
        await self.recheck.start()

    async def stop(self) -> None:
        await self.recheck.stop()
        # Let deliveries under way finish briefly; what is cut off stays leased and is
        # taken up again (by this node on its next start or another) once the lease ends.
        if self._deliveries:
            await asyncio.wait(self._deliveries, timeout=5)
        for task in self._deliveries:
            task.cancel()
        tasks = [*self._tasks, *([self._starting] if self._starting else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._deliveries, return_exceptions=True)
        self._starting = None
        await self._reads.close()
        with contextlib.suppress(Exception):
            await self._record(force=True)
        if self._own_providers:
            for provider in self._providers.values():
                with contextlib.suppress(Exception):
                    await provider.close()

    def job_committed(self, job_id: str, committed: list[Committed]) -> None:
        """A commit of this node wrote a job (leased to this node) for these new messages:
        hold the job and queue its messages for planning. With the queue full, the job is
        left in the database: once its lease runs out, a node with room takes it up."""
        if len(self._queue) >= self._settings.push_max_pending_deliveries:
            metrics.push_jobs_deferred.inc()
            return
        self._take(job_id, committed, skip_done=False)

    def announcement_committed(self, job_id: str, committed: list[Committed]) -> None:
        """An announcement's chunk wrote a job (leased to this node): its pushes go to the
        low-priority lane. The announcement job keeps the lane's backlog bounded."""
        queued = [Queued(job_id, c, False, None, low=True) for c in committed]
        if queued:
            self._jobs[job_id] = {q.committed.message["id"] for q in queued}
            self.lane.add(queued, self._jobs[job_id])

    async def announcement_jobs_done(self, job_ids: Collection[str]) -> None:
        """Until these announcement jobs are recorded done here (or let go)."""
        await self.lane.wait_done(job_ids, self._jobs)

    def _hold_recheck(
        self, job_id: str, committed: list[Committed], recipient: int, low: bool
    ) -> None:
        """The re-check wrote a job (leased to this node) for one recipient's messages;
        an announcement's goes to the low-priority lane, as its chunks' jobs do."""
        self._take(job_id, committed, skip_done=True, recipient=recipient, low=low)

    def _take(
        self,
        job_id: str,
        committed: Iterable[Committed],
        skip_done: bool,
        recipient: int | None = None,
        after_delay: bool = False,
        low: bool = False,
    ) -> None:
        """The one way a job reaches this node's push work: committed here, claimed, or
        written by the re-check. An announcement's (low) goes to the low-priority lane."""
        queued = [Queued(job_id, c, skip_done, recipient, after_delay, low) for c in committed]
        if not queued:
            return
        self._jobs[job_id] = {q.committed.message["id"] for q in queued}
        if low:
            self.lane.add(queued, self._jobs[job_id])
            return
        self._queue += queued
        self._wake.set()

    # -- taking up jobs left behind ---------------------------------------------------

    def _busy(self) -> bool:
        return self._room.locked() or len(self._queue) >= BATCH

    async def recover(self) -> int:
        """Claim jobs whose lease ran out (or delayed ones now due) and queue them; how
        many were claimed."""
        if self._busy():
            return 0  # busy: leave them to a node with room (or to a later round)
        now = utcnow()
        expired = (
            select(_jobs.c.id)
            .where(_jobs.c.lease_until < now)
            .order_by(_jobs.c.created_at)
            .limit(RECOVER_JOBS)
            .with_for_update(skip_locked=True)
        )
        async with self._engine.begin() as conn:
            rows = [
                r
                for r in await conn.execute(
                    update(PushJob)
                    .where(_jobs.c.id.in_(expired), _jobs.c.lease_until < now)
                    .values(claimed_by=self._node, lease_until=self._lease_end())
                    .returning(
                        _jobs.c.id,
                        _jobs.c.message_ids,
                        _jobs.c.recipient_id,
                        _jobs.c.after_delay,
                        _jobs.c.announcement_id,
                    )
                )
                # One of ours whose renewal came late: held already, now renewed.
                if r.id not in self._jobs
            ]
            claimed = [(r.id, r.message_ids, r.recipient_id, bool(r.after_delay)) for r in rows]
            # An announcement's jobs stay behind ordinary pushes, whoever takes them up.
            low = {r.id for r in rows if r.announcement_id is not None}
            if not claimed:
                return 0
            committed = await load_committed(conn, [m for _, ids, _, _ in claimed for m in ids])
            # A job whose messages are all gone (their conversation deleted) has nothing left.
            empty = [job for job, ids, _, _ in claimed if not any(m in committed for m in ids)]
            if empty:
                await conn.execute(delete(PushJob).where(_jobs.c.id.in_(empty)))
        for job_id, ids, recipient, after_delay in claimed:
            self._take(
                job_id,
                [committed[m] for m in ids if m in committed],
                True,
                recipient=recipient,
                after_delay=after_delay,
                low=job_id in low,
            )
        delayed = sum(1 for *_, after_delay in claimed if after_delay)
        if len(claimed) > delayed:
            metrics.push_jobs_recovered.inc(len(claimed) - delayed)
        log.info(
            "push jobs claimed recovered=%d delayed=%d messages=%d node=%s",
            len(claimed) - delayed,
            delayed,
            len(committed),
            self._node,
        )
        return len(claimed)

    def _lease_end(self) -> datetime:
        return utcnow() + timedelta(seconds=self._settings.push_lease_seconds)

    async def _lease_loop(self) -> None:
        """Keep every job this node holds leased, and take up those whose node is gone."""
        interval = self._settings.push_recovery_interval_seconds
        while True:
            try:
                await self._renew()
                await self.recover()
                await self._look_ahead()
            except Exception:
                log.exception("push lease loop failed node=%s", self._node)
            await asyncio.sleep(interval)

    # -- delayed pushes -------------------------------------------------------------------

    def _wake_at(self, at: float) -> None:
        """Claim delayed jobs at `at` (time.time())."""
        if at in self._due_set or len(self._due) >= DUE_LIMIT:
            return
        heapq.heappush(self._due, at)
        self._due_set.add(at)
        if self._due[0] == at:
            self._due_changed.set()

    async def _look_ahead(self) -> None:
        """Wake for the next delayed job due, whichever node wrote it (or before a restart)."""
        async with self._engine.connect() as conn:
            due = await next_delayed(conn)
        if due is not None:
            self._wake_at(due.timestamp())

    async def _due_loop(self) -> None:
        """Claim delayed jobs as they come due, rather than at the next recovery round."""
        while True:
            self._due_changed.clear()
            if not self._due:
                await self._due_changed.wait()
                continue
            wait = self._due[0] + DUE_MARGIN - time.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._due_changed.wait()
                continue
            now = time.time()
            while self._due and self._due[0] + DUE_MARGIN <= now:
                self._due_set.discard(heapq.heappop(self._due))
            try:
                while await self.recover() >= RECOVER_JOBS:
                    pass
                if self._busy():
                    self._wake_at(now + 1)  # those left wait for room a second
            except Exception:
                log.exception("claiming delayed push jobs failed node=%s", self._node)
                self._wake_at(now + 1)

    async def _renew(self) -> None:
        """Renew the lease of every job held: queued, being planned, waiting for room,
        delivering, or done and not yet recorded. A job another node has taken over (this
        node stalled past its lease) is let go: its messages not yet planned are left to
        that node."""
        held = list(self._jobs)
        if not held:
            return
        kept: set[str] = set()
        dialect = self._engine.dialect.name
        async with self._engine.begin() as conn:
            for i in range(0, len(held), CHUNK):
                result = await conn.execute(
                    update(PushJob)
                    .where(
                        one_of(_jobs.c.id, held[i : i + CHUNK], dialect),
                        _jobs.c.claimed_by == self._node,
                    )
                    .values(lease_until=self._lease_end())
                    .returning(_jobs.c.id)
                )
                kept.update(result.scalars())
        lost = {j for j in held if j not in kept and j in self._jobs and j not in self._closing}
        if lost:
            self._let_go(lost)
            log.warning(
                "push jobs taken over by another node jobs=%d node=%s", len(lost), self._node
            )

    def _let_go(self, jobs: Collection[str]) -> None:
        """Stop holding these jobs: unplanned messages leave the queue, and nothing this
        node records for them deletes them."""
        for job in jobs:
            self._jobs.pop(job, None)
        self._queue[:] = [q for q in self._queue if q.job_id not in jobs]
        self.lane.queue[:] = [q for q in self.lane.queue if q.job_id not in jobs]
        self.lane.progressed()

    # -- planning -----------------------------------------------------------------------

    async def _plan_loop(
        self, queue: list[Queued], wake: asyncio.Event, size: int, overlap: bool = False
    ) -> None:
        """Plan what waits in `queue` (the ordinary one, or the announcement lane's), up
        to `size` items at a time. `overlap` (the lane): the next batch is planned while
        this one's deliveries wait for the lane's slots, one batch starting at a time, in
        order."""
        failures = 0
        while True:
            await wake.wait()
            # No waiting for a batch to gather when idle: the push of a lone message goes
            # out at once. Under load, what commits while a batch is planned queues up
            # and is planned next as one batch (one attention round trip, one set of
            # queries), as the message writer batches its commits.
            await asyncio.sleep(0)
            wake.clear()
            while queue:
                batch = queue[:size]
                del queue[:size]
                self.lane.progressed()
                try:
                    start = await self._plan(batch)
                    failures = 0
                except Exception:
                    failures += 1
                    log.exception(
                        "push planning failed messages=%d attempt=%d", len(batch), failures
                    )
                    if failures < PLAN_ATTEMPTS:
                        queue[:0] = batch
                        await asyncio.sleep(failures)
                    else:
                        # Let go: their leases run out and they are taken up again.
                        self._let_go({q.job_id for q in batch})
                        failures = 0
                    continue
                if not overlap:
                    await start
                    continue
                if self._starting is not None:
                    try:
                        await self._starting
                    except BaseException:  # stopping: this batch is left to its lease
                        start.close()
                        raise
                self._starting = asyncio.create_task(start, name="push-low-start")

    def _wanted(self, q: Queued) -> set[tuple[str, int]]:
        """(conversation, user) of each recipient this item may push."""
        message = q.committed.message
        wanted = recipients([message], {message["conversation_id"]: q.committed.participants})
        if q.recipient is not None:
            wanted = {(c, u) for c, u in wanted if u == q.recipient}
        return wanted

    async def _plan(self, batch: list[Queued]) -> Coroutine[Any, Any, None]:
        """Decide for a batch; what starts its deliveries, which must be run: the batch's
        deliveries are counted in flight already, and its jobs held until they end."""
        # Each job as held now: one let go and claimed again while this batch waits for
        # room is held anew, and its new planning pushes it, not this one.
        held = {q.job_id: self._jobs.get(q.job_id) for q in batch}
        wanted = [self._wanted(q) for q in batch]
        # Attention first, once for the whole batch: when every recipient is looking (the
        # common case under load) the database is not asked at all.
        away_all = await inattentive_recipients(
            self._attention, set[tuple[str, int]]().union(*wanted)
        )
        decisions = self.decisions
        candidates: list[Candidate] = []
        owners: list[int] = []  # the item each candidate is of
        seen: set[tuple[str, int]] = set()
        for i, (q, w) in enumerate(zip(batch, wanted, strict=True)):
            message = q.committed.message
            conversation_id, seq, message_id = (
                message["conversation_id"],
                message["seq"],
                message["id"],
            )
            # Everyone looking (the common case under load) costs a dictionary look-up per
            # recipient: the re-check's and the decision log's.
            away = w & away_all if away_all else ()
            looking = [u for c, u in w if (c, u) not in away] if away else [u for _, u in w]
            if looking:
                self.recheck.skipped(conversation_id, seq, looking)
                decisions.add_many(looking, conversation_id, seq, message_id, ONLINE)
            decisions.own(message["sender_id"], conversation_id, seq)
            for _, u in away:
                # One message in two jobs of a batch (taken up again, re-checked): once.
                if (message_id, u) not in seen:
                    seen.add((message_id, u))
                    candidates.append(
                        Candidate(message, u, q.skip_done, q.after_delay, announcement=q.low)
                    )
                    owners.append(i)
        plans: list[list[PlannedPush]] = [[] for _ in batch]
        if candidates:
            async with self._reads.use() as conn:
                decided = await decide(
                    conn,
                    candidates,
                    self._settings.public_base_url,
                    self._providers,
                    images=self._images,
                )
            if decided.delayed:
                await self._write_delayed(
                    [
                        (
                            batch[owners[k]].job_id,
                            candidates[k].user_id,
                            candidates[k].message["id"],
                            due,
                        )
                        for k, due in decided.delayed
                    ]
                )
            for d in decided.decisions:
                decisions.add(d.user_id, d.conversation_id, d.seq, d.message_id, d.reason)
            for k, plan in decided.pushes:
                plans[owners[k]].append(plan)
                if plan.notification_id is not None and plan.conversation_id and plan.seq:
                    self._unreached.planned(
                        plan.notification_id,
                        plan.device.user_id,
                        plan.conversation_id,
                        plan.seq,
                        plan.message_id,
                    )
        for q, item_plans in zip(batch, plans, strict=True):
            if item_plans:
                self._in_flight[q.item] = len(item_plans)
            else:
                self._finished.append(q.item)
        self._flush.set()
        # Re-checks and delayed pushes are left out of the commit-to-accepted time: they
        # waited on purpose.
        committed_at = {
            q.committed.message["id"]: q.committed.message["created_at"].timestamp()
            for q in batch
            if q.recipient is None and not q.low
        }
        return self._start_batch(batch, plans, committed_at, held)

    async def _start_batch(
        self,
        batch: list[Queued],
        plans: list[list[PlannedPush]],
        committed_at: Mapping[str, float],
        held: Mapping[str, set[str] | None],
    ) -> None:
        """Start the deliveries planned for a batch, each once there is room for it."""
        started: set[int] = set()  # id() of the plans started
        try:
            for q, item_plans in zip(batch, plans, strict=True):
                for plan in item_plans:
                    if self._jobs.get(q.job_id) is not held[q.job_id]:
                        # Let go while waiting for room: whoever holds it now pushes it.
                        self._drop_unstarted(q, item_plans, started)
                        break
                    await self._start_delivery(q.item, plan, committed_at, q.low)
                    started.add(id(plan))
        except Exception:
            log.exception("push deliveries not started messages=%d", len(batch))
            # Their leases run out and they are taken up again (devices with an outcome
            # skipped).
            self._let_go({q.job_id for q in batch})
            for q, item_plans in zip(batch, plans, strict=True):
                self._drop_unstarted(q, item_plans, started)

    def _drop_unstarted(self, q: Queued, plans: list[PlannedPush], started: set[int]) -> None:
        """Forget the deliveries of an item let go that were not started."""
        self._in_flight.pop(q.item, None)
        for plan in plans:
            if id(plan) not in started and plan.notification_id is not None:
                self._unreached.cancel(plan.notification_id)

    async def _write_delayed(self, waiting: list[tuple[str, int, str, datetime]]) -> None:
        """Write delayed jobs for (job, recipient, message, due) before the job they came
        from can be done, and wake when they are due."""
        rows = delayed_jobs(waiting, utcnow())
        async with self._engine.begin() as conn:
            await write_delayed(conn, rows)
        for row in rows:
            self._wake_at(row["lease_until"].timestamp())
        log.info("push delayed jobs=%d messages=%d node=%s", len(rows), len(waiting), self._node)

    # -- delivering -----------------------------------------------------------------------

    async def _start_delivery(
        self, item: Item, plan: PlannedPush, committed_at: Mapping[str, float], low: bool = False
    ) -> None:
        """Start one delivery once there is room for it: until then planning waits. An
        announcement's first waits for a slot of its lane (push.lane)."""
        if low:
            # A look at the event loop every LANE_TURN deliveries, not before each: its
            # own deliveries in flight make every turn a little slower, and a look per
            # push held the lane to a trickle even on an idle node.
            self._low_started += 1
            if self._low_started % LANE_TURN == 0:
                await quiet_turn()
            await self.lane.cap.acquire()
        if self._room.locked():
            metrics.push_deliveries_waiting.inc()
            try:
                await self._room.acquire()
            finally:
                metrics.push_deliveries_waiting.dec()
        else:
            await self._room.acquire()
        metrics.push_deliveries_pending.inc()
        task = asyncio.create_task(self._deliver(item, plan, committed_at))
        self._deliveries.add(task)
        task.add_done_callback(self._delivery_done)
        if low:
            task.add_done_callback(lambda _: self.lane.cap.release())

    async def deliver_single(
        self, device: Device, notification: Notification, policy: RetryPolicy
    ) -> Delivery:
        """One delivery outside any job (a test push): it takes a place among the pending
        deliveries and a slot of its provider's limit like every push, so a burst of them
        cannot go past either."""
        name = device.provider
        await self._room.acquire()
        metrics.push_deliveries_pending.inc()
        try:
            return await deliver(
                self._providers[name], device, notification, policy, self._limits[name]
            )
        finally:
            self._room.release()
            metrics.push_deliveries_pending.dec()

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self._deliveries.discard(task)
        self._room.release()
        metrics.push_deliveries_pending.dec()

    async def _deliver(
        self, item: Item, plan: PlannedPush, committed_at: Mapping[str, float]
    ) -> None:
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
        if plan.notification_id is not None:
            unreached = self._unreached.outcome(plan.notification_id, delivery.outcome)
            if unreached is not None:
                self.decisions.add(
                    unreached.user_id,
                    unreached.conversation_id,
                    unreached.seq,
                    unreached.message_id,
                    Unreached.reason(unreached),
                )
        left = self._in_flight.get(item, 1) - 1
        if left > 0:
            self._in_flight[item] = left
        else:
            self._in_flight.pop(item, None)
            self._finished.append(item)
        self._flush.set()

    # -- recording ------------------------------------------------------------------------

    async def _record_loop(self) -> None:
        while True:
            due = self.decisions.next_due()
            if due is None:
                await self._flush.wait()
            elif not self._flush.is_set():
                # Nothing else to write: wake when the oldest open run of decisions is due.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due):
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

    async def _record(self, force: bool = False) -> None:
        """Write outcomes and decisions, update devices, delete finished jobs: a few
        statements for all. `force`: every decision, the open runs too (stopping)."""
        for reason, count in self.decisions.counts().items():
            metrics.push_decisions.labels(reason).inc(count)
            if reason != SENT:
                metrics.pushes_skipped.labels(reason).inc(count)
        outcomes, self._outcomes = self._outcomes, []
        finished, self._finished = self._finished, []
        decided = self.decisions.take(force)
        if not outcomes and not finished and not decided:
            return
        now = utcnow()
        done = self._jobs_done(finished)
        self._closing = set(done)
        try:
            async with self._engine.begin() as conn:
                if outcomes:
                    # The history rides along: two more statements per flush, none per push.
                    rows = unique_rows(
                        notification_row(
                            plan.notification_id,
                            plan.device.user_id,
                            "announcement" if plan.message_id in self.lane.messages else "message",
                            plan.notification.title,
                            plan.notification.body,
                            now,
                            plan.conversation_id,
                            plan.message_id,
                        )
                        for plan, _ in outcomes
                        if plan.notification_id is not None
                    )
                    await write_notifications(conn, rows)
                    await blank_deleted(conn, rows)
                    await conn.execute(
                        insert(PushAttempt),
                        [
                            attempt_row(plan.message_id, plan.device, d, now)
                            | {
                                "conversation_id": plan.conversation_id,
                                "seq": plan.seq,
                                "notification_id": plan.notification_id,
                                "accepted_at": accepted_time(d),
                            }
                            for plan, d in outcomes
                        ],
                    )
                if decided:
                    await conn.execute(
                        insert(PushDecision), [{**row, "created_at": now} for row in decided]
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
                await deactivate_dead(conn, dead)
                if done:
                    # Only while still ours: a node that took the job over finishes it.
                    await conn.execute(
                        delete(PushJob).where(
                            one_of(_jobs.c.id, done, dialect), _jobs.c.claimed_by == self._node
                        )
                    )
        except Exception:
            # Put them back so the next flush tries again.
            self._outcomes[:0] = outcomes
            self._finished[:0] = finished
            dropped = self.decisions.dropped
            self.decisions.restore(decided)
            if self.decisions.dropped > dropped:
                log.warning(
                    "push decisions dropped count=%d node=%s (not written in time)",
                    self.decisions.dropped - dropped,
                    self._node,
                )
            raise
        finally:
            self._closing = set()
        self._forget(finished)
        await self._clear_read_already(outcomes)

    async def _clear_read_already(self, outcomes: list[tuple[PlannedPush, Delivery]]) -> None:
        """Queue clearing for delivered pushes whose recipient has read that far by now:
        a read that came while the push was in flight found nothing to clear. Asked after
        the outcomes are committed, so a read committed later finds them itself; one
        query per flush."""
        hook = self.read_already
        if hook is None:
            return
        pushed: dict[tuple[str, int], int] = {}  # (conversation, user) -> lowest seq pushed
        for plan, d in outcomes:
            if d.outcome == Outcome.DELIVERED and plan.conversation_id and plan.seq:
                key = (plan.conversation_id, plan.device.user_id)
                pushed[key] = min(plan.seq, pushed.get(key, plan.seq))
        if not pushed:
            return
        try:
            async with self._engine.connect() as conn:
                marks = await read_marks(conn, pushed, min(pushed.values()))
        except Exception as exc:
            # The next read of the conversation clears them.
            log.warning("push read marks not looked up node=%s %s", self._node, type(exc).__name__)
            return
        for (conversation_id, user_id), read in marks.items():
            if read >= pushed[(conversation_id, user_id)]:
                hook(user_id, conversation_id, read)

    def _jobs_done(self, finished: list[Item]) -> list[str]:
        """The held jobs whose messages still open are all among these."""
        closing: dict[str, set[str]] = {}
        for job, message_id in finished:
            closing.setdefault(job, set()).add(message_id)
        return [job for job, ids in closing.items() if job in self._jobs and self._jobs[job] <= ids]

    def _forget(self, finished: list[Item]) -> None:
        """Once recorded: these messages are done, and the jobs they emptied gone."""
        for job, message_id in finished:
            left = self._jobs.get(job)
            if left is not None:
                left.discard(message_id)
                if not left:
                    del self._jobs[job]
            self.lane.messages.discard(message_id)
        self.lane.progressed()
