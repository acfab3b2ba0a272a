"""Redis stops under running nodes: they keep serving their own sockets, say so on
/health, and rejoin the cluster by themselves when Redis is back."""

from __future__ import annotations

import logging

import pytest

from tests.cluster import Cluster, RedisServer, connect, send_frame
from tests.helpers import Client, eventually

pytest_plugins = ["tests.cluster_fixtures"]

FAST = {"presence_heartbeat_seconds": 0.5, "presence_ttl_seconds": 3}


def outage_warnings(caplog: pytest.LogCaptureFixture, node_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
        and r.name.startswith("app.messenger.")
        and f"node={node_id}" in r.getMessage()
    ]


async def test_a_node_serves_its_own_sockets_without_redis_and_recovers(
    cluster: Cluster, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.redis_url = own_redis.url
    n1, n2 = await cluster.node(**FAST), await cluster.node(**FAST)
    api1, api2 = Client(n1), Client(n2)
    alice, bob = await api1.user(), await api1.user()
    conversation = (await api1.conversation(alice, bob))["id"]
    phone, laptop = await connect(n1, alice), await connect(n1, alice)
    remote = await connect(n2, bob)
    await phone.send(send_frame(conversation, "before"))
    await remote.expect("message.new")
    await laptop.expect("message.new")

    own_redis.stop()

    r = await api1.http.get("/health")
    assert r.status_code == 503
    assert r.json()["redis"] == "down"
    # Sends are accepted, persisted and delivered to this node's sockets.
    for i in range(3):
        await phone.send(send_frame(conversation, f"during {i}", f"d{i}"))
        ack = await phone.expect("message.ack", client_msg_id=f"d{i}")
        new = await laptop.expect("message.new")
        assert new["message"]["id"] == ack["message"]["id"]
    r = await api1.send(alice, conversation, "during rest")
    assert r.status_code == 201
    # Users it cannot see are offline (so they get a push); its own are online.
    assert await n1.services.presence.online([alice.id, bob.id]) == {alice.id}
    # Said once per outage and component, not once per message.
    warnings = outage_warnings(caplog, n1.services.settings.node_id)
    assert len(warnings) <= 3, warnings  # presence, fan-out listener, at most one publish

    await own_redis.start()  # empty: the nodes must announce themselves again

    async def healthy() -> bool:
        return (await api1.http.get("/health")).status_code == 200

    async def rejoined() -> bool:
        # Each node asked about the other's user: that answer comes from Redis.
        seen_by_n2 = await n2.services.presence.online([alice.id])
        seen_by_n1 = await n1.services.presence.online([bob.id])
        subscribed = await cluster.subscribed(n1, n2)
        return seen_by_n2 == {alice.id} and seen_by_n1 == {bob.id} and subscribed

    await eventually(healthy, within=15.0, what="n1 to report healthy")
    await eventually(rejoined, within=15.0, what="both nodes to rejoin the cluster")
    await phone.send(send_frame(conversation, "after", "after"))
    after = await remote.expect("message.new")
    assert after["message"]["content"] == "after"
    await laptop.expect("message.new")
    # What bob missed comes from history, each message once.
    missed = await api2.messages(bob, conversation, after_seq=1)
    expected = ["during 0", "during 1", "during 2", "during rest", "after"]
    assert [m["content"] for m in missed] == expected
    assert [m["seq"] for m in missed] == [2, 3, 4, 5, 6]
    assert len(outage_warnings(caplog, n1.services.settings.node_id)) == len(warnings)

    for socket in (phone, laptop, remote):
        await socket.close()
    await api1.close()
    await api2.close()


async def test_a_node_started_while_redis_is_down_joins_when_it_is_back(
    cluster: Cluster, own_redis: RedisServer
) -> None:
    cluster.redis_url = own_redis.url
    n1 = await cluster.node(**FAST)
    own_redis.stop()
    n2 = await cluster.node(**FAST)
    api = Client(n2)
    alice, bob = await api.user(), await api.user()
    conversation = (await api.conversation(alice, bob))["id"]
    a = await connect(n2, alice)
    await a.send(send_frame(conversation, "hello", "h"))
    await a.expect("message.ack", client_msg_id="h")

    await own_redis.start()
    b = await connect(n1, bob)

    async def rejoined() -> bool:
        online = await n1.services.presence.online([alice.id])
        return online == {alice.id} and await cluster.subscribed(n1, n2)

    await eventually(rejoined, within=15.0, what="n2 to join the cluster")
    await b.send(send_frame(conversation, "hi back"))
    await a.expect("message.new")
    for socket in (a, b):
        await socket.close()
    await api.close()


async def test_claims_lost_to_a_redis_restart_come_back_before_the_heartbeat(
    cluster: Cluster, own_redis: RedisServer
) -> None:
    # A heartbeat far longer than the wait below: only the fan-out's new subscription
    # can have the nodes claim their users again in time.
    slow = {"presence_heartbeat_seconds": 60, "presence_ttl_seconds": 180}
    cluster.redis_url = own_redis.url
    n1, n2 = await cluster.node(**slow), await cluster.node(**slow)
    api = Client(n1)
    alice, bob = await api.user(), await api.user()
    conversation = (await api.conversation(alice, bob))["id"]
    a, b = await connect(n1, alice), await connect(n2, bob)

    own_redis.stop()
    await own_redis.start()  # empty, and quick: the nodes' clients retry without a word

    async def claimed_again() -> bool:
        seen_by_n1 = await n1.services.presence.online([bob.id])
        seen_by_n2 = await n2.services.presence.online([alice.id])
        subscribed = await cluster.subscribed(n1, n2)
        return seen_by_n1 == {bob.id} and seen_by_n2 == {alice.id} and subscribed

    await eventually(claimed_again, what="the nodes to claim their users again")
    await b.send(send_frame(conversation, "after the restart", "r"))
    new = await a.expect("message.new")
    assert new["message"]["content"] == "after the restart"
    for socket in (a, b):
        await socket.close()
    await api.close()
