"""Presence, attention, fan-out, flood control and participant changes on a real Redis
Cluster (three masters, three replicas), and a master killed and failed over while two
nodes exchange messages: no acked message is lost to the receiving client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from app.messenger.redis_client import cluster_seeds
from app.messenger.redis_keys import RedisKeys
from tests.cluster import Cluster, connect, send_frame
from tests.helpers import Client, Node, Socket, eventually
from tests.redis_cluster import RedisClusterServers, needs_redis_server
from tests.test_attention import activity

pytestmark = needs_redis_server

FAST = {"presence_heartbeat_seconds": 1, "presence_ttl_seconds": 3}
# The failover test sends as fast as acks come: the send limit is not what it tests.
UNLIMITED = {"send_rate_per_second": 100_000, "send_burst": 100_000}


@pytest.fixture(scope="module")
async def servers() -> AsyncIterator[RedisClusterServers]:
    """One cluster for this module's tests that leave it whole (each has its own prefix)."""
    s = RedisClusterServers()
    try:
        await s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture
async def cluster(postgresql_url: str, servers: RedisClusterServers) -> AsyncIterator[Cluster]:
    c = Cluster(postgresql_url, redis_url="")
    yield c
    await c.close()


async def cluster_node(cluster: Cluster, servers: RedisClusterServers, **overrides: object) -> Node:
    return await cluster.node(redis_cluster_url=servers.url, **overrides)


def cluster_client(servers: RedisClusterServers) -> RedisCluster:
    nodes, _ = cluster_seeds(servers.url)
    return RedisCluster(startup_nodes=nodes, decode_responses=True)


async def test_presence_and_fan_out_across_nodes(
    cluster: Cluster, servers: RedisClusterServers
) -> None:
    n1, n2 = await cluster_node(cluster, servers), await cluster_node(cluster, servers)
    api = Client(n1)
    alice, bob, carol, dave = [await api.user() for _ in range(4)]
    group = (await api.conversation(alice, bob, carol, title="trio"))["id"]
    await api.conversation(alice, dave)
    a1 = await connect(n1, alice)
    b2, c2 = await connect(n2, bob), await connect(n2, carol)
    try:
        # Users on n2 are online as n1 sees them, and their keys sit in their own part.
        assert await n1.services.presence.online([alice.id, bob.id, carol.id, dave.id]) == {
            alice.id,
            bob.id,
            carol.id,
        }
        keys = RedisKeys(cluster.prefix, cluster=True)
        part = keys.parts[keys.part_of(bob.id)]
        async with cluster_client(servers) as r:
            assert await r.exists(part.online(bob.id)) == 1
            assert await r.zrange(part.claims(bob.id), 0, -1) == [n2.services.settings.node_id]
            assert await r.sismember(part.held(n2.services.settings.node_id), str(bob.id))
            # The node's channel is a sharded one, read by n2 alone.
            channel = keys.channel(n2.services.settings.node_id)
            owner = r.get_node_from_key(channel)
            counts = dict(await r.pubsub_shardnumsub(channel, target_nodes=owner))
            assert list(counts.values()) == [1]

        # A message from n1 reaches both sockets on n2, once each, in order.
        for i in range(3):
            await a1.send(send_frame(group, f"m{i}", f"m{i}"))
            await a1.expect("message.ack", client_msg_id=f"m{i}")
        for socket in (b2, c2):
            contents = [
                (await socket.expect("message.new"))["message"]["content"] for _ in range(3)
            ]
            assert contents == ["m0", "m1", "m2"]
            await socket.nothing("message.new")

        # Presence frames cross nodes: dave coming and going on n2 reaches alice on n1.
        d2 = await connect(n2, dave)
        await a1.expect("presence", user_id=dave.id, online=True)
        seen_online = await n1.services.presence.last_seen([dave.id, alice.id])
        assert set(seen_online) == {dave.id, alice.id}
        await d2.hang_up()
        await a1.expect("presence", user_id=dave.id, online=False)
        assert await n1.services.presence.online([dave.id]) == set()
        assert dave.id in await n1.services.presence.last_seen([dave.id])
    finally:
        for socket in (a1, b2, c2):
            await socket.close()
        await api.close()


