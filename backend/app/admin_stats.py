"""Push statistics for the admin dashboard, and the daily rollup that keeps them fast.

A rollup table (push_stats_daily), not a materialised view: the cleanup keeps raw push
records (push_attempts, push_decisions) only PUSH_ATTEMPT_RETENTION_DAYS, so a view
recomputed from them would lose every older day of a year's charts; refreshing a view
also recomputes the whole year each time, and SQLite has no views to refresh. The
rollup keeps a few hundred rows a day, one per (day, kind, key, detail):

    push          provider, outcome        deliveries (push_attempts)
    decision      reason                   messages decided (a push_decisions row counts
                                           last_seq - first_seq + 1, as the metric
                                           messenger_pushes_skipped_total does; a run
                                           spanning the recipient's own replies counts
                                           those too)
    latency       provider, bucket (ms)    commit to accepted, delivered pushes
    notified      -                        notifications created
    opened        -                        of those, opened
    open_time     bucket (s)               time from notification to open
    devices       provider                 devices registered

A day is recomputed from its raw rows and its rows replaced in one transaction, so a
rollup run twice gives the same rows. Any node may run it (a PostgreSQL advisory lock
lets one at a time; SQLite is the one-node default), every STATS_ROLLUP_INTERVAL_SECONDS
(300). Each run rolls up today, the RECENT_DAYS before it again (late opens still
count; the run after midnight finishes yesterday), and every day since the oldest raw
row (at most a year back) that is not rolled up yet; the days of that year before the
oldest raw row are marked rolled up with no counts. A stats request reads the rollup,
so its cost does not grow with the raw rows: today's figures are as of the last run
(`as_of`); a day never rolled up (a node just started on old data) is computed from
the raw rows, each run of such days on its own, never the days between them.

Commit to accepted is push_attempts.accepted_at (when the provider accepted it) minus
the message's created_at; a row written before accepted_at existed falls back to its
created_at (the flush, at most RECORD_DELAY later).

p50 and p95 come from fixed buckets: each is the upper bound of the bucket the
percentile falls in, an honest "at most" (a percentile past the last bound is shown
as that bound). Exact percentiles would need every raw latency, kept only 30 days.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Date, case, cast, delete, func, insert, literal, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from app import metrics
from app.advisory_locks import try_advisory_xact_lock
from app.db import utcnow
from app.messenger.models import DeviceToken, Message, Notification, PushAttempt, PushDecision
from app.models import PushStatsDaily, PushStatsDay

log = logging.getLogger(__name__)

_attempts = PushAttempt.__table__
_decisions = PushDecision.__table__
_messages = Message.__table__
_notifications = Notification.__table__
_devices = DeviceToken.__table__
_daily = PushStatsDaily.__table__
_days = PushStatsDay.__table__

# Any fixed number, the same on every node: the rollup's lock.
LOCK_KEY = 0x6D737472  # "mstr"
MAX_DAYS = 365
# Days before today rolled up again on every run: opens come after the notification.
RECENT_DAYS = 2
LATENCY_BUCKETS_MS = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)
OPEN_BUCKETS_S = (10, 60, 300, 900, 3600, 21600, 86400)
INACTIVE_DAYS = (30, 60, 90)
# An outcome that is a failed delivery, as far as the success rate goes.
DELIVERED = "delivered"

Counts = dict[date, list[tuple[str, str, str, int]]]


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _day_of(column: Any, dialect: str) -> ColumnElement[Any]:
    """The UTC calendar day of a timestamp column."""
    if dialect == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)  # SQLite stores UTC without a zone


def _seconds_between(later: Any, earlier: Any, dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def _bucket(value: ColumnElement[Any], bounds: Iterable[int]) -> ColumnElement[Any]:
    return case(*((value <= bound, literal(str(bound))) for bound in bounds), else_=literal("inf"))


def _as_date(value: Any) -> date:
    """A day from what the database answers: a date, a timestamp, or SQLite's text."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).date() if value.tzinfo else value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


