"""Quiet hours on the user's wall clock: windows that wrap midnight, and the nights the
clocks change (real transition dates in Berlin, New York and Lord Howe Island, whose
clocks move by 30 minutes)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from app.messenger.push import quiet_hours
from app.messenger.push.quiet_hours import clock_time, is_quiet, zone


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def quiet_minutes(start: str, end: str, time_zone: str, since_utc: str, hours: int) -> int:
    """How many minutes of `hours` from `since_utc` are quiet."""
    first = at(since_utc)
    return sum(
        is_quiet(start, end, time_zone, first + timedelta(minutes=m)) for m in range(hours * 60)
    )


@pytest.mark.parametrize(
    ("start", "end", "moment", "quiet"),
    [
        ("22:00", "07:00", "2024-06-01T23:00", True),
        ("22:00", "07:00", "2024-06-01T06:59", True),
        ("22:00", "07:00", "2024-06-01T00:00", True),
        ("22:00", "07:00", "2024-06-01T07:00", False),
        ("22:00", "07:00", "2024-06-01T21:59", False),
        ("22:00", "07:00", "2024-06-01T12:00", False),
        ("09:00", "17:00", "2024-06-01T09:00", True),
        ("09:00", "17:00", "2024-06-01T16:59", True),
        ("09:00", "17:00", "2024-06-01T17:00", False),
        ("09:00", "17:00", "2024-06-01T08:59", False),
        ("08:00", "08:00", "2024-06-01T08:00", False),  # an empty window
        ("8:00", "09:00", "2024-06-01T08:30", False),  # not HH:MM: no window
        ("24:00", "09:00", "2024-06-01T08:30", False),
        (None, "09:00", "2024-06-01T08:30", False),
    ],
)
def test_a_window_in_utc(start: str | None, end: str, moment: str, quiet: bool) -> None:
    assert is_quiet(start, end, "UTC", at(moment)) is quiet


def test_the_window_is_read_in_the_users_zone() -> None:
    # 23:30 UTC is 08:30 the next morning in Tokyo (no daylight saving there).
    assert is_quiet("08:00", "09:00", "Asia/Tokyo", at("2024-06-01T23:30"))
    assert not is_quiet("08:00", "09:00", "UTC", at("2024-06-01T23:30"))
    # 22:00-07:00 in New York (EDT, UTC-4) holds 03:00 UTC (23:00 local), not 12:00.
    assert is_quiet("22:00", "07:00", "America/New_York", at("2024-06-01T03:00"))
    assert not is_quiet("22:00", "07:00", "America/New_York", at("2024-06-01T12:00"))


@pytest.mark.parametrize(
    ("start", "end", "time_zone", "since_utc", "hours", "minutes"),
    [
        # Berlin springs forward on 2024-03-31 at 02:00 CET (01:00 UTC) to 03:00 CEST.
        ("23:00", "07:00", "Europe/Berlin", "2024-03-30T12:00", 24, 7 * 60),  # a short night
        ("02:15", "02:45", "Europe/Berlin", "2024-03-30T20:00", 12, 0),  # inside the gap
        ("01:30", "02:30", "Europe/Berlin", "2024-03-30T20:00", 12, 30),  # ends in the gap
        ("02:30", "04:00", "Europe/Berlin", "2024-03-30T20:00", 12, 60),  # starts in it
        # Berlin falls back on 2024-10-27 at 03:00 CEST (01:00 UTC) to 02:00 CET.
        ("23:00", "07:00", "Europe/Berlin", "2024-10-26T12:00", 24, 9 * 60),  # a long one
        ("02:00", "03:00", "Europe/Berlin", "2024-10-26T20:00", 12, 120),  # the hour twice
        # New York springs forward on 2024-03-10 at 02:00 EST (07:00 UTC) to 03:00 EDT,
        # and falls back on 2024-11-03 at 02:00 EDT (06:00 UTC) to 01:00 EST.
        ("23:00", "07:00", "America/New_York", "2024-03-09T16:00", 24, 7 * 60),
        ("02:00", "03:00", "America/New_York", "2024-03-09T16:00", 24, 0),
        ("23:00", "07:00", "America/New_York", "2024-11-02T16:00", 24, 9 * 60),
        ("01:00", "02:00", "America/New_York", "2024-11-02T16:00", 24, 120),
        # Lord Howe Island moves by 30 minutes: on 2024-10-06 from 02:00 (+10:30) to
        # 02:30 (+11), and on 2024-04-07 from 02:00 (+11) back to 01:30 (+10:30).
        ("02:00", "02:30", "Australia/Lord_Howe", "2024-10-05T06:00", 18, 0),
        ("01:00", "03:00", "Australia/Lord_Howe", "2024-10-05T06:00", 18, 90),
        ("01:30", "02:00", "Australia/Lord_Howe", "2024-04-06T06:00", 18, 60),
        ("01:00", "03:00", "Australia/Lord_Howe", "2024-04-06T06:00", 18, 150),
    ],
)
def test_daylight_saving_nights(
    start: str, end: str, time_zone: str, since_utc: str, hours: int, minutes: int
) -> None:
    assert quiet_minutes(start, end, time_zone, since_utc, hours) == minutes


def test_the_first_and_the_repeated_hour_are_both_quiet() -> None:
    # 02:30 happens twice in Berlin on 2024-10-27: 00:30 UTC (CEST) and 01:30 UTC (CET).
    assert is_quiet("02:00", "03:00", "Europe/Berlin", at("2024-10-27T00:30"))
    assert is_quiet("02:00", "03:00", "Europe/Berlin", at("2024-10-27T01:30"))
    assert not is_quiet("02:00", "03:00", "Europe/Berlin", at("2024-10-27T02:00"))


def test_an_unknown_zone_is_utc_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    zone.cache_clear()
    caplog.set_level(logging.WARNING, logger="app.messenger.push.quiet_hours")
    for _ in range(3):
        assert is_quiet("22:00", "07:00", "Mars/Olympus_Mons", at("2024-06-01T23:00"))
        assert not is_quiet("22:00", "07:00", "../../etc/passwd", at("2024-06-01T12:00"))
    lines = [r.getMessage() for r in caplog.records if "unknown time zone" in r.getMessage()]
    assert len(lines) == 2
    assert zone("Mars/Olympus_Mons") is UTC


def test_clock_times() -> None:
    assert clock_time("00:00") is not None and clock_time("23:59") is not None
    arabic_indic = "\u0660\u0667:\u0660\u0660"  # digits, but not ASCII ones
    for bad in ("", "7:00", "07:60", "24:00", "ab:cd", "07-00", arabic_indic, "07:001"):
        assert clock_time(bad) is None, bad
    # The settings endpoint reads "HH:MM" with this, so what a client sends reaches it:
    # a long string is refused before the cache, never kept as one of its keys.
    before = quiet_hours._clock_time.cache_info().currsize
    assert clock_time("07:00" * 100_000) is None
    assert quiet_hours._clock_time.cache_info().currsize == before
