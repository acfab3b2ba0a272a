"""Every bad REST request gets the API's error shape and the right status, never a 500,
and leaves nothing behind."""

from __future__ import annotations

import pytest

from tests.helpers import Client
from tests.logcapture import captured_logs

C = "/api/v1/messenger/conversations"
HUGE = '{"content": "' + "x" * (1024 * 1024 + 10) + '"}'

# (name, method, path, body (str = raw bytes, dict = JSON, None), status, code)
CASES = [
    ("register: not json", "POST", "/api/v1/auth/register", "{oops", 400, "malformed_json"),
    ("register: empty body", "POST", "/api/v1/auth/register", "", 400, "malformed_json"),
    ("register: array", "POST", "/api/v1/auth/register", "[]", 400, "malformed_json"),
    (
        "register: missing password",
        "POST",
        "/api/v1/auth/register",
        {"username": "abcde"},
        422,
        "invalid_field",
    ),
    (
        "register: short password",
        "POST",
        "/api/v1/auth/register",
        {"username": "abcde", "password": "x"},
        422,
        "invalid_field",
    ),
    (
        "register: bad username",
        "POST",
        "/api/v1/auth/register",
        {"username": "a b<c>", "password": "x" * 12},
        422,
        "invalid_field",
    ),
    (
        "register: username not a string",
        "POST",
        "/api/v1/auth/register",
        {"username": 5, "password": "x" * 12},
        422,
        "invalid_field",
    ),
    ("login: missing fields", "POST", "/api/v1/auth/login", {}, 422, "invalid_field"),
    ("create: type missing", "POST", C, {"participant_ids": [1]}, 422, "invalid_field"),
    (
        "create: ids not a list",
        "POST",
        C,
        {"type": "group", "participant_ids": "1,2"},
        422,
        "invalid_field",
    ),
    (
        "create: ids as strings",
        "POST",
        C,
        {"type": "group", "participant_ids": ["1", "2"]},
        422,
        "invalid_field",
    ),
    (
        "create: id out of range",
        "POST",
        C,
        {"type": "direct", "participant_ids": [2**40]},
        422,
        "invalid_field",
    ),
    (
        "create: negative id",
        "POST",
        C,
        {"type": "direct", "participant_ids": [-1]},
        422,
        "invalid_field",
    ),
    (
        "create: title too long",
        "POST",
        C,
        {"type": "group", "participant_ids": [1, 2], "title": "t" * 201},
        422,
        "invalid_field",
    ),
    ("send: huge body", "POST", f"{C}/OWN/messages", HUGE, 413, "payload_too_large"),
    (
        "send: content missing",
        "POST",
        f"{C}/OWN/messages",
        {"client_msg_id": "x"},
        422,
        "invalid_field",
    ),
    ("send: content a number", "POST", f"{C}/OWN/messages", {"content": 12}, 422, "invalid_field"),
    ("send: content empty", "POST", f"{C}/OWN/messages", {"content": ""}, 422, "empty_content"),
    (
        "send: content too long",
        "POST",
        f"{C}/OWN/messages",
        {"content": "x" * 4001},
        422,
        "message_too_long",
    ),
    (
        "send: client_msg_id too long",
        "POST",
        f"{C}/OWN/messages",
        {"content": "x", "client_msg_id": "c" * 129},
        422,
        "invalid_field",
    ),
    (
        "send: unknown conversation",
        "POST",
        f"{C}/00000000-0000-0000-0000-000000000000/messages",
        {"content": "x"},
        404,
        "conversation_not_found",
    ),
    (
        "send: other users' conversation",
        "POST",
        f"{C}/FOREIGN/messages",
        {"content": "x"},
        403,
        "not_a_participant",
    ),
    (
        "history: other users' conversation",
        "GET",
        f"{C}/FOREIGN/messages",
        None,
        403,
        "not_a_participant",
    ),
    (
        "history: unknown conversation",
        "GET",
        f"{C}/nope/messages",
        None,
        404,
        "conversation_not_found",
    ),
    ("history: limit too big", "GET", f"{C}/OWN/messages?limit=201", None, 422, "invalid_field"),
    (
        "history: limit not a number",
        "GET",
        f"{C}/OWN/messages?limit=ten",
        None,
        422,
        "invalid_field",
    ),
    (
        "history: negative after_seq",
        "GET",
        f"{C}/OWN/messages?after_seq=-1",
        None,
        422,
        "invalid_field",
    ),
    (
        "settings: other users' conversation",
        "GET",
        f"{C}/FOREIGN/settings",
        None,
        403,
        "not_a_participant",
    ),
    (
        "settings: put other users'",
        "PUT",
        f"{C}/FOREIGN/settings",
        {"muted": True},
        403,
        "not_a_participant",
    ),
    (
        "settings: wrong type",
        "PUT",
        f"{C}/OWN/settings",
        {"push_enabled": "no"},
        422,
        "invalid_field",
    ),
    ("read: seq not an int", "POST", f"{C}/OWN/read", {"seq": "1"}, 422, "invalid_field"),
    (
        "devices: platform unknown",
        "POST",
        "/api/v1/messenger/devices/register",
        {"device_token": "a" * 64, "platform": "pager", "provider": "fcm"},
        422,
        "invalid_field",
    ),
    (
        "devices: delete unknown",
        "DELETE",
        "/api/v1/messenger/devices/not-mine",
        None,
        404,
        "device_not_found",
    ),
    # PostgreSQL cannot store NUL: refused as bad input, never a 500.
    (
        "send: NUL in content",
        "POST",
        f"{C}/OWN/messages",
        {"content": "a\x00b"},
        422,
        "invalid_field",
    ),
    (
        "create: NUL in title",
        "POST",
        C,
        {"type": "group", "participant_ids": [1], "title": "\x00"},
        422,
        "invalid_field",
    ),
    ("NUL in a path", "GET", f"{C}/OWN%00/messages", None, 422, "invalid_field"),
    ("NUL in a query", "GET", "/api/v1/users?query=a%00", None, 422, "invalid_field"),
    (
        "devices: NUL in a token",
        "DELETE",
        "/api/v1/messenger/devices/abc%00def",
        None,
        422,
        "invalid_field",
    ),
    ("unknown path", "GET", "/api/v1/nothing-here", None, 404, "not_found"),
    ("wrong method", "DELETE", "/api/v1/me", None, 405, "method_not_allowed"),
    ("unknown path, not GET", "POST", "/api/v1/nothing-here", {}, 404, "not_found"),
    ("id past 64 bits", "PUT", "/api/v1/me/blocks/99999999999999999999", None, 404, "not_found"),
    ("id not a number", "DELETE", "/api/v1/me/blocks/abc", None, 404, "not_found"),
]


