"""What the daily cleanup removes of timers: scheduled messages sent, cancelled or failed,
reminders fired or cancelled, and announcements finished, once older than the push
records' retention (their deliveries are gone by then too). Pending ones always stay."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from app.messenger.batched_delete import Deleted, delete_in_batches
from app.messenger.models import Announcement, Reminder, ScheduledMessage

_scheduled = ScheduledMessage.__table__
_reminders = Reminder.__table__
_announcements = Announcement.__table__


async def remove_finished_timers(engine: AsyncEngine, cutoff: datetime) -> Deleted:
    """Delete finished timers due (or finished) before `cutoff`, in batches. Each filter
    leads with the status, so the (status, time) indexes serve it."""
    scheduled = await delete_in_batches(
        engine,
        _scheduled,
        _scheduled.c.status.in_(("sent", "cancelled", "failed")) & (_scheduled.c.send_at < cutoff),
    )
    reminders = await delete_in_batches(
        engine,
        _reminders,
        _reminders.c.status.in_(("fired", "cancelled")) & (_reminders.c.remind_at < cutoff),
    )
    announcements = await delete_in_batches(
        engine,
        _announcements,
        _announcements.c.status.in_(("done", "failed")) & (_announcements.c.finished_at < cutoff),
    )
    return scheduled + reminders + announcements
