"""Reply and Mark as read from a notification, with an action token instead of a session,
on SQLite and PostgreSQL: what they do, and everything they refuse; ending the session
that registered the device ends its tokens."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select, update

from app.db import utcnow
from app.logs import redact
from app.messenger.action_tokens import AUDIENCE, issue_action_token
from app.messenger.cleanup import run_cleanup
from app.messenger.models import DeviceToken, PushAttempt
from app.models import Session as DbSession
from tests.helpers import (
    SECRET,
    Client,
    Node,
    Socket,
    User,
    eventually,
    make_settings,
    start_node,
)
from tests.logcapture import captured_logs
from tests.push_world import PushWorld, start_push_world
from tests.test_sessions import login, refresh

ACTIONS = "/api/v1/messenger/notification-actions"
DEVICES = "/api/v1/messenger/devices"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def web_subscription() -> str:
    """A browser's PushSubscription JSON, as a page registers it."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    return json.dumps(
        {
            "endpoint": f"https://fcm.googleapis.com/fcm/send/{_b64(os.urandom(12))}",
            "keys": {"p256dh": _b64(point), "auth": _b64(os.urandom(16))},
        }
    )


async def register(client: Client, user: User, subscription: str) -> str:
    r = await client.http.post(
        f"{DEVICES}/register",
        json={"device_token": subscription, "platform": "web", "provider": "web_push"},
        headers=user.headers,
    )
    assert r.status_code in (200, 201), r.text
    return str(r.json()["device_token_id"])


async def reply(client: Client, token: object, content: object = "on my way", **extra: object):  # type: ignore[no-untyped-def]
    return await client.http.post(
        f"{ACTIONS}/reply", json={"action_token": token, "content": content, **extra}
    )


async def read(client: Client, token: object, seq: object):  # type: ignore[no-untyped-def]
    return await client.http.post(f"{ACTIONS}/read", json={"action_token": token, "seq": seq})


def error_code(r) -> str:  # type: ignore[no-untyped-def]
    return str(r.json()["error"]["code"])


class Pair:
    """Two users in a direct conversation; `me` has a browser registered for pushes."""

    def __init__(self, me: User, other: User, cid: str, device_id: str, sub: str) -> None:
        self.me, self.other, self.cid, self.device_id, self.sub = me, other, cid, device_id, sub

    def token(self, key: str = SECRET, conversation_id: str | None = None) -> str:
        """A token as a push to the device carries: bound to the session that registered it."""
        return issue_action_token(
            key, self.me.id, self.device_id, conversation_id or self.cid, self.me.session_id
        )


async def pair(client: Client) -> Pair:
    me, other = await client.user(), await client.user()
    cid = (await client.conversation(other, me))["id"]
    sub = web_subscription()
    return Pair(me, other, cid, await register(client, me, sub), sub)


async def test_reply_posts_as_the_user_and_reaches_the_other_side(client: Client) -> None:
    p = await pair(client)
    watcher = await Socket.connect(client.node, p.other)
    try:
        r = await reply(client, p.token(), "see you at 8", client_msg_id="n-1")
        assert r.status_code == 201, r.text
        message = r.json()
        assert message["conversation_id"] == p.cid
        assert message["sender_id"] == p.me.id
        assert message["content"] == "see you at 8"
        assert message["client_msg_id"] == "n-1"
        frame = await watcher.expect("message.new")
        assert frame["message"]["id"] == message["id"]
        # The worker retries a reply whose answer it lost: the same message, not a second.
        again = await reply(client, p.token(), "see you at 8", client_msg_id="n-1")
        assert again.status_code == 200 and again.json()["id"] == message["id"]
        await watcher.nothing("message.new")
    finally:
        await watcher.close()
    assert [m["content"] for m in await client.messages(p.other, p.cid)] == ["see you at 8"]