async def test_attention_across_nodes(cluster: Cluster, servers: RedisClusterServers) -> None:
    n1, n2 = await cluster_node(cluster, servers), await cluster_node(cluster, servers)
    api = Client(n1)
    bob = await api.user()
    tab = await connect(n2, bob)

    async def active_on_n1(expected: bool) -> bool:
        return bool(await n1.services.attention.online([bob.id])) == expected

    try:
        await activity(tab, "active")
        await eventually(lambda: active_on_n1(True), what="bob active, seen from n1")
        await activity(tab, "idle")
        await eventually(lambda: active_on_n1(False), what="bob idle, seen from n1")
        assert await n1.services.presence.online([bob.id]) == {bob.id}
        await tab.hang_up()

        async def offline_on_n1() -> bool:
            return await n1.services.presence.online([bob.id]) == set()

        await eventually(offline_on_n1, what="bob offline, seen from n1")
    finally:
        await tab.close()
        await api.close()


async def test_the_send_limit_holds_across_nodes(
    cluster: Cluster, servers: RedisClusterServers
) -> None:
    limit = {"send_burst": 3, "send_rate_per_second": 0.2}
    n1, n2 = (
        await cluster_node(cluster, servers, **limit),
        await cluster_node(cluster, servers, **limit),
    )
    api1, api2 = Client(n1), Client(n2)
    alice, bob = await api1.user(), await api1.user()
    conversation = (await api1.conversation(alice, bob))["id"]
    statuses = [
        (await api.send(alice, conversation, f"m{i}")).status_code
        for i, api in enumerate((api1, api2, api1))
    ]
    assert statuses == [201, 201, 201]
    for api in (api2, api1):
        r = await api.send(alice, conversation, "one too many")
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
    assert (await api2.send(bob, conversation, "hi")).status_code == 201
    # Many keys in one batch land in many slots: each still counts on its own.
    answers = await asyncio.gather(
        *(n1.services.limiter.hit(f"k{i}", 0.1, 1) for i in range(200)),
        *(n2.services.limiter.hit(f"k{i}", 0.1, 1) for i in range(200)),
    )
    assert answers[:200] == [0.0] * 200
    assert all(a > 0 for a in answers[200:])
    await api1.close()
    await api2.close()


async def test_a_new_member_gets_the_next_message_from_another_node(
    cluster: Cluster, servers: RedisClusterServers
) -> None:
    n1, n2 = await cluster_node(cluster, servers), await cluster_node(cluster, servers)
    api = Client(n1)
    alice, bob, carol = [await api.user() for _ in range(3)]
    group = (await api.conversation(alice, bob, title="pair"))["id"]
    b2, c2 = await connect(n2, bob), await connect(n2, carol)
    try:
        # n2 reads the members for bob's message and keeps them (30 s unless told).
        await b2.send(send_frame(group, "before", "before"))
        await b2.expect("message.ack", client_msg_id="before")
        # Alice adds carol on n1: n1 tells every node over the cluster.
        r = await api.http.post(
            f"/api/v1/messenger/conversations/{group}/participants",
            json={"user_ids": [carol.id]},
            headers=alice.headers,
        )
        assert r.status_code == 200, r.text

        # n2 forgot its members list, so bob's next message reaches carol.
        async def carol_gets_it() -> bool:
            await b2.send(send_frame(group, "after", None))
            try:
                frame = await c2.expect("message.new", timeout=0.5)
            except TimeoutError:
                return False
            return frame["message"]["content"] == "after"

        await eventually(carol_gets_it, within=5, what="carol's first message")
    finally:
        for socket in (b2, c2):
            await socket.close()
        await api.close()


