"""Attention across two nodes on PostgreSQL and Redis: a recipient is pushed unless one of
their sockets on any node is active; going idle everywhere pushes what is unread; a
client flipping its state in a loop costs Redis a few calls, not one per frame."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest

from tests.cluster import Cluster, RedisServer, connect
from tests.helpers import Client, Node, User, eventually, push_job_of
from tests.push_world import PushWorld, start_push_world
from tests.test_attention import activity, pushed, web_device

pytest_plugins = ["tests.cluster_fixtures"]


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("attention-cluster"))


@pytest.fixture(autouse=True)
def fresh(world: PushWorld) -> None:
    world.reset()


async def active_on(nodes: list[Node], user: User) -> list[bool]:
    """Whether each node sees the user active."""
    return [bool(await n.services.attention.online([user.id])) for n in nodes]


async def online_on(nodes: list[Node], user: User) -> list[bool]:
    return [bool(await n.services.presence.online([user.id])) for n in nodes]


def seen(
    check: Callable[[list[Node], User], Awaitable[list[bool]]],
    nodes: list[Node],
    user: User,
    expected: list[bool],
) -> Callable[[], Awaitable[bool]]:
    """For `eventually`: whether the nodes see the user as expected."""

    async def matches() -> bool:
        return await check(nodes, user) == expected

    return matches


async def test_an_active_socket_on_the_other_node_silences_the_push(
    cluster: Cluster, world: PushWorld
) -> None:
    settings = {**world.settings, "push_recheck_interval_seconds": 0.2}
    n1, n2 = await cluster.node(**settings), await cluster.node(**settings)
    nodes = [n1, n2]
    api = Client(n2)  # messages are committed, and their pushes planned, on n2
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    web = await web_device(api, bob, world)
    tab = await connect(n1, bob)
    try:
        # His only socket, on n1, is idle: pushed.
        await activity(tab, "idle")
        await eventually(seen(active_on, nodes, bob, [False, False]), what="bob idle")
        assert await online_on(nodes, bob) == [True, True]
        first = (await api.send(alice, conv["id"], "lunch?")).json()
        await tab.expect("message.new")
        await eventually(lambda: pushed(world, web) == [first["id"]], what="bob's push")

        # An active socket on n2 as well: not pushed, though the n1 tab stays idle.
        laptop = await connect(n2, bob)
        await eventually(seen(active_on, nodes, bob, [True, True]), what="bob active")
        second = (await api.send(alice, conv["id"], "at noon")).json()
        await laptop.expect("message.new")

        async def job_done() -> bool:
            return await push_job_of(n2.services.engine, second["id"]) is None

        await eventually(job_done, what="the push job")
        assert pushed(world, web) == [first["id"]]

        # He looks away from the laptop too, with the message unread: it is pushed.
        await activity(laptop, "idle")
        await eventually(seen(active_on, nodes, bob, [False, False]), what="idle everywhere")
        await eventually(
            lambda: pushed(world, web) == [first["id"], second["id"]], what="the late push"
        )

        # Every socket closed, idle or active: neither online nor active anywhere.
        await activity(laptop, "active")
        await eventually(seen(active_on, nodes, bob, [True, True]), what="bob back")
        await laptop.hang_up()
        await eventually(seen(active_on, nodes, bob, [False, False]), what="laptop closed")
        await tab.hang_up()
        await eventually(seen(online_on, nodes, bob, [False, False]), what="bob offline")
        assert await active_on(nodes, bob) == [False, False]
        # Nothing left claimed in Redis for him either.
        async with cluster.redis() as r:
            assert not await r.exists(f"{cluster.prefix}a:o:{bob.id}")
            assert not await r.exists(f"{cluster.prefix}a:u:{bob.id}")
    finally:
        await tab.close()
        await api.close()


async def test_a_flood_of_activity_frames_makes_a_few_redis_calls(
    postgresql_url: str, own_redis: RedisServer
) -> None:
    cluster = Cluster(postgresql_url, own_redis.url)
    api: Client | None = None
    try:
        node = await cluster.node()
        api = Client(node)
        bob = await api.user()
        socket = await connect(node, bob)
        async with own_redis.client() as r:
            await r.config_resetstat()
            # 1,000 frames, idle and active in turn, as fast as the socket takes them.
            for i in range(1000):
                await socket.send({"type": "activity", "state": "active" if i % 2 else "idle"})
            await socket.send({"type": "ping"})
            await socket.expect("pong")
            # Idle at once; the last word, active, once the second is out.
            await eventually(seen(active_on, [node], bob, [True]), what="bob active")
            stats = await r.info("commandstats")
            assert await r.exists(f"{cluster.prefix}a:o:{bob.id}")
        scripts = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))
        assert 2 <= scripts <= 4, stats
        await socket.hang_up()
        assert await active_on([node], bob) == [False]
    finally:
        if api is not None:
            await api.close()
        await cluster.close()
