"""Sockets opened without a token wait for their `auth` frame in limited numbers: per
client address (an IPv6 address by its /64) and on the node. One more closes at once;
signed-in sockets are not affected, and a socket stops counting once it signs in or
goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import websockets

from tests.helpers import Client, Node, eventually, make_settings, start_node

PER_ADDRESS = 8  # the default
FROM_ADDRESS = (1008, "too many sockets waiting to sign in from this address")
ON_NODE = (1013, "too many sockets waiting to sign in")


@pytest.fixture
async def client(sqlite_url: str) -> AsyncIterator[Client]:
    # A wait for the first frame far longer than any test: a socket stops waiting only
    # because it signed in or went away.
    node = await start_node(
        make_settings(sqlite_url, websocket_auth_timeout_seconds=60, max_pending_auth_sockets=20)
    )
    c = Client(node)
    yield c
    await c.close()
    await node.stop()


async def open_pending(node: Node, address: str | None = None) -> websockets.ClientConnection:
    """A socket without a token; `address` is the client address a trusted proxy reports."""
    headers = {"X-Forwarded-For": address} if address else None
    return await websockets.connect(node.ws_url, additional_headers=headers)


async def refused_with(ws: websockets.ClientConnection) -> tuple[int | None, str | None]:
    await asyncio.wait_for(ws.wait_closed(), 5)
    return ws.close_code, ws.close_reason


async def sign_in(ws: websockets.ClientConnection, token: str) -> dict[str, Any]:
    """The `auth.ok` a waiting socket gets for its first frame, then a pong: it is served."""
    await ws.send(orjson.dumps({"type": "auth", "access_token": token}).decode())
    ok = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    await ws.send('{"type": "ping"}')
    while orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "pong":
        pass
    return dict(ok)


async def close_all(sockets: list[websockets.ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets))


async def fills_up(node: Node, token: str, address: str | None = None) -> bool:
    """Exactly PER_ADDRESS sockets from the address may wait: one more is closed at once
    (1008), and each of the others was waiting (it signs in). Leaves nothing open."""
    waiting = [await open_pending(node, address) for _ in range(PER_ADDRESS)]
    try:
        if await refused_with(await open_pending(node, address)) != FROM_ADDRESS:
            return False
        for ws in waiting:
            try:
                await sign_in(ws, token)
            except websockets.ConnectionClosed:
                return False  # refused: an earlier socket still counted
        return True
    finally:
        await close_all(waiting)


async def test_the_ninth_waiting_socket_from_an_address_is_closed(client: Client) -> None:
    u = await client.user()
    node = client.node
    waiting = [await open_pending(node) for _ in range(PER_ADDRESS)]
    try:
        assert await refused_with(await open_pending(node)) == FROM_ADDRESS

        # A socket opened with its token, from the same address, is served.
        by_url = await websockets.connect(f"{node.ws_url}?token={u.token}")
        await by_url.send('{"type": "ping"}')
        assert orjson.loads(await asyncio.wait_for(by_url.recv(), 5))["type"] == "pong"
        await by_url.close()

        # Another address has its own count.
        other = await open_pending(node, "203.0.113.7")
        assert (await sign_in(other, u.token))["user_id"] == u.id
        await other.close()

        # A waiting socket that signs in in time goes on, and frees its place...
        assert (await sign_in(waiting[0], u.token))["user_id"] == u.id
        latecomer = await open_pending(node)
        # ...which the latecomer took: the next one is closed.
        assert await refused_with(await open_pending(node)) == FROM_ADDRESS
        assert (await sign_in(latecomer, u.token))["user_id"] == u.id
        waiting.append(latecomer)
    finally:
        await close_all(waiting)


async def test_sockets_stop_counting_when_they_sign_in_or_go_away(client: Client) -> None:
    u = await client.user()
    node = client.node
    assert await fills_up(node, u.token)  # they all signed in, then closed
    assert await fills_up(node, u.token)

    # Waiting sockets that go away without a word free their places too.
    gone = [await open_pending(node) for _ in range(PER_ADDRESS)]
    assert await refused_with(await open_pending(node)) == FROM_ADDRESS
    await close_all(gone)
    await eventually(lambda: fills_up(node, u.token), what="the places of closed sockets")


async def test_an_ipv6_client_counts_by_its_64(client: Client) -> None:
    u = await client.user()
    node = client.node
    waiting = [await open_pending(node, f"2001:db8:1:2::{n + 1:x}") for n in range(PER_ADDRESS)]
    try:
        another_host = await open_pending(node, "2001:db8:1:2:ffff:ffff:ffff:ffff")
        assert await refused_with(another_host) == FROM_ADDRESS
        assert await fills_up(node, u.token, "2001:db8:1:3::1")  # the next /64
        for ws in waiting:
            await sign_in(ws, u.token)
    finally:
        await close_all(waiting)


async def test_the_node_caps_waiting_sockets_from_all_addresses(sqlite_url: str) -> None:
    node = await start_node(
        make_settings(sqlite_url, websocket_auth_timeout_seconds=60, max_pending_auth_sockets=3)
    )
    client = Client(node)
    waiting = []
    try:
        u = await client.user()
        waiting = [await open_pending(node, f"198.51.100.{n}") for n in range(1, 4)]
        assert await refused_with(await open_pending(node, "198.51.100.9")) == ON_NODE

        by_url = await websockets.connect(f"{node.ws_url}?token={u.token}")
        await by_url.send('{"type": "ping"}')
        assert orjson.loads(await asyncio.wait_for(by_url.recv(), 5))["type"] == "pong"
        await by_url.close()

        await sign_in(waiting[0], u.token)
        latecomer = await open_pending(node, "198.51.100.9")
        waiting.append(latecomer)
        assert await refused_with(await open_pending(node, "198.51.100.10")) == ON_NODE
        await sign_in(latecomer, u.token)
    finally:
        await close_all(waiting)
        await client.close()
        await node.stop()


def test_defaults() -> None:
    settings = make_settings("")
    assert settings.websocket_auth_timeout_seconds == 2
    assert settings.max_pending_auth_sockets_per_address == PER_ADDRESS
    assert settings.max_pending_auth_sockets == 1000