@pytest.fixture
async def fresh_servers() -> AsyncIterator[RedisClusterServers]:
    """A cluster of its own: the test kills one of its masters."""
    s = RedisClusterServers()
    try:
        await s.start()
        yield s
    finally:
        s.stop()


async def test_a_master_killed_and_failed_over_loses_no_acked_message(
    postgresql_url: str, fresh_servers: RedisClusterServers
) -> None:
    servers = fresh_servers
    cluster = Cluster(postgresql_url, redis_url="")
    try:
        n1 = await cluster_node(cluster, servers, **FAST, **UNLIMITED)
        n2 = await cluster_node(cluster, servers, **FAST, **UNLIMITED)
        api = Client(n1)
        alice, bob = await api.user(), await api.user()
        conversation = (await api.conversation(alice, bob))["id"]
        sender, receiver = await connect(n1, alice), await connect(n2, bob)
        acked: dict[int, str] = {}  # seq -> message id, as answered to alice
        live: dict[int, str] = {}  # seq -> message id, as bob got them live
        stop = asyncio.Event()

        async def send() -> None:
            i = 0
            while not stop.is_set():
                await sender.send(send_frame(conversation, f"m{i}", f"c{i}"))
                ack = await sender.expect("message.ack", timeout=10, client_msg_id=f"c{i}")
                acked[ack["message"]["seq"]] = ack["message"]["id"]
                i += 1

        async def receive(socket: Socket) -> None:
            while True:
                frame = await socket.expect("message.new", timeout=60)
                message = frame["message"]
                assert message["seq"] not in live, "a message came live twice"
                live[message["seq"]] = message["id"]

        sending = asyncio.create_task(send())
        receiving = asyncio.create_task(receive(receiver))
        await eventually(lambda: len(live) >= 5, what="messages flowing before the kill")

        # Kill the master that holds n2's channel: its subscription drops with it.
        channel = RedisKeys(cluster.prefix, cluster=True).channel(n2.services.settings.node_id)
        master = await servers.master_of(channel)
        servers.kill(master)
        await servers.wait_failed_over(master)
        promoted = await servers.master_of(channel)
        assert promoted != master and await servers.role(promoted) == "master"

        # The nodes come back by themselves: a message sent from now on arrives live.
        after = max(acked)
        await eventually(lambda: max(live, default=0) > after, within=30, what="live again")
        stop.set()
        await sending
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)

        # What did not come live comes through catch-up by seq, as a client asks for it.
        contiguous = 0
        while contiguous + 1 in live:
            contiguous += 1
        history: dict[int, str] = {}
        cursor = contiguous
        while page := await api.messages(bob, conversation, after_seq=cursor, limit=200):
            history.update((m["seq"], m["id"]) for m in page)
            cursor = page[-1]["seq"]
        delivered = {**history, **live}
        missing = [seq for seq in acked if seq not in delivered]
        assert not missing, f"acked but lost: {missing[:10]}"
        assert all(delivered[seq] == mid for seq, mid in acked.items())
        assert len(acked) > 5
        await sender.close()
        await receiver.close()
        await api.close()
    finally:
        await cluster.close()


def test_a_user_lands_in_one_part_and_a_batch_in_few() -> None:
    keys = RedisKeys("p:", cluster=True)
    bob = 12345
    part = keys.parts[keys.part_of(bob)]
    # Every presence name of one user shares the part's hash tag, so one slot.
    tag = part.online(bob)[part.online(bob).index("{") :].split("}")[0]
    for name in (part.claims(bob), part.seen, part.nodes, part.held("n1")):
        assert name.startswith(f"p:{tag}}}")
    assert len({keys.part_of(u) for u in range(10_000)}) == len(keys.parts)
    # One Redis keeps the plain names.
    single = RedisKeys("p:")
    assert single.parts == [single] and single.online(bob) == "p:o:12345"
    assert single.rate_limit("send:1") == "p:rl:send:1"
    tagged = keys.rate_limit("send:1")
    assert tagged.startswith("p:{") and tagged.endswith("}rl:send:1")