async def raw_counts(conn: AsyncConnection, first: date, end: date) -> Counts:
    """Every count of the days from `first` up to (not including) `end`, from raw rows."""
    dialect = conn.dialect.name
    start, stop = _day_start(first), _day_start(end)
    a, m, n, d = _attempts.c, _messages.c, _notifications.c, _devices.c
    accepted = func.coalesce(a.accepted_at, a.created_at)
    ms = _seconds_between(accepted, m.created_at, dialect) * 1000
    to_open = _seconds_between(n.opened_at, n.created_at, dialect)
    empty = literal("")

    def grouped(
        when: Any,
        kind: str,
        key: Any,
        detail: Any,
        *where: Any,
        source: Any = None,
        amount: Any = None,
    ) -> Any:
        day = _day_of(when, dialect)
        kind_ = literal(kind)
        total = func.count() if amount is None else func.coalesce(func.sum(amount), 0)
        query = select(day, kind_, key, detail, total)
        if source is not None:
            query = query.select_from(source)
        return query.where(when >= start, when < stop, *where).group_by(day, key, detail)

    queries = [
        grouped(a.created_at, "push", a.provider, a.outcome),
        grouped(
            a.created_at,
            "latency",
            a.provider,
            _bucket(ms, LATENCY_BUCKETS_MS),
            a.outcome == DELIVERED,
            source=_attempts.join(_messages, m.id == a.message_id),
        ),
        grouped(
            _decisions.c.created_at,
            "decision",
            _decisions.c.reason,
            empty,
            amount=_decisions.c.last_seq - _decisions.c.first_seq + 1,
        ),
        grouped(n.created_at, "notified", empty, empty),
        grouped(
            n.created_at,
            "open_time",
            empty,
            _bucket(to_open, OPEN_BUCKETS_S),
            n.opened_at.is_not(None),
        ),
        grouped(d.created_at, "devices", d.provider, empty),
    ]
    counts: Counts = defaultdict(list)
    for query in queries:
        for day, kind, key, detail, count in (await conn.execute(query)).all():
            counts[_as_date(day)].append((kind, key, detail, int(count)))
            if kind == "open_time":  # the opens are the sum of their buckets
                counts[_as_date(day)].append(("opened", "", "", int(count)))
    return _merge(counts)


def runs(days: Iterable[date]) -> list[tuple[date, date]]:
    """Consecutive days as [first, end) ranges, in order."""
    ranges: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if ranges and ranges[-1][1] == day:
            ranges[-1] = (ranges[-1][0], day + timedelta(days=1))
        else:
            ranges.append((day, day + timedelta(days=1)))
    return ranges


async def raw_counts_of(conn: AsyncConnection, days: Iterable[date]) -> Counts:
    """The raw counts of these days only: one pass per run of consecutive days."""
    counts: Counts = {}
    for first, end in runs(days):
        counts.update(await raw_counts(conn, first, end))
    return counts


def _merge(counts: Counts) -> Counts:
    """Sum rows of one day that share kind, key and detail (the opens' buckets)."""
    merged: Counts = {}
    for day, rows in counts.items():
        sums: dict[tuple[str, str, str], int] = defaultdict(int)
        for kind, key, detail, count in rows:
            sums[(kind, key, detail)] += count
        merged[day] = [(*k, v) for k, v in sums.items()]
    return merged


async def rolled_up_counts(conn: AsyncConnection, first: date, end: date) -> Counts:
    counts: Counts = defaultdict(list)
    c = _daily.c
    rows = await conn.execute(
        select(c.day, c.kind, c.key, c.detail, c.count).where(c.day >= first, c.day < end)
    )
    for day, kind, key, detail, count in rows.all():
        counts[_as_date(day)].append((kind, key, detail, int(count)))
    return counts


async def rolled_up_days(conn: AsyncConnection, first: date, end: date) -> set[date]:
    rows = await conn.scalars(select(_days.c.day).where(_days.c.day >= first, _days.c.day < end))
    return {_as_date(day) for day in rows.all()}


