"""Presence across real nodes: online while any socket is open on any node, offline when
the last closes or its node dies, announced once, asked in one Redis command."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from app.db import utcnow
from tests.cluster import Cluster, connect, send_frame
from tests.helpers import Client, Node, Socket, User

pytest_plugins = ["tests.cluster_fixtures"]

FAST = {"presence_heartbeat_seconds": 0.5, "presence_ttl_seconds": 3}


async def no_presence_before_a_message(
    watcher: Socket, node: Node, sender: User, conversation_id: str
) -> None:
    """The sender sends a message through `node`, which publishes it after every frame it
    published before: it reaches the watcher with no presence frame ahead of it."""
    api = Client(node)
    try:
        r = await api.send(sender, conversation_id, "marker")
        assert r.status_code == 201, r.text
    finally:
        await api.close()
    await watcher.first("message.new", unwanted="presence")


async def test_online_while_any_device_on_any_node(cluster: Cluster) -> None:
    n1, n2, n3 = [await cluster.node() for _ in range(3)]
    api = Client(n1)
    alice, bob = await api.user(), await api.user()
    conversation = (await api.conversation(alice, bob))["id"]
    watcher = await connect(n2, bob)
    presence = n2.services.presence

    phone = await connect(n1, alice)
    await watcher.expect("presence", user_id=alice.id, online=True)
    assert await presence.online([alice.id, bob.id]) == {alice.id, bob.id}

    # A second device on another node, flapping: no presence frames, still online. Once
    # each node is done with its closed sockets, a frame it publishes next comes after any
    # presence frame it would have published.
    laptop = await connect(n3, alice)
    await laptop.hang_up()
    laptop = await connect(n3, alice)
    await phone.hang_up()
    await laptop.send({"type": "typing", "conversation_id": conversation})
    await watcher.first("typing", unwanted="presence", user_id=alice.id)
    await no_presence_before_a_message(watcher, n1, alice, conversation)
    assert await presence.online([alice.id]) == {alice.id}
    assert await n1.services.presence.online([alice.id]) == {alice.id}

    # The last socket closes: offline, once, and the last time seen is kept.
    await laptop.hang_up()
    await watcher.expect("presence", user_id=alice.id, online=False)
    for node in (n1, n3):
        await no_presence_before_a_message(watcher, node, alice, conversation)
    assert await presence.online([alice.id]) == set()
    seen = (await presence.last_seen([alice.id, bob.id]))[alice.id]
    assert utcnow() - timedelta(minutes=1) < seen <= utcnow()
    await watcher.close()
    await api.close()


async def test_devices_opening_together_on_two_nodes_announce_once(cluster: Cluster) -> None:
    n1, n2, n3 = [await cluster.node() for _ in range(3)]
    api = Client(n1)
    alice, bob = await api.user(), await api.user()
    conversation = (await api.conversation(alice, bob))["id"]
    watcher = await connect(n3, bob)

    # Each node announced before it answered the ping in connect(): a typing frame from
    # each device comes after any second announcement.
    devices = await asyncio.gather(connect(n1, alice), connect(n2, alice))
    await watcher.expect("presence", user_id=alice.id, online=True)
    for device in devices:
        await device.send({"type": "typing", "conversation_id": conversation})
        await watcher.first("typing", unwanted="presence", user_id=alice.id)

    await asyncio.gather(*(d.hang_up() for d in devices))
    await watcher.expect("presence", user_id=alice.id, online=False)
    for node in (n1, n2):
        await no_presence_before_a_message(watcher, node, alice, conversation)
    await watcher.close()
    await api.close()


async def test_users_of_a_killed_node_go_offline_within_the_ttl(cluster: Cluster) -> None:
    survivor = await cluster.node(presence_heartbeat_seconds=1, presence_ttl_seconds=3)
    doomed = await cluster.process_node(presence_heartbeat_seconds=1, presence_ttl_seconds=3)
    api = Client(survivor)
    alice, bob = await api.user(), await api.user()
    conversation = (await api.conversation(alice, bob))["id"]
    watcher = await connect(survivor, bob)
    victim = await connect(doomed, alice)
    await watcher.expect("presence", user_id=alice.id, online=True)
    assert await survivor.services.presence.online([alice.id]) == {alice.id}

    doomed.kill()
    # TTL 3 s and a heartbeat of 1 s: the deadline is generous, the order is what counts.
    await watcher.expect("presence", timeout=20, user_id=alice.id, online=False)
    assert await survivor.services.presence.online([alice.id]) == set()
    assert alice.id in await survivor.services.presence.last_seen([alice.id])

    # Back on the surviving node, alice is online again and hears bob's messages.
    again = await connect(survivor, alice)
    await watcher.expect("presence", user_id=alice.id, online=True)
    await watcher.send(send_frame(conversation, "welcome back"))
    await again.expect("message.new")
    await victim.ws.close()
    for socket in (watcher, again):
        await socket.close()
    await api.close()


async def test_a_node_shut_down_cleanly_announces_its_users_offline(cluster: Cluster) -> None:
    staying, leaving = await cluster.node(), await cluster.node()
    api = Client(staying)
    alice, bob = await api.user(), await api.user()
    await api.conversation(alice, bob)
    watcher = await connect(staying, bob)
    await connect(leaving, alice)
    await watcher.expect("presence", user_id=alice.id, online=True)

    await leaving.stop()
    cluster.nodes.remove(leaving)
    await watcher.expect("presence", user_id=alice.id, online=False)
    assert await staying.services.presence.online([alice.id]) == set()
    await watcher.close()
    await api.close()


async def test_online_asks_redis_once_for_many_users(cluster: Cluster) -> None:
    quiet = {"presence_heartbeat_seconds": 3600}  # no heartbeat in the middle of the count
    n1, n2 = await cluster.node(**quiet), await cluster.node(**quiet)
    api = Client(n1)
    users = [await api.user() for _ in range(40)]
    sockets = [await connect(n2, u) for u in users[:5]]
    ids = [u.id for u in users]

    async with cluster.redis() as r:
        await r.config_resetstat()
        online = await n1.services.presence.online(ids)
        stats = await r.info("commandstats")
    assert online == set(ids[:5])
    calls = {
        name: stat["calls"]
        for name, stat in stats.items()
        if name not in {"cmdstat_info", "cmdstat_config|resetstat", "cmdstat_ping"}
    }
    assert calls == {"cmdstat_mget": 1}
    for socket in sockets:
        await socket.close()
    await api.close()
