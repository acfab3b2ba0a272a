"""When a user's next digest is due: the next hour, or the next day at a set local
hour, in their time zone, moved to the end of their quiet hours if it falls inside.

The result is stored (notification_settings.next_digest_at): the schedule lives in the
database, so any node finds it due, and a restart loses nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.messenger.push.quiet_hours import is_quiet, zone

PERIODS = ("hourly", "daily")
# Quiet hours are at most a day long; stepping this far always leaves them.
_STEP = timedelta(minutes=15)


def next_digest_at(
    period: str,
    now: datetime,
    time_zone: str | None,
    quiet_start: str | None,
    quiet_end: str | None,
    daily_hour: int,
) -> datetime:
    """The first period boundary after `now` that is outside quiet hours (UTC)."""
    local = now.astimezone(zone(time_zone))
    if period == "hourly":
        due = local.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    else:
        due = local.replace(hour=daily_hour, minute=0, second=0, microsecond=0)
        if due <= local:
            due += timedelta(days=1)
    # Wall-clock arithmetic across a DST change: normalise through UTC.
    at = due.astimezone(UTC)
    for _ in range(24 * 4 + 1):
        if not is_quiet(quiet_start, quiet_end, time_zone, at):
            break
        at += _STEP
    return at


def period_key(period: str, at: datetime, time_zone: str | None) -> str:
    """A name for the period a digest sent at `at` closes: the same for every node, so
    its Message-ID is stable."""
    local = at.astimezone(zone(time_zone))
    return local.strftime("%Y%m%d%H" if period == "hourly" else "%Y%m%d")
