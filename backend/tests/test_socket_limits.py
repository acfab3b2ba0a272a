"""What one account can make a node do over its sockets: typing frames are thinned, a
burst of read marks is one write, and a user's sockets on a node are capped."""

from __future__ import annotations

import asyncio

import httpx2
import pytest
import websockets

from tests import schema_check
from tests.helpers import Client, Socket, User


async def metric(node_url: str, name: str) -> float:
    """A counter's value on the node (its process), from GET /metrics."""
    async with httpx2.AsyncClient(event_hooks=schema_check.EVENT_HOOKS, base_url=node_url) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def connect(client: Client, user: User) -> Socket:
    """A socket the node has registered: it answered a ping."""
    socket = await Socket.connect(client.node, user)
    await socket.send({"type": "ping"})
    await socket.expect("pong")
    return socket


async def test_a_typing_flood_reaches_the_peer_as_a_handful(client: Client) -> None:
    a, b = await client.user(), await client.user()
    first = (await client.conversation(a, b))["id"]
    second = (await client.conversation(a, b, title="another"))["id"]
    sa, sb = await connect(client, a), await connect(client, b)
    try:
        # 3,000 typing frames over 1.5 s; the peer reads nothing meanwhile.
        for _ in range(30):
            for _ in range(100):
                await sa.send({"type": "typing", "conversation_id": first})
            await asyncio.sleep(0.05)
        # Frames of one socket are handled in order: whatever typing went out reaches
        # the peer before this message does.
        await sa.send(
            {
                "type": "message.send",
                "conversation_id": first,
                "content": "done typing",
                "client_msg_id": "after-flood",
            }
        )
        typing = 0
        while (frame := await sb.recv())["type"] != "message.new":
            assert frame["type"] in ("typing", "presence"), frame
            typing += frame["type"] == "typing"
        assert 1 <= typing <= 2
        assert frame["message"]["content"] == "done typing"
        # The peer kept its socket, and typing in another conversation is not held back.
        await sa.send({"type": "typing", "conversation_id": second})
        assert (await sb.expect("typing"))["conversation_id"] == second
        await sa.nothing("error")
    finally:
        await sa.close()
        await sb.close()


async def test_a_burst_of_read_frames_is_a_few_writes(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conversation = (await client.conversation(a, b))["id"]
    for i in range(20):
        assert (await client.send(a, conversation, f"m{i}")).status_code == 201
    sa, sb = await connect(client, a), await connect(client, b)
    writes_before = await metric(client.node.url, "messenger_read_mark_writes_total")
    try:
        # 1,000 marks as a client scrolling through 20 messages might send them.
        for i in range(1000):
            await sb.send({"type": "read", "conversation_id": conversation, "seq": 1 + i // 50})
        seen = []
        while not seen or seen[-1] < 20:
            seen.append((await sa.expect("read", conversation_id=conversation))["seq"])
        writes = await metric(client.node.url, "messenger_read_mark_writes_total") - writes_before
        # Each write that moved the mark sent one `read` frame, in rising order.
        assert seen == sorted(set(seen))
        assert len(seen) <= writes <= 100, (len(seen), writes)

        r = await client.http.get("/api/v1/messenger/conversations", headers=b.headers)
        assert r.json()["conversations"][0]["unread_count"] == 0
        # The REST read waits for its write; a lower mark does not move it back.
        r = await client.http.post(
            f"/api/v1/messenger/conversations/{conversation}/read",
            json={"seq": 5},
            headers=b.headers,
        )
        assert r.status_code == 200
        r = await client.http.get("/api/v1/messenger/conversations", headers=b.headers)
        assert r.json()["conversations"][0]["unread_count"] == 0
        await sa.nothing("read")
    finally:
        await sa.close()
        await sb.close()


async def test_rest_reads_at_once_answer_after_their_mark_is_written(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conversation = (await client.conversation(a, b))["id"]
    for i in range(10):
        assert (await client.send(a, conversation, f"m{i}")).status_code == 201
    answers = await asyncio.gather(
        *(
            client.http.post(
                f"/api/v1/messenger/conversations/{conversation}/read",
                json={"seq": seq},
                headers=b.headers,
            )
            for seq in range(1, 11)
        )
    )
    assert [r.status_code for r in answers] == [200] * 10
    # Every answer came after a write at or above its mark: the last is in already.
    r = await client.http.get("/api/v1/messenger/conversations", headers=b.headers)
    assert r.json()["conversations"][0]["unread_count"] == 0


async def test_the_21st_socket_closes_the_oldest(client: Client) -> None:
    a, b = await client.user(), await client.user()
    await client.conversation(a, b)
    sockets = [await connect(client, a) for _ in range(20)]
    sb = await connect(client, b)
    try:
        newest = await connect(client, a)
        oldest = sockets[0]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await oldest.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4429
        assert closed.value.rcvd.reason == "too many sockets for this user"
        # The others, and the new one, still work; a is still online for b.
        for socket in (sockets[1], sockets[-1], newest):
            await socket.send({"type": "ping"})
            await socket.expect("pong")
        await sb.nothing("presence")
    finally:
        for socket in (*sockets[1:], newest, sb):
            await socket.close()


async def test_the_cap_is_per_user(client: Client) -> None:
    """Other users' sockets do not count against a user's cap."""
    users = [await client.user() for _ in range(3)]
    sockets = [await connect(client, u) for u in users for _ in range(10)]
    try:
        for socket in sockets:
            await socket.send({"type": "ping"})
            await socket.expect("pong")
    finally:
        for socket in sockets:
            await socket.close()
