"""Incoming webhooks: group admins make and revoke them; their URL alone posts into the
group as the webhook's bot, through the send path (live to members, pushes decided for
people as usual), from JSON, Slack's bodies, forms and plain text, within a rate; a
wrong secret, an unknown or revoked webhook are the same 404; the secret never reaches
a log line."""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import Any
from urllib.parse import urlsplit

import httpx2
import orjson
from sqlalchemy import select

from app.logs import REDACTED
from app.messenger.models import PushDecision
from tests import schema_check
from tests.helpers import Client, Socket, User, eventually, make_settings, start_node
from tests.logcapture import captured_logs


def hooks_of(conversation_id: str) -> str:
    return f"/api/v1/messenger/conversations/{conversation_id}/webhooks"


async def make_hook(client: Client, admin: User, conversation_id: str, name: str = "CI") -> dict:
    r = await client.http.post(
        hooks_of(conversation_id), json={"name": name}, headers=admin.headers
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def local(client: Client, url: str) -> str:
    """The hook's URL on the test node (its path under the node's address)."""
    return client.node.url + urlsplit(url).path


async def message_with(socket: Socket, content: str) -> dict[str, Any]:
    while True:
        frame = await socket.expect("message.new")
        if frame["message"]["content"] == content:
            return dict(frame["message"])


async def test_only_group_admins_make_list_and_revoke_webhooks(client: Client) -> None:
    owner, member, outsider = await client.user(), await client.user(), await client.user()
    group = (await client.conversation(owner, member, title="ops"))["id"]
    direct = (await client.conversation(owner, member))["id"]

    for who, code in ((member, "not_allowed"), (outsider, "not_a_participant")):
        r = await client.http.post(hooks_of(group), json={"name": "x"}, headers=who.headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == code, r.text
    r = await client.http.post(hooks_of(direct), json={"name": "x"}, headers=owner.headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "webhooks_groups_only"
    r = await client.http.post(
        hooks_of("no-such-conversation"), json={"name": "x"}, headers=owner.headers
    )
    assert r.status_code == 404
    for bad in ({}, {"name": ""}, {"name": "x" * 65}, {"name": 3}):
        r = await client.http.post(hooks_of(group), json=bad, headers=owner.headers)
        assert r.status_code == 422, (bad, r.text)
    assert (await client.http.post(hooks_of(group), json={"name": "x"})).status_code == 401

    hook = await make_hook(client, owner, group, "Deploys")
    assert set(hook) == {"id", "name", "url"}
    assert hook["url"].endswith(f"/api/v1/hooks/{hook['id']}/" + hook["url"].rsplit("/", 1)[1])
    assert len(hook["url"].rsplit("/", 1)[1]) == 43  # 32 random bytes

    listed = await client.http.get(hooks_of(group), headers=owner.headers)
    [shown] = listed.json()["webhooks"]
    assert shown["id"] == hook["id"] and shown["name"] == "Deploys"
    assert "url" not in shown and "secret" not in orjson.dumps(shown).decode()
    assert (await client.http.get(hooks_of(group), headers=member.headers)).status_code == 403

    # Its bot is a member of the group, marked as a bot, named after the webhook.
    detail = await client.http.get(
        f"/api/v1/messenger/conversations/{group}", headers=member.headers
    )
    assert shown["bot_id"] in [p["user_id"] for p in detail.json()["participants"]]
    bot = (await client.http.get(f"/api/v1/users/{shown['bot_id']}", headers=member.headers)).json()
    assert bot["is_bot"] is True and bot["display_name"] == "Deploys"
    # Not one of the owner's own bots.
    assert (await client.http.get("/api/v1/me/bots", headers=owner.headers)).json()["bots"] == []

    path = f"{hooks_of(group)}/{hook['id']}"
    assert (await client.http.delete(path, headers=member.headers)).status_code == 403
    assert (
        await client.http.delete(f"{hooks_of(group)}/nope", headers=owner.headers)
    ).status_code == 404
    r = await client.http.delete(path, headers=owner.headers)
    assert r.status_code == 200, r.text
    assert (await client.http.delete(path, headers=owner.headers)).status_code == 404
    assert (await client.http.get(hooks_of(group), headers=owner.headers)).json()["webhooks"] == []
    post = await client.http.post(local(client, hook["url"]), json={"content": "late"})
    assert post.status_code == 404 and post.json()["error"]["code"] == "webhook_not_found"
    detail = await client.http.get(
        f"/api/v1/messenger/conversations/{group}", headers=member.headers
    )
    assert shown["bot_id"] not in [p["user_id"] for p in detail.json()["participants"]]


async def test_a_post_arrives_live_as_the_bot_in_every_accepted_shape(client: Client) -> None:
    owner, member = await client.user(), await client.user()
    group = (await client.conversation(owner, member, title="deploys"))["id"]
    hook = await make_hook(client, owner, group, "Deploy bot")
    url = local(client, hook["url"])
    socket = await Socket.connect(client.node, member)
    try:
        # No auth of any kind.
        async with httpx2.AsyncClient(event_hooks=schema_check.EVENT_HOOKS) as http:
            shapes: list[tuple[str, dict[str, Any]]] = [
                ("json content", {"json": {"content": "json content"}}),
                ("slack text", {"json": {"text": "slack text"}}),
                (
                    "slack form",
                    {"data": {"payload": orjson.dumps({"text": "slack form"}).decode()}},
                ),
                ("form content", {"data": {"content": "form content"}}),
                (
                    "plain text",
                    {"content": b"plain text", "headers": {"Content-Type": "text/plain"}},
                ),
                # curl -d sends its data as a form, unencoded.
                (
                    "curl text",
                    {
                        "content": b"curl text",
                        "headers": {"Content-Type": "application/x-www-form-urlencoded"},
                    },
                ),
                (
                    "curl json",
                    {
                        "content": b'{"content":"curl json"}',
                        "headers": {"Content-Type": "application/x-www-form-urlencoded"},
                    },
                ),
            ]
            for content, kwargs in shapes:
                r = await http.post(url, **kwargs)
                assert r.status_code == 200, (content, r.text)
                assert r.json()["ok"] is True
                message = await message_with(socket, content)
                assert message["id"] == r.json()["message_id"]
        bot_id = message["sender_id"]
        bot = await client.http.get(f"/api/v1/users/{bot_id}", headers=member.headers)
        assert bot.json()["is_bot"] is True
        history = await client.messages(member, group)
        assert [m["content"] for m in history] == [content for content, _ in shapes]
        assert {m["sender_id"] for m in history} == {bot_id}
    finally:
        await socket.close()


async def test_the_documented_curl_command_works(client: Client) -> None:
    curl = shutil.which("curl")
    owner, member = await client.user(), await client.user()
    group = (await client.conversation(owner, member, title="curl"))["id"]
    hook = await make_hook(client, owner, group)
    url = local(client, hook["url"])
    if curl is None:  # no curl here: the same request curl -d makes
        async with httpx2.AsyncClient(event_hooks=schema_check.EVENT_HOOKS) as http:
            r = await http.post(
                url,
                content=b'{"content":"deploy done"}',
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        assert r.status_code == 200, r.text
    else:
        proc = await asyncio.create_subprocess_exec(
            curl,
            "-sS",
            "-d",
            '{"content":"deploy done"}',
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        assert orjson.loads(out)["ok"] is True
    [message] = await client.messages(member, group)
    assert message["content"] == "deploy done"


async def test_bad_posts_get_clear_errors(client: Client) -> None:
    owner, member = await client.user(), await client.user()
    group = (await client.conversation(owner, member, title="errors"))["id"]
    hook = await make_hook(client, owner, group)
    url = local(client, hook["url"])
    base, secret = url.rsplit("/", 1)
    async with httpx2.AsyncClient(event_hooks=schema_check.EVENT_HOOKS) as http:
        cases: list[tuple[str, dict[str, Any], int, str]] = [
            (f"{base}/{'A' * 43}", {"json": {"content": "x"}}, 404, "webhook_not_found"),
            (
                f"{client.node.url}/api/v1/hooks/00000000-0000-0000-0000-000000000000/{secret}",
                {"json": {"content": "x"}},
                404,
                "webhook_not_found",
            ),
            (f"{base}/{'A' * 200}", {"json": {"content": "x"}}, 404, "webhook_not_found"),
            (
                url,
                {"content": b"{", "headers": {"Content-Type": "application/json"}},
                400,
                "malformed_json",
            ),
            (url, {"json": [1]}, 400, "malformed_json"),
            (url, {"json": {"username": "x"}}, 422, "invalid_field"),
            (url, {"json": {"content": 5}}, 422, "invalid_field"),
            (url, {"json": {"content": "   "}}, 422, "empty_content"),
            (url, {"json": {"content": "x" * 4001}}, 422, "message_too_long"),
            (url, {"json": {"content": "a\u0000b"}}, 422, "invalid_field"),
            (
                url,
                {"content": b"\xff\xfe", "headers": {"Content-Type": "text/plain"}},
                400,
                "malformed_body",
            ),
            (
                url,
                {"content": b"<x/>", "headers": {"Content-Type": "application/xml"}},
                415,
                "unsupported_media_type",
            ),
            (url, {"content": b"x" * (1_048_576 + 1)}, 413, "payload_too_large"),
        ]
        for target, kwargs, status, code in cases:
            r = await http.post(target, **kwargs)
            assert r.status_code == status, (target[-20:], kwargs.get("json"), r.text)
            assert r.json()["error"]["code"] == code, r.text
    assert await client.messages(member, group) == []


async def test_webhook_posts_are_rate_limited(sqlite_url: str) -> None:
    node = await start_node(make_settings(sqlite_url, webhook_rate_per_minute=1, webhook_burst=2))
    client = Client(node)
    try:
        owner, member = await client.user(), await client.user()
        group = (await client.conversation(owner, member, title="limits"))["id"]
        url = local(client, (await make_hook(client, owner, group))["url"])
        other = local(client, (await make_hook(client, owner, group, "other"))["url"])
        async with httpx2.AsyncClient(event_hooks=schema_check.EVENT_HOOKS) as http:
            for n in range(2):
                assert (await http.post(url, json={"content": f"n{n}"})).status_code == 200
            r = await http.post(url, json={"content": "one too many"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert int(r.headers["Retry-After"]) >= 1
            # Each webhook has its own bucket.
            assert (await http.post(other, json={"content": "other"})).status_code == 200
        assert [m["content"] for m in await client.messages(member, group)] == [
            "n0",
            "n1",
            "other",
        ]
    finally:
        await client.close()
        await node.stop()


async def test_mentions_and_pushes_work_as_for_any_send(client: Client) -> None:
    owner, offline = await client.user(), await client.user()
    group = (await client.conversation(owner, offline, title="alerts"))["id"]
    hook = await make_hook(client, owner, group)
    async with httpx2.AsyncClient(event_hooks=schema_check.EVENT_HOOKS) as http:
        r = await http.post(local(client, hook["url"]), json={"text": f"@{offline.username} look"})
    assert r.status_code == 200, r.text
    [message] = await client.messages(offline, group)
    assert message["mentions"] == [offline.id]
    decisions = PushDecision.__table__

    async def decided() -> Any:
        async with client.node.services.engine.connect() as conn:
            return (
                await conn.execute(
                    select(decisions.c.reason).where(
                        decisions.c.conversation_id == group, decisions.c.user_id == offline.id
                    )
                )
            ).scalar()

    # The offline person is decided on like for any message (no device here: no_device).
    assert await eventually(decided, what="the push decision") == "no_device"


async def test_the_secret_never_reaches_a_log_line(client: Client) -> None:
    owner, member = await client.user(), await client.user()
    group = (await client.conversation(owner, member, title="logs"))["id"]
    hook = await make_hook(client, owner, group)
    secret = hook["url"].rsplit("/", 1)[1]
    access = logging.getLogger("uvicorn.access")
    level = access.level
    with captured_logs() as logs:
        access.setLevel(logging.INFO)
        try:
            async with httpx2.AsyncClient(event_hooks=schema_check.EVENT_HOOKS) as http:
                r = await http.post(local(client, hook["url"]), json={"content": "logged?"})
                assert r.status_code == 200
        finally:
            access.setLevel(level)
    lines = [record.getMessage() for record in logs.records]
    assert any(f"/api/v1/hooks/{hook['id']}/{REDACTED}" in line for line in lines), lines
    assert all(secret not in line for line in lines)


async def test_taking_the_bot_out_of_the_group_revokes_the_webhook(client: Client) -> None:
    """The webhook and its bot's membership cannot disagree: once the bot is out, the URL
    is a revoked webhook's (404, not listed), and adding the bot back revives nothing."""
    owner, member = await client.user(), await client.user()
    group = (await client.conversation(owner, member, title="removal"))["id"]
    hook = await make_hook(client, owner, group)
    [shown] = (await client.http.get(hooks_of(group), headers=owner.headers)).json()["webhooks"]
    bot_id = shown["bot_id"]
    url = local(client, hook["url"])
    assert (await client.http.post(url, json={"content": "before"})).status_code == 200

    participants = f"/api/v1/messenger/conversations/{group}/participants"
    r = await client.http.delete(f"{participants}/{bot_id}", headers=owner.headers)
    assert r.status_code == 200, r.text
    post = await client.http.post(url, json={"content": "after"})
    assert post.status_code == 404 and post.json()["error"]["code"] == "webhook_not_found"
    assert (await client.http.get(hooks_of(group), headers=owner.headers)).json()["webhooks"] == []

    r = await client.http.post(participants, json={"user_ids": [bot_id]}, headers=owner.headers)
    assert r.status_code in (200, 201), r.text
    post = await client.http.post(url, json={"content": "re-added"})
    assert post.status_code == 404 and post.json()["error"]["code"] == "webhook_not_found"
    assert [m["content"] for m in await client.messages(member, group)] == ["before"]


async def test_a_webhooks_bot_never_runs_the_group(client: Client) -> None:
    owner, member = await client.user(), await client.user()
    group = (await client.conversation(owner, member, title="roles"))["id"]
    await make_hook(client, owner, group)
    [shown] = (await client.http.get(hooks_of(group), headers=owner.headers)).json()["webhooks"]
    path = f"/api/v1/messenger/conversations/{group}/participants/{shown['bot_id']}"
    for role in ("admin", "owner"):
        r = await client.http.patch(path, json={"role": role}, headers=owner.headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_allowed", r.text
    detail = await client.http.get(
        f"/api/v1/messenger/conversations/{group}", headers=owner.headers
    )
    roles = {p["user_id"]: p["role"] for p in detail.json()["participants"]}
    assert roles[shown["bot_id"]] == "member" and roles[owner.id] == "owner"
    # A person is still promoted as before.
    r = await client.http.patch(
        f"/api/v1/messenger/conversations/{group}/participants/{member.id}",
        json={"role": "admin"},
        headers=owner.headers,
    )
    assert r.status_code == 200, r.text


async def test_guesses_count_against_the_address(sqlite_url: str) -> None:
    """Unknown ids and wrong secrets take from the client address's bucket before any
    lookup, so guessing URLs is as limited as posting to them."""
    node = await start_node(
        make_settings(sqlite_url, webhook_address_rate_per_minute=1, webhook_address_burst=3)
    )
    client = Client(node)
    try:
        owner, member = await client.user(), await client.user()
        group = (await client.conversation(owner, member, title="guesses"))["id"]
        url = local(client, (await make_hook(client, owner, group))["url"])
        async with httpx2.AsyncClient(event_hooks=schema_check.EVENT_HOOKS) as http:
            guesses = [
                url.rsplit("/", 1)[0] + "/" + "x" * 43,
                url.rsplit("/", 2)[0] + "/no-such-hook/" + "x" * 43,
            ]
            for guess in guesses:
                r = await http.post(guess, json={"content": "guess"})
                assert r.status_code == 404, r.text
            assert (await http.post(url, json={"content": "real"})).status_code == 200
            r = await http.post(url, json={"content": "one too many"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
            assert int(r.headers["Retry-After"]) >= 1
            r = await http.post(guesses[1], json={"content": "guess"})
            assert r.status_code == 429, r.text
        assert [m["content"] for m in await client.messages(member, group)] == ["real"]
    finally:
        await client.close()
        await node.stop()


async def test_a_groups_webhooks_share_one_bucket(sqlite_url: str) -> None:
    node = await start_node(
        make_settings(
            sqlite_url, webhook_conversation_rate_per_minute=1, webhook_conversation_burst=2
        )
    )
    client = Client(node)
    try:
        owner, member = await client.user(), await client.user()
        group = (await client.conversation(owner, member, title="shared"))["id"]
        elsewhere = (await client.conversation(owner, member, title="elsewhere"))["id"]
        first = local(client, (await make_hook(client, owner, group, "one"))["url"])
        second = local(client, (await make_hook(client, owner, group, "two"))["url"])
        third = local(client, (await make_hook(client, owner, elsewhere, "three"))["url"])
        async with httpx2.AsyncClient(event_hooks=schema_check.EVENT_HOOKS) as http:
            assert (await http.post(first, json={"content": "a"})).status_code == 200
            assert (await http.post(second, json={"content": "b"})).status_code == 200
            r = await http.post(first, json={"content": "c"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
            assert int(r.headers["Retry-After"]) >= 1
            # Another group's webhook has its own.
            assert (await http.post(third, json={"content": "d"})).status_code == 200
        assert [m["content"] for m in await client.messages(member, group)] == ["a", "b"]
    finally:
        await client.close()
        await node.stop()