async def _rolled_up_at(conn: AsyncConnection, day: date) -> datetime | None:
    at: datetime | None = await conn.scalar(select(_days.c.rolled_up_at).where(_days.c.day == day))
    return at


async def inactive_devices(conn: AsyncConnection, now: datetime) -> dict[str, int]:
    """Active devices unused for 30, 60 and 90 days or more (the last_used_at index)."""
    used = _devices.c.last_used_at
    cutoffs = {days: now - timedelta(days=days) for days in INACTIVE_DAYS}
    row = (
        await conn.execute(
            select(
                *(
                    func.coalesce(func.sum(case((used < cutoff, 1), else_=0)), 0)
                    for cutoff in cutoffs.values()
                )
            ).where(used < cutoffs[INACTIVE_DAYS[0]], _devices.c.is_active.is_(True))
        )
    ).one()
    return {str(days): int(count) for days, count in zip(INACTIVE_DAYS, row, strict=True)}


async def stats(conn: AsyncConnection, days: int, now: datetime | None = None) -> dict[str, Any]:
    """The dashboard's figures for the last `days` days (today included), oldest first."""
    now = now or utcnow()
    today = now.date()
    first = today - timedelta(days=days - 1)
    end = today + timedelta(days=1)
    rolled = await rolled_up_days(conn, first, end)
    counts = await rolled_up_counts(conn, first, end) if rolled else {}
    counts = {day: rows for day, rows in counts.items() if day in rolled}
    missing = [first + timedelta(days=i) for i in range(days)]
    missing = [day for day in missing if day not in rolled]
    if missing:
        counts.update(await raw_counts_of(conn, missing))
    series = [
        day_figures(first + timedelta(days=i), counts.get(first + timedelta(days=i), []))
        for i in range((end - first).days)
    ]
    return {
        "days": days,
        "from": first.isoformat(),
        "to": today.isoformat(),
        "as_of": await _rolled_up_at(conn, today) if today in rolled else now,
        "series": series,
        "devices_inactive": await inactive_devices(conn, now),
        "latency_buckets_ms": list(LATENCY_BUCKETS_MS),
        "open_buckets_seconds": list(OPEN_BUCKETS_S),
    }


def day_figures(day: date, rows: Iterable[tuple[str, str, str, int]]) -> dict[str, Any]:
    pushes: dict[str, dict[str, int]] = defaultdict(dict)
    decisions: dict[str, int] = {}
    latency: dict[str, int] = defaultdict(int)
    open_time: dict[str, int] = {}
    devices: dict[str, int] = {}
    notified = opened = 0
    for kind, key, detail, count in rows:
        if kind == "push":
            pushes[key][detail] = count
        elif kind == "decision":
            decisions[key] = count
        elif kind == "latency":
            latency[detail] += count  # all providers together
        elif kind == "notified":
            notified = count
        elif kind == "opened":
            opened = count
        elif kind == "open_time":
            open_time[detail] = count
        elif kind == "devices":
            devices[key] = count
    total = sum(sum(outcomes.values()) for outcomes in pushes.values())
    delivered = sum(outcomes.get(DELIVERED, 0) for outcomes in pushes.values())
    return {
        "day": day.isoformat(),
        "pushes": dict(pushes),
        "pushes_total": total,
        "delivered": delivered,
        "success_rate": round(delivered / total, 4) if total else None,
        "skipped": {reason: n for reason, n in decisions.items() if reason != "sent"},
        "commit_to_accepted_ms": percentiles(latency, LATENCY_BUCKETS_MS),
        "notifications": notified,
        "opened": opened,
        "open_rate": round(opened / notified, 4) if notified else None,
        "time_to_open_seconds": percentiles(open_time, OPEN_BUCKETS_S),
        "devices_registered": devices,
    }


def percentiles(buckets: Mapping[str, int], bounds: tuple[int, ...]) -> dict[str, Any]:
    """p50 and p95 as the upper bound of the bucket each falls in (None: no data)."""
    ordered = [(bound, buckets.get(str(bound), 0)) for bound in bounds]
    ordered.append((bounds[-1], buckets.get("inf", 0)))  # past the last: shown as it
    total = sum(count for _, count in ordered)
    figures: dict[str, Any] = {"count": total, "p50": None, "p95": None}
    if not total:
        return figures
    for name, share in (("p50", 0.5), ("p95", 0.95)):
        seen = 0
        for bound, count in ordered:
            seen += count
            if seen >= share * total:
                figures[name] = bound
                break
    return figures