async def test_read_moves_the_mark_like_a_read_anywhere(client: Client) -> None:
    p = await pair(client)
    for text in ("one", "two", "three"):
        assert (await client.send(p.other, p.cid, text)).status_code == 201
    watcher = await Socket.connect(client.node, p.other)
    try:
        r = await read(client, p.token(), 2)
        assert r.status_code == 200, r.text
        assert r.json() == {"conversation_id": p.cid, "seq": 2}
        await watcher.expect("read", conversation_id=p.cid, user_id=p.me.id, seq=2)
    finally:
        await watcher.close()
    r = await client.http.get("/api/v1/messenger/conversations", headers=p.me.headers)
    [conversation] = [c for c in r.json()["conversations"] if c["id"] == p.cid]
    assert conversation["unread_count"] == 1
    # Never backwards: the answer is the mark as it is, not the seq asked for.
    r = await read(client, p.token(), 1)
    assert r.status_code == 200 and r.json() == {"conversation_id": p.cid, "seq": 2}
    r = await client.http.get("/api/v1/messenger/conversations", headers=p.me.headers)
    [conversation] = [c for c in r.json()["conversations"] if c["id"] == p.cid]
    assert conversation["unread_count"] == 1


async def test_read_answers_the_mark_it_left(client: Client) -> None:
    p = await pair(client)
    # Nothing to read yet: a mark past the last message does not move.
    r = await read(client, p.token(), 5)
    assert r.status_code == 200 and r.json() == {"conversation_id": p.cid, "seq": 0}
    for text in ("one", "two"):
        assert (await client.send(p.other, p.cid, text)).status_code == 201
    r = await read(client, p.token(), 3)
    assert r.status_code == 200 and r.json() == {"conversation_id": p.cid, "seq": 0}
    r = await read(client, p.token(), 2)
    assert r.status_code == 200 and r.json() == {"conversation_id": p.cid, "seq": 2}
    # Read further elsewhere (REST): the notification's older seq answers that mark.
    assert (await client.send(p.other, p.cid, "three")).status_code == 201
    r = await client.http.post(
        f"/api/v1/messenger/conversations/{p.cid}/read", json={"seq": 3}, headers=p.me.headers
    )
    assert r.status_code == 200, r.text
    r = await read(client, p.token(), 1)
    assert r.status_code == 200 and r.json() == {"conversation_id": p.cid, "seq": 3}


async def test_bad_expired_and_foreign_tokens_are_refused(client: Client) -> None:
    p = await pair(client)
    now = utcnow()
    expired = jwt.encode(
        {
            "aud": AUDIENCE,
            "sub": str(p.me.id),
            "dev": p.device_id,
            "cid": p.cid,
            "iat": now - timedelta(days=8),
            "exp": now - timedelta(seconds=1),
        },
        SECRET,
        algorithm="HS256",
    )
    unsigned = jwt.encode(
        {"aud": AUDIENCE, "sub": str(p.me.id), "dev": p.device_id, "cid": p.cid,
         "exp": now + timedelta(days=1)},
        None,
        algorithm="none",
    )  # fmt: skip
    wrong_audience = jwt.encode(
        {"aud": "something-else", "sub": str(p.me.id), "dev": p.device_id, "cid": p.cid,
         "exp": now + timedelta(days=1)},
        SECRET,
        algorithm="HS256",
    )  # fmt: skip
    other_key = p.token(key="another-deployment-secret-key-0123456789abcdef")
    for bad in (
        "not-a-token",
        expired,
        unsigned,
        wrong_audience,
        other_key,
        p.me.token,  # a session's access token is not an action token
        p.token()[:-4] + "AAAA",
        "x" * 5000,
    ):
        r = await reply(client, bad)
        assert (r.status_code, error_code(r)) == (401, "invalid_token"), (bad[:40], r.text)
        r = await read(client, bad, 1)
        assert (r.status_code, error_code(r)) == (401, "invalid_token"), (bad[:40], r.text)
    for missing in (None, ""):
        r = await reply(client, missing)
        assert (r.status_code, error_code(r)) == (401, "unauthorized"), r.text
    r = await client.http.post(f"{ACTIONS}/read", json={"seq": 1})
    assert (r.status_code, error_code(r)) == (401, "unauthorized"), r.text
    # Nor is an action token a session: REST refuses it as a bearer token.
    r = await client.http.get("/api/v1/me", headers={"Authorization": f"Bearer {p.token()}"})
    assert r.status_code == 401
    assert await client.messages(p.other, p.cid) == []


