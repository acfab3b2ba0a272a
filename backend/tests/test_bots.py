"""Bots: accounts a user runs, with long-lived tokens that work over REST and WebSocket
like a user's access token; managed by their owner alone; never pushed; marked is_bot
wherever users are shown; their tokens never reach a log line."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
import websockets
from sqlalchemy import func, select

from app.cli import set_admin
from app.logs import REDACTED
from app.messenger.models import DeviceToken, PushAttempt, PushDecision
from app.models import User as UserRow
from tests import schema_check
from tests.helpers import Client, Node, Socket, User, eventually, make_settings, start_node
from tests.logcapture import captured_logs

BOTS = "/api/v1/me/bots"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_bot(client: Client, owner: User, display_name: str = "Build bot") -> dict[str, Any]:
    r = await client.http.post(
        BOTS,
        json={"username": f"b{secrets.token_hex(5)}", "display_name": display_name},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    return r.json()


async def message_with(socket: Socket, content: str) -> dict[str, Any]:
    """The next message.new with this content (a socket also gets its user's own)."""
    while True:
        frame = await socket.expect("message.new")
        if frame["message"]["content"] == content:
            return dict(frame["message"])


def as_user(bot: dict[str, Any]) -> User:
    return User(bot["id"], bot["username"], bot["token"], bot["username"])


async def test_a_bot_is_made_listed_rotated_and_deleted(client: Client) -> None:
    owner = await client.user()
    bot = await new_bot(client, owner)
    assert bot["token"].startswith("mbot_")
    assert set(bot) == {"id", "username", "token"}

    me = await client.http.get("/api/v1/me", headers=bearer(bot["token"]))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == bot["id"]
    assert me.json()["is_bot"] is True
    assert me.json()["display_name"] == "Build bot"

    listed = (await client.http.get(BOTS, headers=owner.headers)).json()["bots"]
    assert [b["id"] for b in listed] == [bot["id"]]
    assert "token" not in listed[0] and listed[0]["is_bot"] is True
    assert listed[0]["last_used_at"] is not None  # the /me call above used it

    rotated = await client.http.post(f"{BOTS}/{bot['id']}/token", headers=owner.headers)
    assert rotated.status_code == 200, rotated.text
    fresh = rotated.json()["token"]
    assert fresh != bot["token"]
    old = await client.http.get("/api/v1/me", headers=bearer(bot["token"]))
    assert old.status_code == 401 and old.json()["error"]["code"] == "invalid_token"
    assert (await client.http.get("/api/v1/me", headers=bearer(fresh))).status_code == 200

    gone = await client.http.delete(f"{BOTS}/{bot['id']}", headers=owner.headers)
    assert gone.status_code == 200, gone.text
    assert (await client.http.get("/api/v1/me", headers=bearer(fresh))).status_code == 401
    assert (await client.http.get(BOTS, headers=owner.headers)).json()["bots"] == []
    # Its username stays taken: nobody can pose as the bot its messages name.
    again = await client.http.post(BOTS, json={"username": bot["username"]}, headers=owner.headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "username_taken"


async def test_usernames_follow_the_rules_of_users(client: Client) -> None:
    owner = await client.user()
    taken = await client.http.post(BOTS, json={"username": owner.username}, headers=owner.headers)
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "username_taken"
    for bad in ({"username": "a"}, {"username": "no spaces"}, {}, {"username": 5}):
        r = await client.http.post(BOTS, json=bad, headers=owner.headers)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_field"
    assert (await client.http.post(BOTS, content=b"{", headers=owner.headers)).status_code == 400
    assert (await client.http.post(BOTS, json={"username": "nobodyhere"})).status_code == 401


async def test_only_the_owner_manages_a_bot(client: Client) -> None:
    owner, other = await client.user(), await client.user()
    bot = await new_bot(client, owner)
    for method, path in (("POST", f"{BOTS}/{bot['id']}/token"), ("DELETE", f"{BOTS}/{bot['id']}")):
        r = await client.http.request(method, path, headers=other.headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "bot_not_found", r.text
    # Nor is a person a bot of anyone's.
    r = await client.http.delete(f"{BOTS}/{other.id}", headers=owner.headers)
    assert r.status_code == 404
    assert (await client.http.get(BOTS, headers=other.headers)).json()["bots"] == []
    assert (await client.http.get("/api/v1/me", headers=bearer(bot["token"]))).status_code == 200


async def test_a_bot_cannot_log_in_make_bots_or_register_devices(client: Client) -> None:
    owner = await client.user()
    bot = await new_bot(client, owner)
    for password in ("", "correct horse battery", "!"):
        r = await client.http.post(
            "/api/v1/auth/login", json={"username": bot["username"], "password": password}
        )
        assert r.status_code == 401, r.text
    r = await client.http.post(BOTS, json={"username": "botsbot1"}, headers=bearer(bot["token"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_for_bots"
    r = await client.http.post(
        "/api/v1/messenger/devices/register",
        json={"device_token": "a" * 64, "platform": "ios", "provider": "apns"},
        headers=bearer(bot["token"]),
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "bots_cannot_register_devices"
    async with client.node.services.engine.connect() as conn:
        devices = await conn.scalar(
            select(func.count()).where(DeviceToken.__table__.c.user_id == bot["id"])
        )
    assert devices == 0


async def test_a_made_up_bot_token_is_refused(client: Client) -> None:
    owner = await client.user()
    bot = await new_bot(client, owner)
    token_id = bot["token"].split("_")[1]
    for token in (
        f"mbot_{token_id}_" + "A" * 43,  # the right id, a wrong secret
        "mbot_99999999_" + bot["token"][-43:],  # another id
        "mbot_" + "9" * 30 + "_x",
        "mbot_",
    ):
        r = await client.http.get("/api/v1/me", headers=bearer(token))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token", token
    ws = await websockets.connect(f"{client.node.ws_url}?token=mbot_1_" + "B" * 43)
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 4401


async def test_a_bot_talks_over_rest_and_websocket(client: Client) -> None:
    owner, friend = await client.user(), await client.user()
    bot = as_user(await new_bot(client, owner))
    group = await client.conversation(owner, friend, bot, title="builds")
    bot_socket = await Socket.connect(client.node, bot)
    friend_socket = await Socket.connect(client.node, friend)
    try:
        # A person's message reaches the bot's socket.
        r = await client.send(friend, group["id"], "ship it?")
        assert r.status_code == 201, r.text
        got = await bot_socket.expect("message.new")
        assert got["message"]["content"] == "ship it?"

        # The bot answers over its socket, then over REST; both reach people live.
        await bot_socket.send(
            {
                "type": "message.send",
                "conversation_id": group["id"],
                "content": "build 42 green",
                "client_msg_id": "b-1",
            }
        )
        ack = await bot_socket.expect("message.ack", client_msg_id="b-1")
        assert ack["message"]["sender_id"] == bot.id
        live = await message_with(friend_socket, "build 42 green")
        assert live["sender_id"] == bot.id
        assert (await client.send(bot, group["id"], "deployed")).status_code == 201
        live = await message_with(friend_socket, "deployed")
        assert live["sender_id"] == bot.id
        history = await client.messages(bot, group["id"])
        assert [m["content"] for m in history] == ["ship it?", "build 42 green", "deployed"]
    finally:
        await bot_socket.close()
        await friend_socket.close()

    # is_bot wherever users are shown.
    shown = await client.http.get(f"/api/v1/users/{bot.id}", headers=friend.headers)
    assert shown.json()["is_bot"] is True
    person = await client.http.get(f"/api/v1/users/{friend.id}", headers=owner.headers)
    assert person.json()["is_bot"] is False
    found = await client.http.get(
        "/api/v1/users", params={"query": bot.username}, headers=friend.headers
    )
    assert [(u["id"], u["is_bot"]) for u in found.json()["users"]] == [(bot.id, True)]
    me = await client.http.get("/api/v1/me", headers=owner.headers)
    assert me.json()["is_bot"] is False


async def test_a_bot_in_a_group_is_never_pushed(client: Client) -> None:
    """A bot has no device (it cannot register one): its push decision is never `sent`,
    and no delivery is attempted to it, while the offline person is decided on as usual."""
    owner, offline = await client.user(), await client.user()
    bot = as_user(await new_bot(client, owner))
    group = await client.conversation(owner, offline, bot, title="pushes")
    sent = await client.send(owner, group["id"], "hello all")
    assert sent.status_code == 201, sent.text
    engine = client.node.services.engine
    decisions = PushDecision.__table__

    async def decided() -> dict[int, str]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(decisions.c.user_id, decisions.c.reason).where(
                    decisions.c.conversation_id == group["id"]
                )
            )
            return {r.user_id: r.reason for r in rows}

    found = await eventually(
        lambda: _both(decided(), offline.id, bot.id), what="push decisions for both"
    )
    assert found[offline.id] == "no_device"
    assert found[bot.id] != "sent"
    async with engine.connect() as conn:
        attempts = await conn.scalar(
            select(func.count()).where(PushAttempt.__table__.c.user_id == bot.id)
        )
    assert attempts == 0


async def _both(pending: Any, *user_ids: int) -> dict[int, str] | None:
    found = await pending
    return found if all(u in found for u in user_ids) else None


async def test_the_cap_on_bots_per_owner(sqlite_url: str) -> None:
    node = await start_node(make_settings(sqlite_url, max_bots_per_user=2))
    client = Client(node)
    try:
        owner = await client.user()
        first = await new_bot(client, owner)
        await new_bot(client, owner)
        r = await client.http.post(BOTS, json={"username": "onetoomany"}, headers=owner.headers)
        assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_bots"
        # A deleted bot frees its place.
        await client.http.delete(f"{BOTS}/{first['id']}", headers=owner.headers)
        await new_bot(client, owner)
    finally:
        await client.close()
        await node.stop()


@pytest.fixture
async def two_nodes(postgresql_url: str) -> AsyncIterator[tuple[Node, Node]]:
    n1 = await start_node(make_settings(postgresql_url))
    n2 = await start_node(make_settings(postgresql_url))
    yield n1, n2
    await n1.stop()
    await n2.stop()


async def test_a_rotated_token_is_refused_on_another_node_at_once(
    two_nodes: tuple[Node, Node],
) -> None:
    """Nothing caches a verification: REST on the other node refuses the old token at
    once, and its sockets there close with 4401 within the revocation poll."""
    n1, n2 = two_nodes
    api1, api2 = Client(n1), Client(n2)
    try:
        owner = await api1.user()
        bot = await new_bot(api1, owner)
        ws = await websockets.connect(f"{n2.ws_url}?token={bot['token']}")
        await ws.send('{"type": "ping"}')
        assert "pong" in await asyncio.wait_for(ws.recv(), 5)
        r = await api1.http.post(f"{BOTS}/{bot['id']}/token", headers=owner.headers)
        assert r.status_code == 200
        old = await api2.http.get("/api/v1/me", headers=bearer(bot["token"]))
        assert old.status_code == 401
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 4401
        fresh = await api2.http.get("/api/v1/me", headers=bearer(r.json()["token"]))
        assert fresh.status_code == 200
    finally:
        await api1.close()
        await api2.close()


async def test_bot_tokens_never_reach_a_log_line(client: Client) -> None:
    owner = await client.user()
    bot = await new_bot(client, owner)
    token = bot["token"]
    secret = token.split("_", 2)[2]
    access = logging.getLogger("uvicorn.access")
    level = access.level
    with captured_logs() as logs:
        access.setLevel(logging.INFO)
        try:
            # A fresh client: uvicorn decides per connection whether to write access lines.
            async with httpx2.AsyncClient(
                event_hooks=schema_check.EVENT_HOOKS, base_url=client.node.url
            ) as http:
                me = await http.get(f"/api/v1/me?token={token}", headers=bearer(token))
                assert me.status_code == 200
                await http.get(f"/api/v1/users/{token}", headers=bearer(token))
            ws = await websockets.connect(f"{client.node.ws_url}?token={token}")
            await ws.close()
            logging.getLogger("app.test").warning("leaked %s in passing", token)
        finally:
            access.setLevel(level)
    lines = [record.getMessage() for record in logs.records]
    assert any("/api/v1/me" in line for line in lines), lines  # the access log was read
    assert all(secret not in line for line in lines), [s for s in lines if secret in s]
    assert any(f"mbot_{token.split('_')[1]}_{REDACTED}" in line for line in lines), lines


async def test_logout_with_a_bot_token_revokes_it(client: Client) -> None:
    """A CI job's logout ends the token it used: answering success and leaving the
    token working would keep a credential alive its user believes gone."""
    owner = await client.user()
    bot = await new_bot(client, owner)
    r = await client.http.post("/api/v1/auth/logout", headers=bearer(bot["token"]))
    assert r.status_code == 200 and r.json() == {"success": True}, r.text
    after = await client.http.get("/api/v1/me", headers=bearer(bot["token"]))
    assert after.status_code == 401 and after.json()["error"]["code"] == "invalid_token"
    # The owner gives it a new one.
    rotated = await client.http.post(f"{BOTS}/{bot['id']}/token", headers=owner.headers)
    fresh = rotated.json()["token"]
    assert (await client.http.get("/api/v1/me", headers=bearer(fresh))).status_code == 200


async def test_a_bot_cannot_list_bots(client: Client) -> None:
    owner = await client.user()
    bot = await new_bot(client, owner)
    r = await client.http.get(BOTS, headers=bearer(bot["token"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_for_bots", r.text


async def test_a_deleted_bot_leaves_its_groups_and_its_sockets_close(client: Client) -> None:
    owner, friend = await client.user(), await client.user()
    bot = as_user(await new_bot(client, owner))
    joined = await client.conversation(owner, friend, bot, title="joined")
    # A group the bot made: its ownership passes to a person.
    made = await client.conversation(bot, friend, title="made by the bot")
    direct = await client.conversation(friend, bot)
    bot_socket = await Socket.connect(client.node, bot)
    friend_socket = await Socket.connect(client.node, friend)
    try:
        r = await client.http.delete(f"{BOTS}/{bot.id}", headers=owner.headers)
        assert r.status_code == 200, r.text
        seen = {}
        while len(seen) < 2:
            frame = await friend_socket.expect("conversation.updated")
            seen[frame["conversation"]["id"]] = frame["conversation"]
        assert set(seen) == {joined["id"], made["id"]}
        for conversation in seen.values():
            assert bot.id not in conversation["participant_ids"]
        roles = {p["user_id"]: p["role"] for p in seen[made["id"]]["participants"]}
        assert roles == {friend.id: "owner"}
        await asyncio.wait_for(bot_socket.ws.wait_closed(), 10)
        assert bot_socket.ws.close_code == 4401
    finally:
        await bot_socket.close()
        await friend_socket.close()
    for group in (joined, made):
        detail = await client.http.get(
            f"/api/v1/messenger/conversations/{group['id']}", headers=friend.headers
        )
        assert bot.id not in [p["user_id"] for p in detail.json()["participants"]]
    # The direct conversation keeps its two sides (and its history).
    detail = await client.http.get(
        f"/api/v1/messenger/conversations/{direct['id']}", headers=friend.headers
    )
    assert bot.id in [p["user_id"] for p in detail.json()["participants"]]


async def test_every_bot_made_counts_against_the_day_and_the_address(sqlite_url: str) -> None:
    """Deleted bots keep their rows (and usernames), so a deleted one still counts
    against the owner's day; making a bot takes one of the address's registrations."""
    node = await start_node(make_settings(sqlite_url, bot_creations_per_day=2))
    client = Client(node)
    try:
        owner = await client.user()
        first = await new_bot(client, owner)
        await client.http.delete(f"{BOTS}/{first['id']}", headers=owner.headers)
        await new_bot(client, owner)
        r = await client.http.post(BOTS, json={"username": "thirdtoday"}, headers=owner.headers)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        assert int(r.headers["Retry-After"]) >= 1
        # The deleted bot's username stays taken: nobody can pose as it.
        other = await client.user()
        r = await client.http.post(
            BOTS, json={"username": first["username"]}, headers=other.headers
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "username_taken", r.text
    finally:
        await client.close()
        await node.stop()

    node = await start_node(
        make_settings(sqlite_url, registration_burst=2, registration_rate_per_minute=1)
    )
    client = Client(node)
    try:
        owner = await client.user()  # one registration
        await new_bot(client, owner)  # and a bot: the address's burst is spent
        r = await client.http.post(BOTS, json={"username": "oneaddress"}, headers=owner.headers)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        r = await client.http.post(
            "/api/v1/auth/register", json={"username": "oneaddress", "password": "x" * 12}
        )
        assert r.status_code == 429, r.text
    finally:
        await client.close()
        await node.stop()


async def test_deleting_an_owner_keeps_their_bots_rows_and_ends_their_tokens(
    postgresql_url: str,
) -> None:
    """bot_owner_id is SET NULL: the bot's row and messages stay, its token stops."""
    node = await start_node(make_settings(postgresql_url))
    client = Client(node)
    try:
        owner, friend = await client.user(), await client.user()
        bot = as_user(await new_bot(client, owner))
        group = await client.conversation(bot, friend, title="the bot's")
        assert (await client.send(bot, group["id"], "still here")).status_code == 201
        users = UserRow.__table__
        async with node.services.engine.begin() as conn:
            await conn.execute(users.delete().where(users.c.id == owner.id))
        async with node.services.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(users.c.is_bot, users.c.bot_owner_id).where(users.c.id == bot.id)
                )
            ).one()
        assert row.is_bot is True and row.bot_owner_id is None
        r = await client.http.get("/api/v1/me", headers=bot.headers)
        assert r.status_code == 401, r.text
        history = await client.messages(friend, group["id"])
        assert [(m["sender_id"], m["content"]) for m in history] == [(bot.id, "still here")]
    finally:
        await client.close()
        await node.stop()


async def test_set_admin_refuses_a_bot(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    owner = await client.user()
    bot = await new_bot(client, owner)
    settings = client.node.services.settings
    assert await set_admin(settings, bot["username"], True) == 1
    assert "a bot cannot be an admin" in capsys.readouterr().err
    async with client.node.services.engine.connect() as conn:
        table = UserRow.__table__
        is_admin = await conn.scalar(select(table.c.is_admin).where(table.c.id == bot["id"]))
    assert is_admin is False
    # A person still can be made one.
    assert await set_admin(settings, owner.username, True) == 0
