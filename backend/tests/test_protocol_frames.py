"""Frames the WebSocket protocol refuses before the app sees one: over MAX_FRAME_BYTES
(1009, decided from the frame's header: the node never reads, let alone buffers, the
payload), text that is not UTF-8 (1007), and broken framing (1002). Each closes the
socket; none logs an error or a traceback."""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator

import pytest
import websockets

from tests.cluster import Cluster
from tests.helpers import Client, Socket, User
from tests.logcapture import captured_logs

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MESSAGE_TOO_BIG = 1009


async def _closed_with(ws: websockets.ClientConnection) -> int | None:
    """The close code the node sent, once the socket is closed."""
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await ws.recv()
    await ws.wait_closed()
    return ws.close_code


def _header_only(length: int) -> bytes:
    """A masked text frame's header that announces `length` payload bytes, without them."""
    return bytes([0x81, 0x80 | 127]) + struct.pack("!Q", length) + os.urandom(4)


def _frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """One masked frame, as a client writes it (short payloads only)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | rsv | opcode, 0x80 | len(payload)]) + key + masked


BROKEN = [
    ("text not UTF-8", _frame(0x1, b'{"type": "\xff"}'), 1007),
    ("close reason not UTF-8", _frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),
    ("reserved bits", _frame(0x1, b"{}", rsv=0x40), 1002),
    ("unmasked", bytes([0x81, 2]) + b"{}", 1002),
    ("unknown opcode", _frame(0x3, b"x"), 1002),
    ("continuation first", _frame(0x0, b"x"), 1002),
    ("fragmented ping", _frame(0x9, b"x", fin=False), 1002),
    ("close code out of range", _frame(0x8, struct.pack("!H", 999)), 1002),
]


@pytest.mark.parametrize(("name", "raw", "code"), BROKEN, ids=[b[0] for b in BROKEN])
async def test_broken_frames_close_the_socket_quietly(
    client: Client, name: str, raw: bytes, code: int
) -> None:
    a = await client.user()
    with captured_logs() as logs:
        ws = await websockets.connect(f"{client.node.ws_url}?token={a.token}")
        ws.transport.write(raw)
        assert await _closed_with(ws) == code
        # The node goes on, and its handler for that socket has finished: anything it
        # would log about the socket is logged by the time this socket is answered.
        sock = await Socket.connect(client.node, a)
        await sock.send({"type": "ping"})
        await sock.expect("pong")
        await sock.close()
    assert logs.failures() == []


async def test_an_oversize_frame_closes_the_socket_with_1009(client: Client) -> None:
    a = await client.user()
    limit = client.node.services.settings.max_frame_bytes
    big = await Socket.connect(client.node, a)
    other = await Socket.connect(client.node, a)
    await big.ws.send("x" * (1024 * 1024))
    assert await _closed_with(big.ws) == MESSAGE_TOO_BIG
    # The node goes on, and a frame of exactly the limit is still read and answered.
    at_limit = '{"type": "typing", "conversation_id": "%s"}'
    at_limit %= "c" * (limit - len(at_limit) + 2)
    assert len(at_limit) == limit
    await other.send(at_limit)
    error = await other.expect("error")
    assert error["code"] == "invalid_field"
    await other.send({"type": "ping"})
    await other.expect("pong")
    await other.close()


async def _refuses_from_the_header(ws_url: str, user: User) -> None:
    ws = await websockets.connect(f"{ws_url}?token={user.token}")
    # 64 MiB announced and none of it sent: only the header can make the node close.
    ws.transport.write(_header_only(64 * 1024 * 1024))
    assert await _closed_with(ws) == MESSAGE_TOO_BIG


async def test_the_node_refuses_an_oversize_frame_from_its_header(client: Client) -> None:
    await _refuses_from_the_header(client.node.ws_url, await client.user())


@pytest.fixture
async def process_cluster(postgresql_url: str) -> AsyncIterator[Cluster]:
    cluster = Cluster(postgresql_url, REDIS_URL)
    yield cluster
    await cluster.close()


async def test_python_m_app_refuses_an_oversize_frame_from_its_header(
    process_cluster: Cluster, pg_client: Client
) -> None:
    """`python -m app` (how an operator and the benchmarks run a node) sets the limit too."""
    node = await process_cluster.process_node(max_frame_bytes=4096)
    user = await pg_client.user()
    ws = await websockets.connect(f"{node.ws_url}?token={user.token}")
    await ws.send("x" * 5000)
    assert await _closed_with(ws) == MESSAGE_TOO_BIG
    await _refuses_from_the_header(node.ws_url, user)
