"""When a digest is due (the user's zone, quiet hours, clock changes), and which
addresses are taken: pure functions, no server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.email.address import normalise_email
from app.email.schedule import next_digest_at, period_key


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "now", "zone", "quiet", "due"),
    [
        # Hourly: the next full hour, wherever the user is.
        ("hourly", "2026-06-01T10:20", "UTC", None, "2026-06-01T11:00"),
        ("hourly", "2026-06-01T10:20", "Asia/Kolkata", None, "2026-06-01T10:30"),
        # Daily at 08:00 local: Berlin is UTC+2 in summer, UTC+1 in winter.
        ("daily", "2026-06-01T05:00", "Europe/Berlin", None, "2026-06-01T06:00"),
        ("daily", "2026-06-01T07:00", "Europe/Berlin", None, "2026-06-02T06:00"),
        ("daily", "2026-01-10T07:00", "Europe/Berlin", None, "2026-01-11T07:00"),
        # The night the clocks spring forward (29 March 2026 in Berlin).
        ("daily", "2026-03-28T12:00", "Europe/Berlin", None, "2026-03-29T06:00"),
        # The day after it: still 08:00 local, now UTC+2.
        ("daily", "2026-03-29T06:30", "Europe/Berlin", None, "2026-03-30T06:00"),
        # The night they fall back (25 October 2026): 08:00 local is UTC+1 again.
        ("daily", "2026-10-24T12:00", "Europe/Berlin", None, "2026-10-25T07:00"),
        ("daily", "2026-10-25T06:30", "Europe/Berlin", None, "2026-10-25T07:00"),
        # New York springs forward on 8 March 2026: 08:00 EDT is 12:00 UTC.
        ("daily", "2026-03-07T14:00", "America/New_York", None, "2026-03-08T12:00"),
        # Inside quiet hours: moved to their end.
        ("daily", "2026-06-01T05:00", "Europe/Berlin", ("07:00", "09:30"), "2026-06-01T07:30"),
        ("hourly", "2026-06-01T22:10", "UTC", ("22:00", "07:00"), "2026-06-02T07:00"),
        ("hourly", "2026-06-01T12:10", "UTC", ("22:00", "07:00"), "2026-06-01T13:00"),
    ],
)
def test_next_digest_at(
    period: str, now: str, zone: str, quiet: tuple[str, str] | None, due: str
) -> None:
    start, end = quiet or (None, None)
    assert next_digest_at(period, at(now), zone, start, end, 8) == at(due)


def test_period_key_is_the_users_day_or_hour() -> None:
    moment = at("2026-06-01T23:30")
    assert period_key("daily", moment, "UTC") == "20260601"
    assert period_key("daily", moment, "Asia/Tokyo") == "20260602"
    assert period_key("hourly", moment, "Europe/Berlin") == "2026060201"


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("ana@example.com", "ana@example.com"),
        ("Ana.Smith+chat@Mail.Example.COM", "Ana.Smith+chat@mail.example.com"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("a@b.co", "a@b.co"),
    ],
)
def test_addresses_taken(given: str, stored: str) -> None:
    assert normalise_email(given) == stored


@pytest.mark.parametrize(
    "given",
    [
        "",
        "ana",
        "ana@",
        "@example.com",
        "ana@localhost",
        "ana@@example.com",
        "ana@exa mple.com",
        "ana@example.com\r\nBcc: all@example.com",
        # A line break or control character anywhere, a trailing newline included.
        "a\n@example.com",
        "ana@example.com\n",
        "ana@example.com\r",
        "ana@exam\x00ple.com",
        "ana\x7f@example.com",
        "ana@example.com>",
        '"ana"@example.com',
        "ana,bob@example.com",
        ".ana@example.com",
        "ana.@example.com",
        "an..a@example.com",
        "ana@-example.com",
        "ana@example-.com",
        "ana@10.0.0.1",
        "ana@[10.0.0.1]",
        "anä@example.com",
        "a" * 65 + "@example.com",
        "ana@" + "a" * 64 + ".com",
        "ana@" + ("a" * 60 + ".") * 5 + "com",
    ],
)
def test_addresses_refused(given: str) -> None:
    assert normalise_email(given) is None
