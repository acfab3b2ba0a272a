"""Frames on their way out of one socket: on a real node those queued together leave in
one write, whole and in order; a socket whose peer stops reading is closed once it is
too far behind, after the frames it already had; other servers, and a uvicorn without
what the one-write path reads, get frame by frame."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import uvicorn.config
import websockets
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.jsonutil import dumps
from app.messenger import framewriter
from app.messenger.framewriter import frame_writer
from app.messenger.hub import CLOSE_TOO_SLOW, SEND_QUEUE_LIMIT, WRITE_ROUND
from tests.helpers import Client, Node, Socket, eventually, make_settings, start_node

SANSIO_MODULE = "uvicorn.protocols.websockets.websockets_sansio_impl"


def numbered(i: int, pad: int) -> str:
    return dumps({"type": "test.frame", "i": i, "pad": "x" * pad})


@pytest.fixture(autouse=True)
def _fresh_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the writer decide (and say why) for its first socket."""
    monkeypatch.setattr(framewriter, "_verdicts", {})


def one_by_one_notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == framewriter.__name__]


def count_frame_sends(
    monkeypatch: pytest.MonkeyPatch, cls: type[WebSocketsSansIOProtocol]
) -> list[int]:
    """Counts the frames that go through the server's one-frame send (a list of one)."""
    sent = [0]
    send = cls.send

    async def counted(self: WebSocketsSansIOProtocol, message: Any) -> None:
        if message["type"] == "websocket.send":
            sent[0] += 1
        await send(self, message)

    # Before the socket opens, so that the node holds the counted send.
    monkeypatch.setattr(cls, "send", counted)
    return sent


async def delivered_in_order(node: Node, socket: Socket, user_id: int, count: int) -> None:
    """`count` frames queued at once all arrive, whole and in order."""
    for i in range(count):
        assert node.services.hub.deliver([user_id], numbered(i, pad=i * 13)) == 1
    frames = [await socket.recv() for _ in range(count)]
    assert [f["i"] for f in frames] == list(range(count))
    assert all(len(f["pad"]) == f["i"] * 13 for f in frames)


async def test_frames_queued_together_leave_whole_and_in_order_in_one_write(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sent = count_frame_sends(monkeypatch, WebSocketsSansIOProtocol)
    user = await client.user()
    socket = await Socket.connect(client.node, user)
    await socket.send({"type": "ping"})
    await socket.expect("pong")  # open and registered
    before = sent[0]
    # Several rounds, the last one short.
    await delivered_in_order(client.node, socket, user.id, 5 * WRITE_ROUND + 7)
    assert sent[0] == before  # none went through the server's one-frame send
    await socket.send({"type": "ping"})
    await socket.expect("pong")  # and the socket goes on as before
    await socket.close()
    assert one_by_one_notes(caplog) == []


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
            await asyncio.sleep(0.01)  # lets the writer run into the full buffers meanwhile
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

    await eventually(gone, within=15.0, what="the socket to be gone from the hub")


async def test_other_servers_get_one_asgi_message_per_frame() -> None:
    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    await frame_writer(send)(["a", "b", "c"])
    assert messages == [{"type": "websocket.send", "text": t} for t in "abc"]


async def test_without_uvicorns_protocol_module_frames_go_one_by_one(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As a uvicorn without the module would be: importing it fails.
    monkeypatch.setitem(sys.modules, SANSIO_MODULE, None)
    unavailable = framewriter.import_fast_path()
    assert isinstance(unavailable, str) and "ModuleNotFoundError" in unavailable
    monkeypatch.setattr(framewriter, "_FAST_PATH", unavailable)
    sent = count_frame_sends(monkeypatch, WebSocketsSansIOProtocol)

    user = await client.user()
    sockets = [await Socket.connect(client.node, user) for _ in range(2)]
    for socket in sockets:
        await socket.send({"type": "ping"})
        await socket.expect("pong")
    before = sent[0]
    count = 3 * WRITE_ROUND + 5
    for i in range(count):
        assert client.node.services.hub.deliver([user.id], numbered(i, pad=i * 13)) == 2
    for socket in sockets:
        frames = [await socket.recv() for _ in range(count)]
        assert [f["i"] for f in frames] == list(range(count))
        await socket.close()
    assert sent[0] - before == 2 * count  # every frame through the server's own send
    [note] = one_by_one_notes(caplog)  # said once, not per socket
    assert "cannot be imported" in note and SANSIO_MODULE in note


class RenamedDisconnected(WebSocketsSansIOProtocol):
    """uvicorn's protocol as another version might have it: the flag that says the peer
    is gone lives under another name, so the one-write path cannot read it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gone = self.__dict__.pop("disconnected")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.gone = self.__dict__.pop("disconnected")

    async def send(self, message: Any) -> None:
        await self.writable.wait()
        # uvicorn's send reads the flag without yielding once writable is set.
        self.disconnected = self.gone
        try:
            await super().send(message)
        finally:
            del self.disconnected


@pytest.fixture
async def renamed_node(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Node]:
    """A real node whose uvicorn serves sockets with RenamedDisconnected."""
    with monkeypatch.context() as patch:
        patch.setitem(
            uvicorn.config.WS_PROTOCOLS, "websockets-sansio", f"{__name__}:RenamedDisconnected"
        )
        node = await start_node(make_settings(sqlite_url))
    yield node
    await node.stop()


async def test_a_protocol_lacking_what_the_one_write_path_reads_gets_frame_by_frame(
    renamed_node: Node, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert not hasattr(RenamedDisconnected, "disconnected")
    sent = count_frame_sends(monkeypatch, RenamedDisconnected)
    client = Client(renamed_node)
    try:
        user = await client.user()
        socket = await Socket.connect(renamed_node, user)
        await socket.send({"type": "ping"})
        await socket.expect("pong")
        before = sent[0]
        count = 3 * WRITE_ROUND + 5
        await delivered_in_order(renamed_node, socket, user.id, count)
        assert sent[0] - before == count  # every frame through the server's own send
        await socket.send({"type": "ping"})
        await socket.expect("pong")
        await socket.close()
    finally:
        await client.close()
    [note] = one_by_one_notes(caplog)
    assert "RenamedDisconnected" in note and "lacks disconnected" in note