async def test_a_device_unregistered_deactivated_or_moved_ends_its_tokens(
    client: Client, node: Node
) -> None:
    # Unregistered (as logging out of the web client does).
    p = await pair(client)
    token = p.token()
    assert (await reply(client, token, "before")).status_code == 201
    r = await client.http.delete(f"{DEVICES}/{p.sub}", headers=p.me.headers)
    assert r.status_code == 200, r.text
    r = await reply(client, token, "after")
    assert (r.status_code, error_code(r)) == (401, "invalid_token")
    assert (await read(client, token, 1)).status_code == 401

    # Deactivated (its push service said the subscription is dead).
    p = await pair(client)
    token = p.token()
    async with node.services.engine.begin() as conn:
        await conn.execute(
            update(DeviceToken).where(DeviceToken.id == p.device_id).values(is_active=False)
        )
    r = await reply(client, token)
    assert (r.status_code, error_code(r)) == (401, "invalid_token")

    # Moved: the same browser signed in as someone else registers it for them.
    p = await pair(client)
    token = p.token()
    stranger = await client.user()
    moved = await register(client, stranger, p.sub)
    assert moved != p.device_id  # a new device for its new user
    r = await reply(client, token)
    assert (r.status_code, error_code(r)) == (401, "invalid_token")
    assert (await read(client, token, 1)).status_code == 401
    # ... and a token naming the device's new owner is no good for the old one's chats.
    r = await reply(
        client, issue_action_token(SECRET, stranger.id, moved, p.cid, stranger.session_id)
    )
    assert (r.status_code, error_code(r)) == (403, "not_a_participant")
    assert [m["content"] for m in await client.messages(p.other, p.cid)] == []


async def test_a_device_that_moves_away_and_back_is_a_new_device(client: Client) -> None:
    """A -> B -> A: A's tokens from before the move stay refused (the device's id is not
    the one they name), and its new tokens work."""
    p = await pair(client)
    before = p.token()
    assert (await reply(client, before, "first")).status_code == 201
    stranger = await client.user()
    to_b = await register(client, stranger, p.sub)
    back = await register(client, p.me, p.sub)
    assert len({p.device_id, to_b, back}) == 3
    for token in (before, issue_action_token(SECRET, p.me.id, to_b, p.cid, p.me.session_id)):
        r = await reply(client, token, "stale")
        assert (r.status_code, error_code(r)) == (401, "invalid_token"), r.text
        assert (await read(client, token, 1)).status_code == 401
    fresh = issue_action_token(SECRET, p.me.id, back, p.cid, p.me.session_id)
    assert (await reply(client, fresh, "back again")).status_code == 201
    devices = (await client.http.get(DEVICES, headers=p.me.headers)).json()["devices"]
    assert [d["id"] for d in devices] == [back]
    assert (await client.http.get(DEVICES, headers=stranger.headers)).json()["devices"] == []
    assert [m["content"] for m in await client.messages(p.other, p.cid)] == ["first", "back again"]


async def test_a_token_acts_on_its_own_conversation_only(client: Client) -> None:
    p = await pair(client)
    elsewhere = (await client.conversation(p.me, await client.user()))["id"]
    # A conversation_id in the body is not the token's: it is not looked at.
    r = await reply(client, p.token(), "for x", conversation_id=elsewhere)
    assert r.status_code == 201 and r.json()["conversation_id"] == p.cid
    assert await client.messages(p.me, elsewhere) == []
    # A token for a conversation the user is not in (or no longer in), or none at all.
    outsiders = (await client.conversation(p.other, await client.user()))["id"]
    for cid, status, code in (
        (outsiders, 403, "not_a_participant"),
        ("00000000-0000-4000-8000-000000000000", 404, "conversation_not_found"),
    ):
        token = p.token(conversation_id=cid)
        r = await reply(client, token)
        assert (r.status_code, error_code(r)) == (status, code), r.text
        r = await read(client, token, 1)
        assert (r.status_code, error_code(r)) == (status, code), r.text
    assert await client.messages(p.other, outsiders) == []