# -- the rollup --------------------------------------------------------------------------


@dataclass(frozen=True)
class RollupReport:
    ran: bool  # False when another node held the lock
    days: int = 0


async def _oldest_raw_day(conn: AsyncConnection) -> date | None:
    # Each min() is one probe of a created_at index (device_tokens': 0014).
    candidates = [
        select(func.min(_attempts.c.created_at)).scalar_subquery(),
        select(func.min(_decisions.c.created_at)).scalar_subquery(),
        select(func.min(_notifications.c.created_at)).scalar_subquery(),
        select(func.min(_devices.c.created_at)).scalar_subquery(),
    ]
    values = (await conn.execute(select(*candidates))).one()
    found = [v for v in values if v is not None]
    if not found:
        return None
    # SQLite answers min() of a timestamp as text.
    return min(_as_date(v) for v in found)


async def run_rollup(engine: AsyncEngine, now: datetime | None = None) -> RollupReport:
    """Roll up the days that need it (see the module's docstring); idempotent."""
    now = now or utcnow()
    today = now.date()
    async with engine.begin() as conn:
        # Every node sets the inactive-device gauge (one query on the last_used_at
        # index), the one that rolls up or not: an alert reads any node's.
        inactive = await inactive_devices(conn, now)
        for days, count in inactive.items():
            metrics.devices_inactive.labels(days).set(count)
        if conn.dialect.name == "postgresql":
            if not await try_advisory_xact_lock(conn, LOCK_KEY):
                log.info("stats rollup skipped: another node is running it")
                return RollupReport(ran=False)
            # A first run rolls up a year of rows: longer than a request may take.
            await conn.execute(text("SET LOCAL statement_timeout = 0"))
        oldest = await _oldest_raw_day(conn)
        floor = today - timedelta(days=MAX_DAYS)
        first = max(oldest or today, floor)
        done = await rolled_up_days(conn, floor, today)
        # Days before the oldest raw row have nothing to count: marked rolled up (once),
        # so a stats request never scans raw rows for them.
        empty = [floor + timedelta(days=i) for i in range((first - floor).days)]
        empty = [day for day in empty if day not in done]
        if empty:
            await conn.execute(insert(_days), [{"day": day, "rolled_up_at": now} for day in empty])
        recent = today - timedelta(days=RECENT_DAYS)
        due = [first + timedelta(days=i) for i in range((today - first).days + 1)]
        due = [day for day in due if day not in done or day >= recent]
        if due:
            counts = await raw_counts_of(conn, due)
            await conn.execute(delete(_daily).where(_daily.c.day.in_(due)))
            await conn.execute(delete(_days).where(_days.c.day.in_(due)))
            rows = [
                {"day": day, "kind": kind, "key": key, "detail": detail, "count": count}
                for day in due
                for kind, key, detail, count in counts.get(day, [])
            ]
            if rows:
                await conn.execute(insert(_daily), rows)
            await conn.execute(insert(_days), [{"day": day, "rolled_up_at": now} for day in due])
    log.info("stats rollup done days=%d first=%s", len(due), due[0] if due else "-")
    return RollupReport(ran=True, days=len(due))


class StatsRollupLoop:
    """Started with the app: rolls the statistics up every `interval` seconds (the first
    time soon after start, so a new deployment's charts fill in at once)."""

    def __init__(self, engine: AsyncEngine, interval: float) -> None:
        self._engine = engine
        self._interval = max(1.0, interval)  # never a busy loop
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stats-rollup")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delay = min(5.0, self._interval)
        while True:
            await asyncio.sleep(delay)
            delay = self._interval
            try:
                await run_rollup(self._engine)
            except Exception:
                log.exception("stats rollup failed")
