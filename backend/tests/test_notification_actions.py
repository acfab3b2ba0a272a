"""Reply and Mark as read from a notification, with an action token instead of a session,
on SQLite and PostgreSQL: what they do, and everything they refuse."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import update

from app.db import utcnow
from app.logs import redact
from app.messenger.action_tokens import AUDIENCE, issue_action_token
from app.messenger.models import DeviceToken
from tests.helpers import SECRET, Client, Node, Socket, User, make_settings, start_node
from tests.logcapture import captured_logs

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
        return issue_action_token(key, self.me.id, self.device_id, conversation_id or self.cid)


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
    # Never backwards.
    assert (await read(client, p.token(), 1)).status_code == 200
    r = await client.http.get("/api/v1/messenger/conversations", headers=p.me.headers)
    [conversation] = [c for c in r.json()["conversations"] if c["id"] == p.cid]
    assert conversation["unread_count"] == 1


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
    assert await register(client, stranger, p.sub) == p.device_id
    r = await reply(client, token)
    assert (r.status_code, error_code(r)) == (401, "invalid_token")
    assert (await read(client, token, 1)).status_code == 401
    # ... and a token naming the device's new owner is no good for the old one's chats.
    r = await reply(client, issue_action_token(SECRET, stranger.id, p.device_id, p.cid))
    assert (r.status_code, error_code(r)) == (403, "not_a_participant")
    assert [m["content"] for m in await client.messages(p.other, p.cid)] == []


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
