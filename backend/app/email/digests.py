"""The digest pass: who is due, what they missed, one email each, sent once.

A pass goes through due users in chunks. For each chunk, one transaction claims the
rows (SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite's single writer lock),
reads their unread conversations (a few queries for the chunk), and moves each user's
schedule and cursor on: messages created up to the cursor are never mailed again,
whichever node or pass looks next. The emails are then sent over a few reused SMTP
connections while the next chunk is claimed. On PostgreSQL one node runs a pass at a
time (an advisory lock), so the schedule is worked once.

What counts as missed follows the push decision (push.decision): a message in a
conversation the user is still in, not theirs, not deleted, not from someone they
blocked, after their read mark, created in the period, not opened from a push (table
`notifications`), in a conversation not muted, snoozed or push-disabled, whose notify
level is `all`, or `mentions` and the message names them.

Nothing is lost to a failure: each email's outcome is recorded as the pass goes (per
chunk, and at the end even when the pass is cancelled); an email not sent gives its
period's messages back to the next digest, unless the server may have taken it (the
connection broke after DATA: "unknown", logged, never sent again). A pass stops early,
giving back what it has not sent, when the relay refuses us rather than an address,
after EMAIL_ABORT_AFTER_CONNECT_FAILURES failed connects in a row, or after
EMAIL_ABORT_AFTER_BOUNCES bounces in a row (those are not held against the addresses).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.advisory_locks import advisory_unlock, try_advisory_lock
from app.config import Settings
from app.db import one_of, utcnow
from app.email.compose import DigestEntry, digest_email
from app.email.links import unsubscribe_url
from app.email.mailer import Mailer, SendResult
from app.email.schedule import next_digest_at, period_key
from app.messenger.models import Conversation, Message, Notification, Participant
from app.messenger.push.quiet_hours import is_quiet
from app.models import Block, NotificationSettings, User

log = logging.getLogger(__name__)

_s = NotificationSettings.__table__
_p = Participant.__table__
_m = Message.__table__
_n = Notification.__table__
_c = Conversation.__table__
_u = User.__table__
_b = Block.__table__

LOCK_KEY = 0x6D736764  # "msgd": the same on every node
CHUNK = 2000
# Rows worked through between two yields to the event loop: sockets stay served.
_SLICE = 100
# A message committed this close to the cutoff may still be in flight: the cursor stops
# short of now by this much, and the next period covers it.
SETTLE = timedelta(seconds=2)


@dataclass
class DigestReport:
    ran: bool  # False when another node held the lock
    claimed: int = 0  # users whose period was due
    sent: int = 0
    empty: int = 0  # nothing new: no email
    quiet: int = 0  # in quiet hours: moved on, no email
    bounced: int = 0
    failed: int = 0  # not sent: the messages go to the next digest
    unknown: int = 0  # the connection broke after DATA: maybe delivered, not resent
    aborted: str | None = None  # why the pass stopped early (relay trouble)


@dataclass(frozen=True, slots=True)
class _Due:
    user_id: int
    email: str
    period: str
    preview: str
    locale: str
    time_zone: str
    floor: datetime  # the cursor before this claim


_Item = tuple[_Due, datetime, Callable[[], bytes]]
_Result = tuple[_Due, datetime, SendResult]
_NOT_SENT = SendResult("failed", 0, None, "not attempted: the pass stopped")


@dataclass
class _Outbox:
    """What the claim loop and the sending workers share during one pass."""

    # Each email is built by the worker that sends it, just before: the CPU it takes is
    # spread between network waits instead of held in one block.
    queue: asyncio.Queue[_Item | None]
    settings: Settings
    results: list[_Result] = field(default_factory=list)
    # Bounces of the current run of bounces: recorded once something else comes between
    # (a long run means relay trouble, and they are given back instead).
    bounces: list[_Result] = field(default_factory=list)
    connect_failures: int = 0  # in a row
    aborted: str | None = None

    def add(self, due: _Due, cutoff: datetime, result: SendResult) -> None:
        if self.aborted is not None and result.outcome not in ("sent", "unknown"):
            # After the stop nothing is held against an address: it all goes back (an
            # email accepted meanwhile, or maybe accepted, stays sent).
            result = _NOT_SENT
        if result.outcome == "bounced":
            self.bounces.append((due, cutoff, result))
            if len(self.bounces) >= self.settings.email_abort_after_bounces:
                self.abort(f"{len(self.bounces)} bounces in a row")
                self.results.extend((d, c, _NOT_SENT) for d, c, _ in self.bounces)
                self.bounces.clear()
            return
        self.results.extend(self.bounces)
        self.bounces.clear()
        if result.outcome == "unreachable":
            self.connect_failures += result.connect_failures
            if self.connect_failures >= self.settings.email_abort_after_connect_failures:
                self.abort(f"{self.connect_failures} failed connects in a row")
        else:
            self.connect_failures = 0  # a connection came up
        if result.outcome == "relay":
            self.abort(f"relay refused: {result.code} {result.detail}".strip())
        self.results.append((due, cutoff, result))

    def abort(self, why: str) -> None:
        if self.aborted is None:
            self.aborted = why
            log.warning("email digests stopping: %s", why)

    def take(self) -> list[_Result]:
        """The outcomes so far (bounces of an unfinished run stay), to be recorded."""
        done, self.results = self.results, []
        return done

    def take_all(self) -> list[_Result]:
        """Every outcome, and every email still queued given back: the pass is over."""
        done = self.take() + self.bounces
        self.bounces = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:
                done.append((item[0], item[1], _NOT_SENT))
        return done


async def run_digests(
    engine: AsyncEngine,
    settings: Settings,
    mailer: Mailer,
    *,
    force: bool = False,
    now: datetime | None = None,
    settle: timedelta = SETTLE,
) -> DigestReport:
    """One pass over the due digests (every one, however far off, with `force`), as of
    `now` (the clock's time unless given), covering messages up to `settle` before it."""
    at = now or utcnow()
    if engine.dialect.name != "postgresql":
        return await _pass(engine, settings, mailer, force, at, settle)
    async with engine.connect() as lock_conn:
        locked = await try_advisory_lock(lock_conn, LOCK_KEY)
        await lock_conn.commit()
        if not locked:
            log.info("email digests skipped: another node is running them")
            return DigestReport(ran=False)
        try:
            return await _pass(engine, settings, mailer, force, at, settle)
        finally:
            # Released even when the pass was cancelled: the next one must not wait for
            # this connection to be closed.
            await asyncio.shield(advisory_unlock(lock_conn, LOCK_KEY))


async def _pass(
    engine: AsyncEngine,
    settings: Settings,
    mailer: Mailer,
    force: bool,
    now: datetime,
    settle: timedelta,
) -> DigestReport:
    report = DigestReport(ran=True)
    outbox = _Outbox(asyncio.Queue(maxsize=2 * CHUNK), settings)
    workers = [
        asyncio.create_task(_worker(mailer, outbox), name=f"email-digest-{i}")
        for i in range(settings.email_connections)
    ]
    try:
        after = 0
        while outbox.aborted is None:
            async with engine.begin() as conn:
                last, emails = await _claim_chunk(
                    conn, settings, now, now - settle, after, force, report
                )
            if last is None:
                break
            after = last
            for item in emails:
                await _put(outbox.queue, item, workers)
            # What is done so far is recorded now: a crash later loses none of it.
            await _record(engine, outbox.take(), report)
        for _ in workers:
            await _put(outbox.queue, None, workers)
        await asyncio.gather(*workers)
    finally:
        # Shielded: a cancelled pass still records what was sent and gives back what
        # was not, before it lets go.
        await asyncio.shield(_finish(engine, workers, outbox, report))
    report.aborted = outbox.aborted
    log.info(
        "email digests done claimed=%d sent=%d empty=%d quiet=%d bounced=%d failed=%d "
        "unknown=%d aborted=%s",
        report.claimed,
        report.sent,
        report.empty,
        report.quiet,
        report.bounced,
        report.failed,
        report.unknown,
        outbox.aborted or "no",
    )
    return report


async def _finish(
    engine: AsyncEngine,
    workers: list[asyncio.Task[None]],
    outbox: _Outbox,
    report: DigestReport,
) -> None:
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    await _record(engine, outbox.take_all(), report)


async def _put(
    queue: asyncio.Queue[_Item | None], item: _Item | None, workers: list[asyncio.Task[None]]
) -> None:
    """Queue the item, waiting for room no longer than a worker lives: were they all
    gone, a full queue would otherwise block the pass for good."""
    if not queue.full():
        queue.put_nowait(item)
        return
    put = asyncio.ensure_future(queue.put(item))
    try:
        while not put.done():
            alive = [w for w in workers if not w.done()]
            if not alive:
                raise RuntimeError("every email worker stopped")
            await asyncio.wait([put, *alive], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not put.done():
            put.cancel()


async def _worker(mailer: Mailer, outbox: _Outbox) -> None:
    """Sends queued emails until told to stop; no email's trouble ends it."""
    async with mailer.connection() as conn:
        while (item := await outbox.queue.get()) is not None:
            due, cutoff, build = item
            if outbox.aborted is not None:
                outbox.add(due, cutoff, _NOT_SENT)
                continue
            try:
                result = await conn.send(due.email, build())
            except asyncio.CancelledError:
                # Cut short mid-send: maybe delivered if DATA went out, else given back.
                cut = SendResult("unknown" if conn.data_sent else "failed", 1, None, "cancelled")
                outbox.add(due, cutoff, cut)
                raise
            except Exception as exc:
                log.exception("email digest build or send failed user=%d", due.user_id)
                result = SendResult("failed", 1, None, type(exc).__name__)
            outbox.add(due, cutoff, result)


def _query_due(after: int, now: datetime, force: bool, dialect: str) -> Any:
    query = (
        # Only what a digest needs: 2,000 rows a chunk, a hundred thousand a run.
        select(
            _s.c.user_id,
            _s.c.email,
            _s.c.email_digest,
            _s.c.time_zone,
            _s.c.quiet_start,
            _s.c.quiet_end,
            _s.c.preview,
            _s.c.locale,
            _s.c.email_verified_at,
            _s.c.digest_covered_until,
        )
        .where(
            _s.c.user_id > after,
            _s.c.email_digest != "off",
            _s.c.email.is_not(None),
            _s.c.email_verified_at.is_not(None),
            _s.c.email_disabled_at.is_(None),
        )
        .order_by(_s.c.user_id)
        .limit(CHUNK)
    )
    if not force:
        query = query.where(_s.c.next_digest_at <= now)
    if dialect == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return query


async def _claim_chunk(
    conn: AsyncConnection,
    settings: Settings,
    now: datetime,
    cutoff: datetime,
    after: int,
    force: bool,
    report: DigestReport,
) -> tuple[int | None, list[_Item]]:
    """Claim the next chunk of due users (ids above `after`): their emails, to be built
    by the workers, and the last id looked at (None: no more)."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        # Take the write lock first, so a second pass (the operator's command next to a
        # running node) waits here and then sees this one's cursors.
        await conn.execute(text("UPDATE notification_settings SET user_id = user_id WHERE 0"))
    rows = (await conn.execute(_query_due(after, now, force, dialect))).all()
    if not rows:
        return None, []
    due: dict[int, _Due] = {}
    # Users whose schedule and cursor move to the same values, updated together: most
    # share a zone and quiet hours, so a chunk takes a statement or two, not one per user.
    moves: dict[tuple[datetime, datetime], list[int]] = defaultdict(list)
    # The same within a pass for the same zone, period and quiet hours.
    schedule = functools.lru_cache(maxsize=4096)(next_digest_at)
    quiet = functools.lru_cache(maxsize=4096)(is_quiet)
    for i, row in enumerate(rows):
        if i % _SLICE == _SLICE - 1:
            await asyncio.sleep(0)
        upcoming = schedule(
            row.email_digest,
            now,
            row.time_zone,
            row.quiet_start,
            row.quiet_end,
            settings.email_daily_digest_hour,
        )
        floor = row.digest_covered_until or row.email_verified_at
        if quiet(row.quiet_start, row.quiet_end, row.time_zone, now):
            report.quiet += 1
            moves[(upcoming, floor)].append(row.user_id)
            continue
        report.claimed += 1
        due[row.user_id] = _Due(
            row.user_id,
            row.email,
            row.email_digest,
            row.preview,
            row.locale,
            row.time_zone,
            floor,
        )
        moves[(upcoming, max(floor, cutoff))].append(row.user_id)
    entries = await _missed(conn, list(due), cutoff, now) if due else {}
    for (upcoming, covered), user_ids in moves.items():
        await conn.execute(
            update(_s)
            .where(one_of(_s.c.user_id, user_ids, dialect))
            .values(next_digest_at=upcoming, digest_covered_until=covered)
        )
    emails: list[_Item] = []
    for i, (user_id, d) in enumerate(due.items()):
        if i % _SLICE == _SLICE - 1:
            await asyncio.sleep(0)
        found = entries.get(user_id)
        if not found:
            report.empty += 1
            continue
        found.sort(key=lambda e: e.count, reverse=True)
        emails.append((d, cutoff, functools.partial(_build, settings, d, found)))
    return rows[-1].user_id, emails


def _build(settings: Settings, due: _Due, entries: list[DigestEntry]) -> bytes:
    """The email, built by the worker that sends it (its unsubscribe link's signature
    included: thousands of them in the claim loop would hold the event loop)."""
    return digest_email(
        sender=settings.email_from,
        to=due.email,
        user_id=due.user_id,
        period=_digest_key(due),
        entries=entries,
        preview_mode=due.preview,
        locale=due.locale,
        base_url=settings.public_base_url,
        unsubscribe_url=unsubscribe_url(settings, due.user_id, due.email),
    )


def _digest_key(due: _Due) -> str:
    """Names this digest alone: the period its cursor started in, and the cursor (in
    microseconds). The same on every retry of it, by any node, in any later pass: a
    server that got it twice can tell."""
    started = int(due.floor.timestamp() * 1_000_000)
    return f"{period_key(due.period, due.floor, due.time_zone)}.{started}"


def _missed_filter(cutoff: datetime, now: datetime) -> list[ColumnElement[bool]]:
    """What makes an unread message (joined with its reader's participant and settings
    rows) missed, but the notify level: as the push decision decides (see above)."""
    floor = func.coalesce(_s.c.digest_covered_until, _s.c.email_verified_at)
    opened = exists().where(
        _n.c.user_id == _p.c.user_id, _n.c.message_id == _m.c.id, _n.c.opened_at.is_not(None)
    )
    blocked = exists().where(_b.c.blocker_id == _p.c.user_id, _b.c.blocked_id == _m.c.sender_id)
    return [
        _m.c.sender_id != _p.c.user_id,
        _m.c.deleted_at.is_(None),
        _m.c.created_at > floor,
        _m.c.created_at <= cutoff,
        _p.c.muted.is_(False),
        _p.c.push_enabled.is_(True),
        or_(_p.c.mute_until.is_(None), _p.c.mute_until <= now),
        ~opened,
        ~blocked,
    ]


def _unread_join() -> Any:
    return _p.join(_s, _s.c.user_id == _p.c.user_id).join(
        _m,
        and_(_m.c.conversation_id == _p.c.conversation_id, _m.c.seq > _p.c.last_read_seq),
    )


async def _missed(
    conn: AsyncConnection, user_ids: list[int], cutoff: datetime, now: datetime
) -> dict[int, list[DigestEntry]]:
    """Each user's conversations with missed messages in (cursor, cutoff]: the count and
    the newest one (its sender and text). A few queries for the whole chunk."""
    dialect = conn.dialect.name
    where = [one_of(_p.c.user_id, user_ids, dialect), *_missed_filter(cutoff, now)]
    # (user, conversation) -> (count, newest seq)
    counts: dict[tuple[int, str], tuple[int, int]] = {}
    rows = await conn.execute(
        select(
            _p.c.user_id,
            _m.c.conversation_id,
            func.count().label("n"),
            func.max(_m.c.seq).label("last_seq"),
        )
        .select_from(_unread_join())
        .where(*where, _p.c.notify == "all")
        .group_by(_p.c.user_id, _m.c.conversation_id)
    )
    for r in rows:
        counts[(r.user_id, r.conversation_id)] = (int(r.n), int(r.last_seq))
    # `mentions`: only messages naming them. Mentions are a JSON list, read here (such
    # conversations are few, and their missed messages fewer).
    rows = await conn.execute(
        select(_p.c.user_id, _m.c.conversation_id, _m.c.seq, _m.c.mentions)
        .select_from(_unread_join())
        .where(*where, _p.c.notify == "mentions")
    )
    for i, r in enumerate(rows):
        if i % _SLICE == _SLICE - 1:
            await asyncio.sleep(0)
        if not isinstance(r.mentions, list) or r.user_id not in r.mentions:
            continue
        n, last = counts.get((r.user_id, r.conversation_id), (0, 0))
        counts[(r.user_id, r.conversation_id)] = (n + 1, max(last, int(r.seq)))
    if not counts:
        return {}
    pairs = list({(c, last) for (_, c), (_, last) in counts.items()})
    newest: dict[tuple[str, int], Any] = {}
    for i in range(0, len(pairs), 2000):
        found_rows = await conn.execute(
            select(
                _m.c.conversation_id,
                _m.c.seq,
                _m.c.content,
                _m.c.attachments,
                _u.c.display_name,
                _c.c.title,
                _c.c.type,
            )
            .select_from(
                _m.join(_u, _u.c.id == _m.c.sender_id).join(_c, _c.c.id == _m.c.conversation_id)
            )
            .where(tuple_(_m.c.conversation_id, _m.c.seq).in_(pairs[i : i + 2000]))
        )
        for row in found_rows:
            newest[(row.conversation_id, row.seq)] = row
    found: dict[int, list[DigestEntry]] = defaultdict(list)
    for i, ((user_id, conversation_id), (n, last)) in enumerate(counts.items()):
        if i % _SLICE == _SLICE - 1:
            await asyncio.sleep(0)
        msg = newest.get((conversation_id, last))
        if msg is None:
            continue
        title = msg.title if msg.type != "direct" else None
        found[user_id].append(
            DigestEntry(conversation_id, title, msg.display_name, msg.content, n, msg.attachments)
        )
    return found


async def _record(engine: AsyncEngine, results: list[_Result], report: DigestReport) -> None:
    """Bounces turn digests off for that address; failures give the period's messages
    back to the next digest (nothing was accepted, so nothing is sent twice); an
    unknown delivery keeps the cursor where it is (it may have arrived)."""
    bounced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    now = utcnow()
    for due, cutoff, result in results:
        if result.outcome == "sent":
            report.sent += 1
            continue
        if result.outcome == "unknown":
            report.unknown += 1
            log.warning(
                "email digest unknown delivery user=%d period=%s detail=%s",
                due.user_id,
                _digest_key(due),
                result.detail,
            )
            continue
        log.warning(
            "email digest %s user=%d code=%s attempts=%d detail=%s",
            result.outcome,
            due.user_id,
            result.code,
            result.attempts,
            result.detail,
        )
        if result.outcome == "bounced":
            report.bounced += 1
            reason = f"{result.code} {result.detail}".strip()[:200]
            bounced.append({"b_uid": due.user_id, "b_email": due.email, "b_reason": reason})
        else:
            report.failed += 1
            failed.append({"b_uid": due.user_id, "b_floor": due.floor, "b_cutoff": cutoff})
    if not (bounced or failed):
        return
    async with engine.begin() as conn:
        if bounced:
            await conn.execute(
                update(_s)
                .where(_s.c.user_id == bindparam("b_uid"), _s.c.email == bindparam("b_email"))
                .values(
                    email_digest="off",
                    next_digest_at=None,
                    email_disabled_at=now,
                    email_disabled_reason=bindparam("b_reason"),
                ),
                bounced,
            )
        if failed:
            await conn.execute(
                update(_s)
                .where(
                    _s.c.user_id == bindparam("b_uid"),
                    _s.c.digest_covered_until == bindparam("b_cutoff"),
                )
                .values(digest_covered_until=bindparam("b_floor")),
                failed,
            )


class DigestLoop:
    """Started with the app: looks for due digests every EMAIL_DIGEST_INTERVAL_SECONDS."""

    def __init__(self, engine: AsyncEngine, settings: Settings, mailer: Mailer) -> None:
        self._engine = engine
        self._settings = settings
        self._mailer = mailer
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self._mailer.configured:
            log.info("email is off: SMTP_HOST and EMAIL_FROM are not set")
            return
        self._task = asyncio.create_task(self._run(), name="email-digests")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await run_digests(self._engine, self._settings, self._mailer)
            except Exception:
                log.exception("email digest pass failed")
            await asyncio.sleep(self._settings.email_digest_interval_seconds)
