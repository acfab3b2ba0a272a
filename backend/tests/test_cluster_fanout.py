"""Fan-out across real nodes: every socket of every participant, whatever node it is on."""

from __future__ import annotations

from tests.cluster import Cluster, connect, send_frame, until
from tests.helpers import Client

pytest_plugins = ["tests.cluster_fixtures"]


async def test_frames_reach_every_socket_on_every_node(cluster: Cluster) -> None:
    n1, n2, n3 = [await cluster.node() for _ in range(3)]
    api = Client(n1)
    alice, bob, carol, dave = [await api.user() for _ in range(4)]
    group = (await api.conversation(alice, bob, carol, title="trio"))["id"]
    await api.conversation(alice, dave)
    a1, a3 = await connect(n1, alice), await connect(n3, alice)
    b2, b3 = await connect(n2, bob), await connect(n3, bob)
    c3 = await connect(n3, carol)
    everyone = (a1, a3, b2, b3, c3)

    # message.new: every socket but the sending one, exactly once (the origin node serves
    # its own sockets from memory and ignores its echo from Redis).
    await a1.send(send_frame(group, "hello", "m1"))
    ack = await a1.expect("message.ack", client_msg_id="m1")
    for socket in (a3, b2, b3, c3):
        frame = await socket.expect("message.new")
        assert frame["message"]["id"] == ack["message"]["id"]
    for socket in everyone:
        await socket.nothing("message.new")

    # A REST send from yet another node reaches every socket, the sender's included.
    r = await Client(n2).send(alice, group, "from rest")
    assert r.status_code == 201
    for socket in everyone:
        frame = await socket.expect("message.new")
        assert frame["message"]["content"] == "from rest"

    # typing: the other participants' sockets, not the typist's own.
    await b2.send({"type": "typing", "conversation_id": group})
    for socket in (a1, a3, c3):
        await socket.expect("typing", conversation_id=group, user_id=bob.id)
    await b3.nothing("typing")

    # read: every participant's sockets.
    await c3.send({"type": "read", "conversation_id": group, "seq": 2})
    for socket in everyone:
        await socket.expect("read", conversation_id=group, user_id=carol.id, seq=2)

    # presence: a contact coming online on one node reaches the user's sockets on others.
    d2 = await connect(n2, dave)
    for socket in (a1, a3):
        await socket.expect("presence", user_id=dave.id, online=True)
    await d2.close()
    for socket in (a1, a3):
        await socket.expect("presence", user_id=dave.id, online=False)
    await b2.nothing("presence")

    for socket in everyone:
        await socket.close()
    await api.close()


async def test_a_node_subscribes_only_to_users_it_holds(cluster: Cluster) -> None:
    n1, n2 = await cluster.node(), await cluster.node()
    api = Client(n1)
    alice, bob = await api.user(), await api.user()
    assert await cluster.subscribers(alice) == await cluster.subscribers(bob) == 0

    first = await connect(n1, bob)
    assert await cluster.subscribers(bob) == 1
    second = await connect(n1, bob)  # a second device on the same node: same subscription
    assert await cluster.subscribers(bob) == 1
    third = await connect(n2, bob)
    assert await cluster.subscribers(bob) == 2

    # Nobody subscribes for alice, who has no socket: frames for her reach no node.
    async with cluster.redis() as r:
        channels = set(await r.pubsub_channels(f"{cluster.prefix}c:*"))
    assert channels == {cluster.channel(bob)}

    await third.close()

    async def one_left() -> bool:
        return await cluster.subscribers(bob) == 1

    await until(one_left)
    await first.close()
    await second.close()

    async def none_left() -> bool:
        return await cluster.subscribers(bob) == 0

    await until(none_left)
    await api.close()
