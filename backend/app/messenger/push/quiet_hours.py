"""Quiet hours: is a moment inside a user's nightly window, read on their wall clock?

The window is "HH:MM" to "HH:MM" in the user's IANA zone and may wrap midnight. It is
compared with the local time of day, so daylight saving moves it with the clock: on
the night the clocks spring forward it is an hour shorter (a start or end inside the
skipped hour takes effect when the clock jumps past it), and on the night they fall
back the repeated hour is inside it both times if it is inside it once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)


@lru_cache(maxsize=1024)
def zone(name: str | None) -> tzinfo:
    """The IANA zone of that name; UTC for an unknown one (the settings endpoint refuses
    those, so one in the database was written some other way), said once per name."""
    if not name or name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone in notification settings, using UTC zone=%r", name[:64])
        return UTC


def clock_time(text: str | None) -> time | None:
    """ "HH:MM" (00:00 to 23:59) as a time of day; None for anything else. The one
    reading of it: the settings endpoint refuses what this cannot read."""
    if not isinstance(text, str) or len(text) != 5:
        return None  # (before the cache: a long string never becomes one of its keys)
    return _clock_time(text)


@lru_cache(maxsize=4096)
def _clock_time(text: str) -> time | None:
    if text[2] != ":":
        return None
    hours, minutes = text[:2], text[3:]
    if not (hours.isdigit() and minutes.isdigit() and hours.isascii() and minutes.isascii()):
        return None
    h, m = int(hours), int(minutes)
    if h > 23 or m > 59:
        return None
    return time(h, m)


def in_window(local: time, start: time, end: time) -> bool:
    """Whether a time of day is in [start, end), wrapping midnight when end <= start.
    start == end is an empty window."""
    if start < end:
        return start <= local < end
    if start > end:
        return local >= start or local < end
    return False


def is_quiet(start: str | None, end: str | None, time_zone: str | None, at: datetime) -> bool:
    """Whether `at` (an aware moment) falls in the quiet hours start-end of that zone; no
    window (either end missing or unreadable) is never quiet."""
    first, last = clock_time(start), clock_time(end)
    if first is None or last is None:
        return False
    local = at.astimezone(zone(time_zone))
    return in_window(local.time(), first, last)
