"""The WebSocket protocol over real sockets: auth, delivery, typing, read, bad frames."""

from __future__ import annotations

from datetime import timedelta

import jwt
import orjson
import pytest
import websockets

from app.db import utcnow
from tests.helpers import SECRET, Client, Socket, make_settings, start_node


async def close_code(url: str, first: str | None = None, **kwargs: object) -> int | None:
    async with websockets.connect(url, **kwargs) as ws:
        if first is not None:
            await ws.send(first)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    return closed.value.rcvd.code if closed.value.rcvd else None


async def test_bad_tokens_close_with_4401(pg_client: Client) -> None:
    url = pg_client.node.ws_url
    expired = jwt.encode({"sub": "1", "exp": utcnow() - timedelta(seconds=1)}, SECRET)
    # No token: the first frame must be `auth` (test_sessions also waits out its absence).
    assert await close_code(url, first='{"type": "ping"}') == 4401
    assert await close_code(f"{url}?token=garbage") == 4401
    assert await close_code(f"{url}?token={expired}") == 4401
    assert await close_code(url, additional_headers={"Authorization": "Bearer nope"}) == 4401


async def test_token_in_authorization_header(pg_client: Client) -> None:
    u = await pg_client.user()
    async with websockets.connect(
        pg_client.node.ws_url, additional_headers={"Authorization": f"Bearer {u.token}"}
    ) as ws:
        await ws.send('{"type": "ping"}')
        assert orjson.loads(await ws.recv()) == {"type": "pong"}


async def test_send_reaches_every_socket_of_every_participant(client: Client) -> None:
    a, b, c = await client.user(), await client.user(), await client.user()
    conv = await client.conversation(a, b, c, title="team")
    a1, a2 = await Socket.connect(client.node, a), await Socket.connect(client.node, a)
    b1, b2 = await Socket.connect(client.node, b), await Socket.connect(client.node, b)
    outsider = await Socket.connect(client.node, await client.user())
    try:
        await a1.send(
            {
                "type": "message.send",
                "conversation_id": conv["id"],
                "content": "hi all",
                "client_msg_id": "k1",
            }
        )
        ack = await a1.expect("message.ack")
        assert ack["client_msg_id"] == "k1"
        message = ack["message"]
        assert (
            message["content"] == "hi all" and message["seq"] == 1 and message["sender_id"] == a.id
        )
        for sock in (a2, b1, b2):
            assert (await sock.expect("message.new"))["message"] == message
        # The sending socket gets its ack, not a copy; outsiders get nothing.
        await a1.nothing("message.new")
        await outsider.nothing("message.new")
        # Committed before the ack: history has it.
        assert (await client.messages(c, conv["id"]))[0]["id"] == message["id"]
    finally:
        for s in (a1, a2, b1, b2, outsider):
            await s.close()


