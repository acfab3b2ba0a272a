"""The daily cleanup: stale devices, old delivery records and long-ended sessions go.

On several nodes only one runs it at a time: a PostgreSQL advisory lock held for
the transaction (SQLite is the one-node embedded default and needs none). Push records
(deliveries, decisions, notifications) go afterwards in batches (batched_delete).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete, or_, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.advisory_locks import try_advisory_xact_lock
from app.config import Settings
from app.db import utcnow
from app.messenger.batched_delete import Deleted, delete_in_batches
from app.messenger.models import DeviceToken, Notification, PushAttempt, PushDecision
from app.messenger.storage import Storage
from app.messenger.timer_cleanup import remove_finished_timers
from app.messenger.upload_cleanup import remove_stale_uploads
from app.models import Session
from app.sessions import switch_off_devices_of_ended_sessions

log = logging.getLogger(__name__)

_devices = DeviceToken.__table__
_attempts = PushAttempt.__table__
_decisions = PushDecision.__table__
_notifications = Notification.__table__
_sessions = Session.__table__
# Any fixed number, the same on every node: the lock's name.
LOCK_KEY = 0x6D736763  # "msgc"


@dataclass(frozen=True)
class CleanupReport:
    ran: bool  # False when another node held the lock
    devices_removed: int = 0
    attempts_removed: int = 0
    sessions_removed: int = 0
    decisions_removed: int = 0
    devices_switched_off: int = 0  # of sessions that expired since the last run
    uploads_removed: int = 0  # unsent past their time, or of deleted messages
    notifications_removed: int = 0
    # Scheduled messages, reminders and announcements finished before the retention.
    timers_removed: int = 0
    # The batched deletes of push records: how many batches, the largest one.
    push_record_batches: Deleted = field(default_factory=Deleted)


async def run_cleanup(
    engine: AsyncEngine, settings: Settings, storage: Storage | None = None
) -> CleanupReport:
    now = utcnow()
    device_cutoff = now - timedelta(days=settings.push_device_retention_days)
    attempt_cutoff = now - timedelta(days=settings.push_attempt_retention_days)
    session_cutoff = now - timedelta(days=settings.session_retention_days)
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            if not await try_advisory_xact_lock(conn, LOCK_KEY):
                log.info("cleanup skipped: another node is running it")
                return CleanupReport(ran=False)
            # A day's deletes on a large table may outlast the statement timeout meant
            # for requests; this transaction alone goes without it.
            await conn.execute(text("SET LOCAL statement_timeout = 0"))
        devices = await conn.execute(
            delete(_devices).where(
                or_(_devices.c.is_active.is_(False), _devices.c.last_used_at < device_cutoff)
            )
        )
        # A session that expired ends its devices as a revoked one does (shown switched
        # off until the next run removes them).
        devices_off = await switch_off_devices_of_ended_sessions(conn)
        sessions = await conn.execute(
            delete(_sessions).where(
                or_(
                    _sessions.c.revoked_at < session_cutoff,
                    _sessions.c.expires_at < session_cutoff,
                )
            )
        )
    # Push records in batches of short transactions, after the lock's (a month of them
    # in one statement would hold its locks for as long). The decision log and the
    # notification history are push records too: kept as long as the deliveries.
    attempts = await delete_in_batches(engine, _attempts, _attempts.c.created_at < attempt_cutoff)
    decisions = await delete_in_batches(
        engine, _decisions, _decisions.c.created_at < attempt_cutoff
    )
    notifications = await delete_in_batches(
        engine, _notifications, _notifications.c.created_at < attempt_cutoff
    )
    timers = await remove_finished_timers(engine, attempt_cutoff)
    # After the lock's transaction: it is not held while storage is called.
    uploads = await remove_stale_uploads(engine, storage, settings) if storage else None
    report = CleanupReport(
        True,
        devices.rowcount,
        attempts.rows,
        sessions.rowcount,
        decisions_removed=decisions.rows,
        notifications_removed=notifications.rows,
        push_record_batches=attempts + decisions + notifications,
        devices_switched_off=devices_off,
        uploads_removed=uploads.removed if uploads else 0,
        timers_removed=timers.rows,
    )
    log.info(
        "cleanup done devices_removed=%d attempts_removed=%d sessions_removed=%d"
        " decisions_removed=%d notifications_removed=%d batches=%d devices_switched_off=%d"
        " timers_removed=%d",
        report.devices_removed,
        report.attempts_removed,
        report.sessions_removed,
        report.decisions_removed,
        report.notifications_removed,
        report.push_record_batches.batches,
        report.devices_switched_off,
        report.timers_removed,
    )
    return report


class CleanupLoop:
    """Started with the app: runs the cleanup every `cleanup_interval_seconds`."""

    def __init__(
        self, engine: AsyncEngine, settings: Settings, storage: Storage | None = None
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._storage = storage
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # "No successful run for 26 h" counts from the node's start until its first run.
        metrics.cleanup_last_success.set_to_current_time()
        self._task = asyncio.create_task(self._run(), name="cleanup")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.cleanup_interval_seconds)
            try:
                await run_cleanup(self._engine, self._settings, self._storage)
            except Exception:
                metrics.cleanup_failures.inc()
                log.exception("cleanup failed")
            else:
                metrics.cleanup_runs.inc()
                metrics.cleanup_last_success.set_to_current_time()
