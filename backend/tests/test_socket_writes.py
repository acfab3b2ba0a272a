"""Frames on their way out of one socket: on a real node those queued together leave in
one write, whole and in order; a socket whose peer stops reading is closed once it is
too far behind, after the frames it already had; other servers get frame by frame."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import websockets
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.jsonutil import dumps
from app.messenger.framewriter import frame_writer
from app.messenger.hub import CLOSE_TOO_SLOW, SEND_QUEUE_LIMIT, WRITE_ROUND
from tests.cluster import until
from tests.helpers import Client, Socket


def numbered(i: int, pad: int) -> str:
    return dumps({"type": "test.frame", "i": i, "pad": "x" * pad})


async def test_frames_queued_together_leave_whole_and_in_order_in_one_write(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent_one_by_one = 0
    send = WebSocketsSansIOProtocol.send

    async def counted(self: WebSocketsSansIOProtocol, message: dict) -> None:
        nonlocal sent_one_by_one
        sent_one_by_one += 1
        await send(self, message)

    # Before the socket opens, so that the node holds the counted send.
    monkeypatch.setattr(WebSocketsSansIOProtocol, "send", counted)
    user = await client.user()
    socket = await Socket.connect(client.node, user)
    await socket.send({"type": "ping"})
    await socket.expect("pong")  # open and registered
    before = sent_one_by_one
    hub = client.node.services.hub
    count = 5 * WRITE_ROUND + 7  # several rounds, the last one short
    for i in range(count):
        assert hub.deliver([user.id], numbered(i, pad=i * 13)) == 1
    frames = [await socket.recv() for _ in range(count)]
    assert [f["i"] for f in frames] == list(range(count))
    assert all(len(f["pad"]) == f["i"] * 13 for f in frames)
    assert sent_one_by_one == before  # none went through the server's one-frame send
    await socket.send({"type": "ping"})
    await socket.expect("pong")  # and the socket goes on as before
    await socket.close()


async def test_a_socket_whose_peer_stops_reading_is_closed_when_too_far_behind(
    client: Client,
) -> None:
    user = await client.user()
    # The client library stops reading from the network after one unread frame.
    ws = await websockets.connect(f"{client.node.ws_url}?token={user.token}", max_queue=1)
    await ws.send('{"type": "ping"}')
    assert "pong" in await ws.recv()
    hub = client.node.services.hub
    delivered = 3 * SEND_QUEUE_LIMIT  # 32 KB each: far more than the network buffers hold
    for i in range(delivered):
        hub.deliver([user.id], numbered(i, pad=32_000))
        if i % 50 == 0:
            await asyncio.sleep(0.01)  # the writer runs into the full buffers meanwhile
    # The queue filled long before everything was delivered: the socket is closing.
    received = []
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            received.append(await asyncio.wait_for(ws.recv(), 10))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_TOO_SLOW
    numbers = [orjson.loads(frame)["i"] for frame in received]
    # What it got is the start of what was sent, in order, and not all of it.
    assert numbers == list(range(len(numbers)))
    assert len(numbers) < delivered

    async def gone() -> bool:
        return not hub.is_connected(user.id)

    await until(gone)


async def test_other_servers_get_one_asgi_message_per_frame() -> None:
    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    await frame_writer(send)(["a", "b", "c"])
    assert messages == [{"type": "websocket.send", "text": t} for t in "abc"]