async def test_blocks_and_bad_bodies_are_refused_as_on_rest(client: Client) -> None:
    p = await pair(client)
    token = p.token()
    url = f"{ACTIONS}/reply"
    for raw, status in (
        (b"{", 400),
        (b"[1]", 400),
        (b'"text"', 400),
        (b"", 400),
        (b"x" * (1024 * 1024 + 1), 413),
    ):
        r = await client.http.post(url, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == status, (raw[:10], r.text)
        r = await client.http.post(
            f"{ACTIONS}/read", content=raw, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == status, (raw[:10], r.text)
    for body, code in (
        ({"action_token": token}, "invalid_field"),
        ({"action_token": token, "content": 7}, "invalid_field"),
        ({"action_token": 42, "content": "hi"}, "invalid_field"),
        ({"action_token": token, "content": "   "}, "empty_content"),
        ({"action_token": token, "content": "x" * 4001}, "message_too_long"),
        ({"action_token": token, "content": "nul \u0000"}, "invalid_field"),
        ({"action_token": token, "content": "hi", "client_msg_id": "c" * 129}, "invalid_field"),
    ):
        r = await client.http.post(url, json=body)
        assert (r.status_code, error_code(r)) == (422, code), (body, r.text)
    for seq in (-1, "3", 1.5, None, 2**31):
        r = await read(client, token, seq)
        assert (r.status_code, error_code(r)) == (422, "invalid_field"), (seq, r.text)

    r = await client.http.put(f"/api/v1/me/blocks/{p.me.id}", headers=p.other.headers)
    assert r.status_code == 200, r.text
    r = await reply(client, token, "are you there?")
    assert (r.status_code, error_code(r)) == (403, "blocked"), r.text
    assert await client.messages(p.other, p.cid) == []


@pytest.fixture
async def tight_node(db_url: str) -> AsyncIterator[Node]:
    node = await start_node(make_settings(db_url, send_rate_per_second=0.01, send_burst=3))
    yield node
    await node.stop()


async def test_actions_are_rate_limited_like_sends(tight_node: Node) -> None:
    client = Client(tight_node)
    try:
        p = await pair(client)
        token = p.token()
        # Replies share the user's send bucket: one REST send, then two replies, then 429.
        assert (await client.send(p.me, p.cid, "typed")).status_code == 201
        for i in range(2):
            assert (await reply(client, token, f"reply {i}")).status_code == 201
        r = await reply(client, token, "one too many")
        assert (r.status_code, error_code(r)) == (429, "rate_limited"), r.text
        assert int(r.headers["Retry-After"]) >= 1
        # Read marks have a bucket of their own, at the same rate.
        for _ in range(3):
            assert (await read(client, token, 1)).status_code == 200
        r = await read(client, token, 1)
        assert (r.status_code, error_code(r)) == (429, "rate_limited"), r.text
        assert int(r.headers["Retry-After"]) >= 1
    finally:
        await client.close()


async def test_no_action_token_reaches_the_log(client: Client) -> None:
    p = await pair(client)
    token = p.token()
    with captured_logs() as logs:
        assert (await reply(client, token, "logged?")).status_code == 201
        assert (await read(client, token, 1)).status_code == 200
        await client.http.delete(f"{DEVICES}/{p.sub}", headers=p.me.headers)
        assert (await reply(client, token)).status_code == 401
    lines = [record.getMessage() for record in logs.records]
    assert any(f"notification reply user={p.me.id}" in line for line in lines), lines
    assert any(f"device gone device={p.device_id}" in line for line in lines), lines
    assert not [line for line in lines if token in line or token.split(".")[2] in line]
    assert not [line for line in lines if "logged?" in line]
    # Wherever a library might log a request body, the field's value goes too.
    for text in (
        json.dumps({"action_token": token, "content": "x"}),
        f"/notification-actions/read?action_token={token}",
        json.dumps({"action_token": "not-a-jwt-but-secret"}),
    ):
        clean = redact(text)
        assert token not in clean and "not-a-jwt-but-secret" not in clean, clean


# -- the session behind the device -----------------------------------------------------


def as_session(user: User, session: dict[str, Any]) -> User:
    """The same user, signed in through another session (another browser)."""
    return replace(
        user,
        token=session["access_token"],
        refresh_token=session["refresh_token"],
        session_id=session["session_id"],
    )


async def devices_on(client: Client, user: User) -> dict[str, bool]:
    r = await client.http.get(DEVICES, headers=user.headers)
    return {d["id"]: d["is_active"] for d in r.json()["devices"]}


def token_device(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["dev"])


async def end_session(
    client: Client, ending: str, laptop: User, phone: User, db_url: str, token: str
) -> None:
    """End the laptop's session the way named; the phone's stands. `token`: one of the
    laptop's action tokens."""
    if ending == "logout":
        r = await client.http.post("/api/v1/auth/logout", headers=laptop.headers)
    elif ending == "revoked from another":
        r = await client.http.delete(
            f"/api/v1/me/sessions/{laptop.session_id}", headers=phone.headers
        )
    elif ending == "all others revoked":
        r = await client.http.delete("/api/v1/me/sessions", headers=phone.headers)
        assert r.json()["revoked"] == 1
    elif ending == "refresh token reused":
        spent = laptop.refresh_token
        second = await refresh(client, spent)
        assert (await refresh(client, second.json()["refresh_token"])).status_code == 200
        r = await refresh(client, spent)  # spent before the last: stolen, the session ends
        assert r.status_code == 401
        return
    else:  # expired, then swept by the daily cleanup
        engine = client.node.services.engine
        async with engine.begin() as conn:
            await conn.execute(
                update(DbSession)
                .where(DbSession.id == laptop.session_id)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        # Refused from the moment it expires, its device still on until the sweep.
        r = await reply(client, token, "expired")
        assert (r.status_code, error_code(r)) == (401, "invalid_token"), r.text
        assert (await devices_on(client, phone))[token_device(token)] is True
        report = await run_cleanup(engine, make_settings(db_url))
        assert report.ran and report.devices_switched_off >= 1
        return
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "ending",
    ["logout", "revoked from another", "all others revoked", "refresh token reused", "expired"],
)
async def test_ending_a_session_switches_its_devices_off_and_refuses_their_tokens(
    client: Client, db_url: str, ending: str
) -> None:
    p = await pair(client)  # the laptop's browser, registered by its session
    laptop = p.me
    phone = as_session(p.me, await login(client, p.me))
    phone_device = await register(client, phone, web_subscription())
    laptop_token = p.token()
    phone_token = issue_action_token(SECRET, p.me.id, phone_device, p.cid, phone.session_id)
    assert (await reply(client, laptop_token, "from the laptop")).status_code == 201

    with captured_logs() as logs:
        await end_session(client, ending, laptop, phone, db_url, laptop_token)
        assert await devices_on(client, phone) == {p.device_id: False, phone_device: True}
        for r in (
            await reply(client, laptop_token, "stolen?"),
            await read(client, laptop_token, 1),
        ):
            assert (r.status_code, error_code(r)) == (401, "invalid_token"), r.text
        # The same user's other session, and its device, carry on.
        assert (await reply(client, phone_token, "from the phone")).status_code == 201
        assert (await read(client, phone_token, 1)).status_code == 200
    lines = [record.getMessage() for record in logs.records]
    if ending == "expired":
        assert any("devices_switched_off=" in line for line in lines), lines
    else:
        assert any(
            (laptop.session_id in line or ending == "all others revoked")
            and f"user={p.me.id}" in line
            and "devices_off=1" in line
            for line in lines
        ), lines
    # Refused for its session (expiry, before the sweep) or its device (every ending).
    why = "session ended" if ending == "expired" else "device gone"
    assert any(f"refused, {why} device={p.device_id}" in line for line in lines), lines
    assert [m["content"] for m in await client.messages(p.other, p.cid)] == [
        "from the laptop",
        "from the phone",
    ]


async def test_a_device_registered_again_from_another_session_follows_it(client: Client) -> None:
    p = await pair(client)
    laptop = p.me
    old_token = p.token()
    # Signed in afresh in the same browser: the page registers its subscription again.
    again = as_session(p.me, await login(client, p.me))
    assert await register(client, again, p.sub) == p.device_id
    new_token = issue_action_token(SECRET, p.me.id, p.device_id, p.cid, again.session_id)
    # A token of the session the device was bound to before is done with.
    r = await reply(client, old_token, "old binding")
    assert (r.status_code, error_code(r)) == (401, "invalid_token"), r.text
    # Ending that earlier session leaves the device alone; ending the new one does not.
    r = await client.http.post("/api/v1/auth/logout", headers=laptop.headers)
    assert r.status_code == 200
    assert await devices_on(client, again) == {p.device_id: True}
    assert (await reply(client, new_token, "new binding")).status_code == 201
    r = await client.http.post("/api/v1/auth/logout", headers=again.headers)
    assert r.status_code == 200
    async with client.node.services.engine.connect() as conn:
        active = await conn.scalar(
            select(DeviceToken.is_active).where(DeviceToken.id == p.device_id)
        )
    assert active is False
    assert (await reply(client, new_token, "after")).status_code == 401


async def test_a_device_from_before_sessions_keeps_working(client: Client) -> None:
    """A device registered before 0008 has no session, nor have its tokens: both stand
    as long as the device does; a session ending leaves it alone."""
    p = await pair(client)
    async with client.node.services.engine.begin() as conn:
        await conn.execute(
            update(DeviceToken).where(DeviceToken.id == p.device_id).values(session_id=None)
        )
    legacy = issue_action_token(SECRET, p.me.id, p.device_id, p.cid)
    assert (await reply(client, legacy, "old style")).status_code == 201
    # A token naming a session is not good for a device without one.
    r = await reply(client, p.token(), "forged binding")
    assert (r.status_code, error_code(r)) == (401, "invalid_token"), r.text
    assert (await client.http.post("/api/v1/auth/logout", headers=p.me.headers)).status_code == 200
    assert (await reply(client, legacy, "still")).status_code == 201
    # A session's device refuses a token without one.
    q = await pair(client)
    r = await reply(client, issue_action_token(SECRET, q.me.id, q.device_id, q.cid))
    assert (r.status_code, error_code(r)) == (401, "invalid_token"), r.text


async def test_a_revoked_session_registers_no_device(client: Client) -> None:
    u = await client.user()
    assert (await client.http.post("/api/v1/auth/logout", headers=u.headers)).status_code == 200
    r = await client.http.post(
        f"{DEVICES}/register",
        json={"device_token": web_subscription(), "platform": "web", "provider": "web_push"},
        headers=u.headers,
    )
    assert (r.status_code, error_code(r)) == (401, "invalid_token"), r.text


# -- with real pushes: the token a push carries, and the clear after its read ------------


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("actions"))


@pytest.fixture(scope="module")
async def push_node(world: PushWorld, db_url: str) -> AsyncIterator[Node]:
    n = await start_node(make_settings(db_url, **world.settings))
    yield n
    await n.stop()


@pytest.fixture
async def push_api(push_node: Node, world: PushWorld) -> AsyncIterator[Client]:
    world.reset()
    client = Client(push_node)
    yield client
    await client.close()


async def register_for(api: Client, user: User, provider: str, token: str) -> str:
    platform = {"web_push": "web", "fcm": "android"}[provider]
    r = await api.http.post(
        f"{DEVICES}/register",
        json={"device_token": token, "platform": platform, "provider": provider},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["device_token_id"])


def pushed(world: PushWorld, provider: str, token: str, kind: str) -> list[dict[str, Any]]:
    """What the device was pushed of one kind ("message" or "clear")."""
    found = []
    for r in world.accepted(provider, token):
        fields = r.message.get("data", {}) if provider == "fcm" else r.payload
        if (fields.get("type") == "clear") == (kind == "clear"):
            found.append(fields)
    return found


async def test_mark_as_read_from_a_notification_clears_the_other_devices_only(
    push_api: Client, push_node: Node, world: PushWorld
) -> None:
    alice, bob = await push_api.user(), await push_api.user()
    cid = (await push_api.conversation(alice, bob))["id"]
    laptop, tablet, phone = world.webpush.subscribe(), world.webpush.subscribe(), world.fcm_token()
    laptop_id = await register_for(push_api, bob, "web_push", laptop)
    await register_for(push_api, bob, "web_push", tablet)
    await register_for(push_api, bob, "fcm", phone)
    r = await push_api.send(alice, cid, "lunch?")
    assert r.status_code == 201, r.text
    message_id = r.json()["id"]

    async def shown() -> bool:
        async with push_node.services.engine.connect() as conn:
            rows = await conn.execute(
                select(PushAttempt.id).where(
                    PushAttempt.message_id == message_id, PushAttempt.outcome == "delivered"
                )
            )
            return len(rows.all()) == 3

    await eventually(shown, what="the message pushed to bob's three devices")
    [notification] = pushed(world, "web_push", laptop, "message")
    token = notification["action_token"]  # what the laptop's service worker holds

    r = await read(push_api, token, notification["data"]["seq"])
    assert r.status_code == 200 and r.json() == {"conversation_id": cid, "seq": 1}
    clearing = push_node.services.clearing
    await eventually(lambda: clearing.pending == 0, what="the clearing to finish")
    # The laptop closed its own notification: no clearing push for it, its row is done.
    assert pushed(world, "web_push", laptop, "clear") == []
    for provider, device in (("web_push", tablet), ("fcm", phone)):
        [clear] = pushed(world, provider, device, "clear")
        assert (clear["conversation_id"], int(clear["seq"])) == (cid, 1), clear
    async with push_node.services.engine.connect() as conn:
        rows = await conn.execute(
            select(PushAttempt.device_id, PushAttempt.cleared_at).where(
                PushAttempt.message_id == message_id
            )
        )
        states = {row.device_id: row.cleared_at is not None for row in rows}
    assert len(states) == 3 and set(states.values()) == {True} and laptop_id in states


async def test_the_token_a_push_carries_ends_with_its_session(
    push_api: Client, push_node: Node, world: PushWorld
) -> None:
    alice, bob = await push_api.user(), await push_api.user()
    cid = (await push_api.conversation(alice, bob))["id"]
    phone = as_session(bob, await login(push_api, bob))
    laptop, tablet = world.webpush.subscribe(), world.webpush.subscribe()
    await register_for(push_api, bob, "web_push", laptop)
    await register_for(push_api, phone, "web_push", tablet)
    assert (await push_api.send(alice, cid, "are you in?")).status_code == 201

    async def tokens() -> dict[str, str] | None:
        found = {
            name: pushed(world, "web_push", sub, "message")
            for name, sub in (("laptop", laptop), ("tablet", tablet))
        }
        if not all(found.values()):
            return None
        return {name: shown[0]["action_token"] for name, shown in found.items()}

    carried = await eventually(tokens, what="both browsers pushed")
    claims = jwt.decode(carried["laptop"], options={"verify_signature": False})
    assert claims["sid"] == bob.session_id
    r = await push_api.http.delete(f"/api/v1/me/sessions/{bob.session_id}", headers=phone.headers)
    assert r.status_code == 200, r.text
    r = await reply(push_api, carried["laptop"], "from a stolen laptop")
    assert (r.status_code, error_code(r)) == (401, "invalid_token"), r.text
    assert (await reply(push_api, carried["tablet"], "from the tablet")).status_code == 201
    # The laptop is pushed nothing more; the tablet is.
    assert (await push_api.send(alice, cid, "still there?")).status_code == 201
    await eventually(
        lambda: len(pushed(world, "web_push", tablet, "message")) == 2, what="the tablet pushed"
    )
    assert len(pushed(world, "web_push", laptop, "message")) == 1
