"""Notification settings: a user's (time zone, quiet hours, push delay, preview,
language) and each conversation's notify level, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.locales import SUPPORTED_LOCALES
from app.notification_settings import DEFAULTS, UserNotificationSettings, load_settings
from tests.helpers import Client

URL = "/api/v1/me/notification-settings"
CONVERSATIONS = "/api/v1/messenger/conversations"
# Email for missed messages (tests/test_email_*.py), as a user without an address has it.
EMAIL_DEFAULTS = {
    "email": None,
    "email_verified": False,
    "email_digest": "off",
    "email_digest_disabled": None,
    "email_verification_failed": None,
}
DEFAULT_JSON = {
    **EMAIL_DEFAULTS,
    "time_zone": "UTC",
    "quiet_hours": None,
    "push_delay_seconds": 0,
    "preview": "full",
    "locale": "en",
}


async def test_defaults_and_round_trip(client: Client) -> None:
    a, b = await client.user(), await client.user()
    r = await client.http.get(URL, headers=a.headers)
    assert r.status_code == 200 and r.json() == DEFAULT_JSON

    everything = {
        "time_zone": "Europe/Berlin",
        "quiet_hours": {"start": "22:30", "end": "07:00", "allow_mentions": True},
        "push_delay_seconds": 600,
        "preview": "sender",
        "locale": "de",
    }
    r = await client.http.put(URL, json=everything, headers=a.headers)
    everything = {**EMAIL_DEFAULTS, **everything}  # as GET shows it
    assert r.status_code == 200 and r.json() == everything
    assert (await client.http.get(URL, headers=a.headers)).json() == everything
    # Someone else's stay as they were.
    assert (await client.http.get(URL, headers=b.headers)).json() == DEFAULT_JSON

    # A PUT changes what it names, and only that.
    r = await client.http.put(URL, json={"preview": "none"}, headers=a.headers)
    assert r.json() == {**everything, "preview": "none"}
    r = await client.http.put(
        URL, json={"quiet_hours": {"start": "00:00", "end": "23:59"}}, headers=a.headers
    )
    quiet = {"start": "00:00", "end": "23:59", "allow_mentions": False}
    assert r.json() == {**everything, "preview": "none", "quiet_hours": quiet}
    r = await client.http.put(URL, json={"quiet_hours": None}, headers=a.headers)
    assert r.json()["quiet_hours"] is None
    r = await client.http.put(URL, json={}, headers=a.headers)
    assert r.status_code == 200 and r.json() == {
        **everything,
        "preview": "none",
        "quiet_hours": None,
    }

    # The first PUT of a user with no row writes one with the defaults around it.
    r = await client.http.put(URL, json={"push_delay_seconds": 30}, headers=b.headers)
    assert r.json() == {**DEFAULT_JSON, "push_delay_seconds": 30}
    r = await client.http.put(
        URL, json={"time_zone": "America/Argentina/Buenos_Aires"}, headers=b.headers
    )
    assert r.json()["time_zone"] == "America/Argentina/Buenos_Aires"


async def test_load_settings(client: Client) -> None:
    a, b = await client.user(), await client.user()
    await client.http.put(
        URL,
        json={
            "time_zone": "Asia/Tokyo",
            "quiet_hours": {"start": "23:00", "end": "06:00", "allow_mentions": True},
            "locale": "de",
        },
        headers=a.headers,
    )
    async with client.node.services.engine.connect() as conn:
        found = await load_settings(conn, [a.id, b.id, a.id, 2_000_000_000])
        assert await load_settings(conn, []) == {}
    assert found == {
        a.id: UserNotificationSettings(
            time_zone="Asia/Tokyo",
            quiet_start="23:00",
            quiet_end="06:00",
            quiet_allow_mentions=True,
            push_delay_seconds=0,
            preview="full",
            locale="de",
        ),
        b.id: DEFAULTS,
        2_000_000_000: DEFAULTS,
    }
    assert DEFAULTS.locale in SUPPORTED_LOCALES


BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"time_zone": "Mars/Olympus_Mons"}, "invalid_time_zone"),
    ({"time_zone": "../../etc/passwd"}, "invalid_time_zone"),
    ({"time_zone": "/etc/localtime"}, "invalid_time_zone"),
    ({"time_zone": "europe/berlin"}, "invalid_time_zone"),
    ({"time_zone": "Europe/Berlin\n"}, "invalid_time_zone"),
    ({"time_zone": "Europe/" + "x" * 100}, "invalid_field"),
    ({"time_zone": ""}, "invalid_field"),
    ({"time_zone": None}, "invalid_field"),
    ({"time_zone": 1}, "invalid_field"),
    ({"quiet_hours": {"start": "22:00"}}, "invalid_field"),
    ({"quiet_hours": {"start": "22:00", "end": "22:00"}}, "invalid_field"),
    ({"quiet_hours": {"start": "24:00", "end": "06:00"}}, "invalid_field"),
    ({"quiet_hours": {"start": "22:60", "end": "06:00"}}, "invalid_field"),
    ({"quiet_hours": {"start": "7:00", "end": "06:00"}}, "invalid_field"),
    ({"quiet_hours": {"start": "22:00:00", "end": "06:00"}}, "invalid_field"),
    ({"quiet_hours": {"start": "22:00\n", "end": "06:00"}}, "invalid_field"),
    ({"quiet_hours": {"start": 2200, "end": "06:00"}}, "invalid_field"),
    ({"quiet_hours": {"start": "22:00", "end": "06:00", "allow_mentions": "yes"}}, "invalid_field"),
    ({"quiet_hours": "22:00-06:00"}, "invalid_field"),
    ({"quiet_hours": []}, "invalid_field"),
    ({"push_delay_seconds": -1}, "invalid_field"),
    ({"push_delay_seconds": 601}, "invalid_field"),
    ({"push_delay_seconds": 1.5}, "invalid_field"),
    ({"push_delay_seconds": "30"}, "invalid_field"),
    ({"push_delay_seconds": True}, "invalid_field"),
    ({"push_delay_seconds": 10**30}, "invalid_field"),
    ({"push_delay_seconds": None}, "invalid_field"),
    ({"preview": "partial"}, "invalid_field"),
    ({"preview": None}, "invalid_field"),
    ({"locale": "fr"}, "invalid_field"),
    ({"locale": "EN"}, "invalid_field"),
    ({"locale": None}, "invalid_field"),
    ({"locale": "de", "time_zone": "Nowhere/Land"}, "invalid_time_zone"),
]


@pytest.mark.parametrize(("body", "code"), BAD_BODIES)
async def test_bad_input_is_refused_and_changes_nothing(
    client: Client, body: dict[str, Any], code: str
) -> None:
    user = await client.user()
    r = await client.http.put(URL, json=body, headers=user.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    assert (await client.http.get(URL, headers=user.headers)).json() == DEFAULT_JSON


async def test_malformed_oversize_and_unauthenticated(client: Client) -> None:
    user = await client.user()
    headers = {**user.headers, "content-type": "application/json"}
    for raw in (b'{"locale": "de"', b"not json", b"\xff\xfe", b'["locale"]', b'"de"', b"null"):
        r = await client.http.put(URL, content=raw, headers=headers)
        assert r.status_code == 400, raw
        assert r.json()["error"]["code"] == "malformed_json"
    r = await client.http.put(URL, content=b"\x00" + b"x" * 10, headers=headers)
    assert r.status_code == 400
    r = await client.http.put(URL, json={"time_zone": "UTC\u0000"}, headers=headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field"

    limit = client.node.app.state.settings.max_body_bytes
    big = orjson.dumps({"locale": "de", "pad": "x" * limit})
    r = await client.http.put(URL, content=big, headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    async def chunks():  # no content-length: the size is found while reading
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    r = await client.http.put(URL, content=chunks(), headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert (await client.http.get(URL, headers=user.headers)).json() == DEFAULT_JSON

    for method in ("GET", "PUT"):
        r = await client.http.request(method, URL, json={"locale": "de"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = await client.http.request(
            method, URL, json={"locale": "de"}, headers={"Authorization": "Bearer nope"}
        )
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    r = await client.http.post(URL, json={}, headers=user.headers)
    assert r.status_code == 405


async def test_conversation_notify_level(client: Client) -> None:
    a, b, outsider = await client.user(), await client.user(), await client.user()
    conv = await client.conversation(a, b, title="g")
    url = f"{CONVERSATIONS}/{conv['id']}/settings"
    r = await client.http.get(url, headers=b.headers)
    assert r.json()["notify"] == "all"
    for level in ("mentions", "none", "all", "mentions"):
        r = await client.http.put(url, json={"notify": level}, headers=b.headers)
        assert r.status_code == 200 and r.json()["notify"] == level
    # Other settings leave it be; so does null (as for the other fields).
    r = await client.http.put(url, json={"muted": True, "notify": None}, headers=b.headers)
    assert r.json() == {
        "muted": True,
        "mute_until": None,
        "push_enabled": True,
        "notify": "mentions",
    }
    assert (await client.http.get(url, headers=a.headers)).json()["notify"] == "all"
    for bad in ("ALL", "mention", "", 1, True, ["all"], {"level": "all"}):
        r = await client.http.put(url, json={"notify": bad}, headers=b.headers)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field", bad
    assert (await client.http.get(url, headers=b.headers)).json()["notify"] == "mentions"

    r = await client.http.put(url, json={"notify": "none"}, headers=outsider.headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_a_participant"
    r = await client.http.get(url, headers=outsider.headers)
    assert r.status_code == 403
    missing = f"{CONVERSATIONS}/00000000-0000-0000-0000-000000000000/settings"
    r = await client.http.put(missing, json={"notify": "none"}, headers=b.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "conversation_not_found"
    r = await client.http.put(url, json={"notify": "none"})
    assert r.status_code == 401
