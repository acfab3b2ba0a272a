"""A recipient who looked online when a message was committed, but was not (a half-open
socket, a node that died), gets the push once presence finds them gone: once, and only
for what they have not read."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert, select

from app.db import utcnow
from app.messenger.models import PushAttempt, PushJob
from app.messenger.push.recheck import Skipped, SkippedRecipients
from tests.cluster import Cluster, connect
from tests.helpers import Client, Node, Socket, User, eventually, make_settings, start_node
from tests.push_world import PushWorld, start_push_world

pytest_plugins = ["tests.cluster_fixtures"]

D = "/api/v1/messenger/devices/register"


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("push-recheck"))


@pytest.fixture(autouse=True)
def fresh(world: PushWorld) -> None:
    world.reset()


async def web_device(api: Client, user: User, world: PushWorld) -> str:
    token = world.webpush.subscribe()
    r = await api.http.post(
        D,
        json={"device_token": token, "platform": "web", "provider": "web_push"},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text
    return token


async def pushed_users(node: Node, message_id: str) -> list[int]:
    async with node.services.engine.connect() as conn:
        rows = await conn.execute(
            select(PushAttempt.user_id).where(PushAttempt.message_id == message_id)
        )
        return sorted(rows.scalars())


def rechecks() -> float:
    return REGISTRY.get_sample_value("messenger_push_rechecks_total") or 0.0


class HalfOpen:
    """A client that opens a WebSocket and then vanishes without a word: it never reads,
    never answers a ping, never closes (a phone that lost its network)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    @classmethod
    async def connect(cls, node: Node, user: User) -> HalfOpen:
        url = urlsplit(node.url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws?token={user.token} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(writer)

    def close(self) -> None:
        self._writer.close()


@pytest.fixture(scope="module")
async def node(world: PushWorld, db_url: str) -> AsyncIterator[Node]:
    settings = {
        **world.settings,
        # A socket that leaves a ping unanswered is dropped after about 2 s.
        "websocket_ping_interval_seconds": 1.0,
        "websocket_ping_timeout_seconds": 1.0,
        "push_recheck_interval_seconds": 0.2,
    }
    n = await start_node(make_settings(db_url, **settings))
    yield n
    await n.stop()


async def test_a_half_open_socket_gets_the_push_once_dropped_and_a_reader_none(
    node: Node, world: PushWorld
) -> None:
    api = Client(node)
    alice, bob, carol = await api.user(), await api.user(), await api.user()
    conv = await api.conversation(alice, bob, carol, title="Crew")
    bob_web, carol_web = await web_device(api, bob, world), await web_device(api, carol, world)
    carol_sock = await Socket.connect(node, carol)
    bob_gone = await HalfOpen.connect(node, bob)
    presence = node.services.presence
    assert await presence.online([bob.id, carol.id]) == {bob.id, carol.id}
    before = rechecks()
    try:
        message = (await api.send(alice, conv["id"], "are you there?")).json()
        # Carol reads it on her live socket, then leaves.
        await carol_sock.expect("message.new")
        await carol_sock.send({"type": "read", "conversation_id": conv["id"], "seq": 1})
        await carol_sock.expect("read", user_id=carol.id, seq=1)
        await carol_sock.hang_up()

        # Bob's socket is dropped once its ping goes unanswered: then he gets the push.
        [push] = await eventually(
            lambda: world.accepted("web_push", bob_web), within=15, what="bob's push"
        )
        assert push.payload["data"]["message_id"] == message["id"]
        assert await presence.online([bob.id]) == set()
        assert rechecks() == before + 1  # bob's, found by the re-check; carol had read it

        # Both away now: the next message reaches both at once; the first, nobody again.
        again = (await api.send(alice, conv["id"], "ok, later")).json()
        await eventually(
            lambda: world.accepted("web_push", carol_web) and len(world.webpush.received) == 3,
            what="the next message's pushes",
        )
        # Both outcomes recorded (the two deliveries may land in different flushes).
        both = sorted([bob.id, carol.id])

        async def both_recorded() -> bool:
            return await pushed_users(node, again["id"]) == both

        await eventually(both_recorded, what="both outcomes recorded")
        assert await pushed_users(node, message["id"]) == [bob.id]
        assert [r.payload["data"]["message_id"] for r in world.accepted("web_push", bob_web)] == [
            message["id"],
            again["id"],
        ]
        assert [r.payload["data"]["message_id"] for r in world.accepted("web_push", carol_web)] == [
            again["id"]
        ]
        assert rechecks() == before + 1
    finally:
        bob_gone.close()
        await api.close()


async def test_a_recipient_on_a_killed_node_gets_the_push_after_the_ttl(
    cluster: Cluster, world: PushWorld
) -> None:
    fast = {"presence_heartbeat_seconds": 0.5, "presence_ttl_seconds": 4}
    survivor = await cluster.node(
        **{**world.settings, **fast, "push_recheck_interval_seconds": 0.2}
    )
    doomed = await cluster.process_node(**fast)
    api = Client(survivor)
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    web = await web_device(api, bob, world)
    socket = await connect(doomed, bob)
    try:
        await eventually(
            lambda: survivor.services.presence.online([bob.id]), what="bob online here"
        )
        before = rechecks()
        doomed.kill()
        # Committed while bob still counts as online (his node's claim has not expired).
        message = (await api.send(alice, conv["id"], "still there?")).json()

        [push] = await eventually(
            lambda: world.accepted("web_push", web), within=20, what="bob's push"
        )
        assert push.payload["data"]["message_id"] == message["id"]
        assert await survivor.services.presence.online([bob.id]) == set()
        assert rechecks() == before + 1

        # Nobody gets two: the next message is pushed as usual, the first not again.
        again = (await api.send(alice, conv["id"], "hello?")).json()
        await eventually(lambda: pushed_users(survivor, again["id"]), what="the next push")
        assert await pushed_users(survivor, message["id"]) == [bob.id]
        assert len(world.webpush.received_for(web)) == 2
    finally:
        await socket.ws.close()
        await api.close()


async def test_a_recheck_job_left_by_a_dead_node_reaches_its_one_recipient_if_unread(
    world: PushWorld, postgresql_url: str
) -> None:
    # This node remembers nobody itself: what it pushes late comes from the orphaned jobs.
    settings = {
        **world.settings,
        "push_recheck_max_pairs": 0,
        "push_recovery_interval_seconds": 0.1,
    }
    node = await start_node(make_settings(postgresql_url, **settings))
    api = Client(node)
    try:
        alice, bob, carol = await api.user(), await api.user(), await api.user()
        conv = await api.conversation(alice, bob, carol, title="Crew")
        bob_web, carol_web = await web_device(api, bob, world), await web_device(api, carol, world)
        sockets = [await Socket.connect(node, u) for u in (bob, carol)]
        message = (await api.send(alice, conv["id"], "while you were here")).json()
        for sock in sockets:
            await sock.expect("message.new")
            await sock.hang_up()
        read = await api.http.post(
            f"/api/v1/messenger/conversations/{conv['id']}/read",
            json={"seq": message["seq"]},
            headers=carol.headers,
        )
        assert read.status_code < 300, read.text

        # A node wrote a re-check job for each of them, and died before pushing.
        jobs = {user.id: str(uuid.uuid4()) for user in (bob, carol)}
        async with node.services.engine.begin() as conn:
            await conn.execute(
                insert(PushJob),
                [
                    {
                        "id": job_id,
                        "message_ids": [message["id"]],
                        "created_at": utcnow(),
                        "claimed_by": "dead-node",
                        "lease_until": utcnow() - timedelta(seconds=1),
                        "recipient_id": user_id,
                    }
                    for user_id, job_id in jobs.items()
                ],
            )

        async def both_done() -> bool:
            async with node.services.engine.connect() as conn:
                left = await conn.execute(select(PushJob.id).where(PushJob.id.in_(jobs.values())))
                return not left.all()

        await eventually(both_done, what="both jobs to be taken up and done")
        # Bob was pushed, once; carol, who had read it, was not; nobody else either.
        [push] = world.accepted("web_push", bob_web)
        assert push.payload["data"]["message_id"] == message["id"]
        assert await pushed_users(node, message["id"]) == [bob.id]
        assert not world.webpush.received_for(carol_web)
    finally:
        await api.close()
        await node.stop()


def test_skipped_recipients_are_bounded_in_time_and_count() -> None:
    now = [0.0]
    skipped = SkippedRecipients(window=10, limit=3, clock=lambda: now[0])
    assert skipped.add("c", 1, [1, 2]) == 0
    now[0] = 5
    # One range per recipient and conversation: a later message widens it, renews it.
    assert skipped.add("c", 2, [1, 1]) == 0
    assert skipped.add("d", 7, [1]) == 0
    assert len(skipped) == 3 and 1 in skipped and 3 not in skipped
    # Past the count the earliest begun goes first.
    assert skipped.add("c", 3, [3]) == 1
    assert sorted(skipped.users()) == [1, 2, 3] and len(skipped) == 3
    # Past the window the old ones are gone; taking removes what is taken.
    now[0] = 12
    assert sorted(skipped.users()) == [1, 3]
    assert skipped.take([1, 4]) == [Skipped(1, "d", 7, 7)]
    assert skipped.users() == [3] and 1 not in skipped
    skipped.restore([Skipped(1, "c", 4, 9)])
    assert skipped.take([1]) == [Skipped(1, "c", 4, 9)]
    now[0] = 16
    assert skipped.users() == [] and len(skipped) == 0