@pytest.fixture
async def world(pg_client: Client) -> dict:
    a, b = await pg_client.user(), await pg_client.user()
    own = await pg_client.conversation(a, b)
    stranger = await pg_client.user()
    foreign = await pg_client.conversation(stranger, await pg_client.user())
    return {"user": a, "own": own["id"], "foreign": foreign["id"], "stranger": stranger}


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "status", "code"), CASES, ids=[c[0] for c in CASES]
)
async def test_bad_request(
    pg_client: Client,
    world: dict,
    name: str,
    method: str,
    path: str,
    body: object,
    status: int,
    code: str,
) -> None:
    path = path.replace("OWN", world["own"]).replace("FOREIGN", world["foreign"])
    kwargs: dict = {"headers": dict(world["user"].headers)}
    if isinstance(body, str):
        kwargs["content"] = body.encode()
        kwargs["headers"]["Content-Type"] = "application/json"
    elif body is not None:
        kwargs["json"] = body
    r = await pg_client.http.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    # Nothing half-written: neither conversation gained a message.
    assert await pg_client.messages(world["user"], world["own"]) == []
    assert await pg_client.messages(world["stranger"], world["foreign"]) == []


DEEP_NUL = "[" * 600 + '"\\u0000"' + "]" * 600
# (name, method, path, raw body or None, status, code): the inputs that once gave a 500.
OUT_OF_RANGE = [
    ("after_seq past int32", "GET", f"{C}/OWN/messages?after_seq=2147483648", None, 422),
    ("after_seq 10**20", "GET", f"{C}/OWN/messages?after_seq={10**20}", None, 422),
    ("before_seq past int32", "GET", f"{C}/OWN/messages?before_seq=2147483648", None, 422),
    ("before_seq 10**20", "GET", f"{C}/OWN/messages?before_seq={10**20}", None, 422),
    ("limit 10**20", "GET", f"{C}/OWN/messages?limit={10**20}", None, 422),
    ("after_seq of 5000 digits", "GET", f"{C}/OWN/messages?after_seq={'9' * 5000}", None, 422),
    ("after_seq with underscores", "GET", f"{C}/OWN/messages?after_seq=1_0", None, 422),
    ("after_seq in other digits", "GET", f"{C}/OWN/messages?after_seq=%D9%A1", None, 422),
    ("user id past int64", "GET", f"/api/v1/users/{10**20}", None, 404),
    ("user id of 5000 digits", "GET", f"/api/v1/users/{'9' * 5000}", None, 404),
    (
        "mute_until past year 9999 in UTC",
        "PUT",
        f"{C}/OWN/settings",
        '{"mute_until": "9999-12-31T23:59:59-05:00"}',
        422,
    ),
    (
        "mute_until before year 1 in UTC",
        "PUT",
        f"{C}/OWN/settings",
        '{"mute_until": "0001-01-01T00:00:00+05:00"}',
        422,
    ),
    ("600 nested arrays holding a NUL", "POST", f"{C}/OWN/messages", DEEP_NUL, 400),
    (
        "content of 600 nested arrays",
        "POST",
        f"{C}/OWN/messages",
        f'{{"content": {DEEP_NUL}}}',
        422,
    ),
    ("settings of 600 nested arrays", "PUT", f"{C}/OWN/settings", f'{{"muted": {DEEP_NUL}}}', 422),
    ("nesting past orjson's limit", "POST", f"{C}/OWN/messages", "[" * 2000 + "]" * 2000, 400),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "status"), OUT_OF_RANGE, ids=[c[0] for c in OUT_OF_RANGE]
)
async def test_out_of_range_input_is_refused_quietly(
    client: Client, name: str, method: str, path: str, body: str | None, status: int
) -> None:
    """On SQLite and PostgreSQL: a 4xx in the API's error shape, and nothing in the log
    that reads as a crash."""
    a, b = await client.user(), await client.user()
    own = (await client.conversation(a, b))["id"]
    headers = {**a.headers, "Content-Type": "application/json"}
    with captured_logs() as logs:
        r = await client.http.request(
            method,
            path.replace("OWN", own),
            content=body.encode() if body is not None else None,
            headers=headers,
        )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert logs.failures() == []
    settings = await client.http.get(f"{C}/{own}/settings", headers=a.headers)
    assert settings.json()["mute_until"] is None
    assert await client.messages(a, own) == []


async def test_mute_until_is_stored_in_utc(client: Client) -> None:
    a, b = await client.user(), await client.user()
    own = (await client.conversation(a, b))["id"]
    r = await client.http.put(
        f"{C}/{own}/settings",
        json={"mute_until": "9999-12-31T18:59:59-05:00"},
        headers=a.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["mute_until"] == "9999-12-31T23:59:59+00:00"
