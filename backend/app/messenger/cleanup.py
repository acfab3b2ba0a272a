"""The daily cleanup: stale devices, old delivery records and long-ended sessions go.

On several nodes only one runs it at a time: a PostgreSQL advisory lock held for
the transaction (SQLite is the one-node embedded default and needs none).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db import utcnow
from app.messenger.models import DeviceToken, PushAttempt, PushDecision
from app.models import Session
from app.sessions import switch_off_devices_of_ended_sessions

log = logging.getLogger(__name__)

_devices = DeviceToken.__table__
_attempts = PushAttempt.__table__
_decisions = PushDecision.__table__
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


async def run_cleanup(engine: AsyncEngine, settings: Settings) -> CleanupReport:
    now = utcnow()
    device_cutoff = now - timedelta(days=settings.push_device_retention_days)
    attempt_cutoff = now - timedelta(days=settings.push_attempt_retention_days)
    session_cutoff = now - timedelta(days=settings.session_retention_days)
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            locked = await conn.scalar(select(func.pg_try_advisory_xact_lock(LOCK_KEY)))
            if not locked:
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
        attempts = await conn.execute(
            delete(_attempts).where(_attempts.c.created_at < attempt_cutoff)
        )
        # The push decision log is a push record too: kept as long as the deliveries.
        decisions = await conn.execute(
            delete(_decisions).where(_decisions.c.created_at < attempt_cutoff)
        )
        sessions = await conn.execute(
            delete(_sessions).where(
                or_(
                    _sessions.c.revoked_at < session_cutoff,
                    _sessions.c.expires_at < session_cutoff,
                )
            )
        )
    report = CleanupReport(
        True,
        devices.rowcount,
        attempts.rowcount,
        sessions.rowcount,
        decisions_removed=decisions.rowcount,
        devices_switched_off=devices_off,
    )
    log.info(
        "cleanup done devices_removed=%d attempts_removed=%d sessions_removed=%d"
        " decisions_removed=%d devices_switched_off=%d",
        report.devices_removed,
        report.attempts_removed,
        report.sessions_removed,
        report.decisions_removed,
        report.devices_switched_off,
    )
    return report


class CleanupLoop:
    """Started with the app: runs the cleanup every `cleanup_interval_seconds`."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cleanup")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.cleanup_interval_seconds)
            try:
                await run_cleanup(self._engine, self._settings)
            except Exception:
                log.exception("cleanup failed")