async def test_typing_read_and_presence(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    sa = await Socket.connect(client.node, a)
    sb = await Socket.connect(client.node, b)
    try:
        # b came online while a was connected and shares a conversation with a;
        # b's new socket is told that a is already here.
        assert (await sa.expect("presence", user_id=b.id))["online"] is True
        assert (await sb.expect("presence", user_id=a.id))["online"] is True
        await sa.send({"type": "typing", "conversation_id": conv["id"]})
        assert await sb.expect("typing") == {
            "type": "typing",
            "conversation_id": conv["id"],
            "user_id": a.id,
        }
        await sa.nothing("typing")

        await sa.send(
            {
                "type": "message.send",
                "conversation_id": conv["id"],
                "content": "x",
                "client_msg_id": "r1",
            }
        )
        await sb.expect("message.new")
        await sb.send({"type": "read", "conversation_id": conv["id"], "seq": 1})
        expected = {"type": "read", "conversation_id": conv["id"], "user_id": b.id, "seq": 1}
        assert await sa.expect("read") == expected
        assert await sb.expect("read") == expected
        r = await client.http.get("/api/v1/messenger/conversations", headers=b.headers)
        assert r.json()["conversations"][0]["unread_count"] == 0

        # A second socket of b coming and going says nothing; the last one leaving does.
        sb2 = await Socket.connect(client.node, b)
        await sb2.hang_up()
        await sa.nothing("presence")
        await sb.close()
        assert (await sa.expect("presence", user_id=b.id))["online"] is False
    finally:
        await sa.close()


SEND = {
    "type": "message.send",
    "conversation_id": "CONV",
    "content": "ok",
    "client_msg_id": "ref-1",
}


def frame(**changes: object) -> str:
    body = dict(SEND)
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return orjson.dumps(body).decode()


BAD_FRAMES = [
    ("not json", "{nope", "bad_frame", None),
    ("json array", "[1, 2]", "bad_frame", None),
    ("json string", '"hello"', "bad_frame", None),
    ("binary garbage", b"\xff\xfe\x00", "bad_frame", None),
    ("no type", '{"content": "x"}', "unknown_type", None),
    ("unknown type", frame(type="message.explode"), "unknown_type", "ref-1"),
    ("missing content", frame(content=...), "invalid_field", "ref-1"),
    ("missing conversation", frame(conversation_id=...), "invalid_field", "ref-1"),
    ("missing client_msg_id", frame(client_msg_id=...), "invalid_field", None),
    ("content not a string", frame(content=42), "invalid_field", "ref-1"),
    ("conversation not a string", frame(conversation_id=["x"]), "invalid_field", "ref-1"),
    (
        "read seq not an int",
        '{"type": "read", "conversation_id": "CONV", "seq": "3"}',
        "invalid_field",
        None,
    ),
    ("NUL in content", frame(content="a\x00b"), "invalid_field", "ref-1"),
    ("NUL in client_msg_id", frame(client_msg_id="r\x00"), "invalid_field", "r\x00"),
    ("empty content", frame(content="   "), "empty_content", "ref-1"),
    ("content too long", frame(content="x" * 4001), "message_too_long", "ref-1"),
    (
        "unknown conversation",
        frame(conversation_id="00000000-0000-0000-0000-000000000000"),
        "conversation_not_found",
        "ref-1",
    ),
    ("other users' conversation", frame(conversation_id="FOREIGN"), "not_a_participant", "ref-1"),
    (
        "typing elsewhere",
        '{"type": "typing", "conversation_id": "FOREIGN"}',
        "not_a_participant",
        None,
    ),
    ("type not a string", '{"type": ["message.send"]}', "unknown_type", None),
    ("type nested deep", '{"type": ' + "[" * 600 + "]" * 600 + "}", "unknown_type", None),
]


async def test_bad_frames_get_errors_and_store_nothing(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    stranger = await client.user()
    foreign = await client.conversation(stranger, await client.user())
    sock = await Socket.connect(client.node, a)
    try:
        for name, raw, code, ref in BAD_FRAMES:
            if isinstance(raw, str):
                raw = raw.replace("FOREIGN", foreign["id"]).replace("CONV", conv["id"])
            await sock.send(raw)
            error = await sock.recv()
            assert error["type"] == "error", name
            assert error["code"] == code, (name, error)
            assert error.get("ref") == ref, (name, error)
            assert error["message"], name
        # The socket is still open and works.
        await sock.send({"type": "ping"})
        assert await sock.recv() == {"type": "pong"}
        assert await client.messages(a, conv["id"]) == []
        assert await client.messages(stranger, foreign["id"]) == []
    finally:
        await sock.close()


async def test_send_rate_is_limited(postgresql_url: str) -> None:
    node = await start_node(make_settings(postgresql_url, send_rate_per_second=1, send_burst=3))
    client = Client(node)
    try:
        a, b = await client.user(), await client.user()
        conv = await client.conversation(a, b)
        sock = await Socket.connect(node, a)
        codes = []
        for i in range(5):
            await sock.send(
                {
                    "type": "message.send",
                    "conversation_id": conv["id"],
                    "content": "x",
                    "client_msg_id": f"f{i}",
                }
            )
            reply = await sock.recv()
            codes.append(reply.get("code", reply["type"]))
        assert codes[:3] == ["message.ack"] * 3
        assert codes[3:] == ["rate_limited"] * 2
        assert reply["ref"] == "f4" and reply["retry_after"] >= 1
        r = await client.send(a, conv["id"], "rest too")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "rate_limited"
        assert len(await client.messages(a, conv["id"])) == 3
        await sock.close()
    finally:
        await client.close()
        await node.stop()


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


async def test_metrics_count_messages_and_sockets(pg_client: Client) -> None:
    a, b = await pg_client.user(), await pg_client.user()
    conv = await pg_client.conversation(a, b)
    before = (await pg_client.http.get("/metrics")).text
    sock = await Socket.connect(pg_client.node, a)
    try:
        await sock.send({"type": "ping"})
        await sock.expect("pong")
        await pg_client.send(a, conv["id"], "counted")
        during = (await pg_client.http.get("/metrics")).text
    finally:
        await sock.close()
    assert (
        _metric(during, "messenger_messages_sent_total")
        >= _metric(before, "messenger_messages_sent_total") + 1
    )
    assert _metric(during, "messenger_websocket_connections") >= 1
