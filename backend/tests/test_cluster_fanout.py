"""Fan-out across real nodes: every socket of every participant, whatever node it is on."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio.client import PubSub

from app.messenger.redis_keys import RedisKeys
from tests.cluster import Cluster, connect, send_frame
from tests.helpers import Client, Socket, User, eventually

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
    # Once: the sender's next message, published after any second copy, comes next.
    await a1.send(send_frame(group, "again", "m2"))
    for socket in (a3, b2, b3, c3):
        frame = await socket.expect("message.new")
        assert frame["message"]["content"] == "again"

    # A REST send from yet another node reaches every socket, the sender's included; the
    # sending socket got no copy of its own messages before it, from memory or from Redis.
    r = await Client(n2).send(alice, group, "from rest")
    assert r.status_code == 201
    for socket in everyone:
        frame = await socket.expect("message.new")
        assert frame["message"]["content"] == "from rest"

    # typing: the other participants' sockets, not the typist's own.
    await b2.send({"type": "typing", "conversation_id": group})
    for socket in (a1, a3, c3):
        await socket.expect("typing", conversation_id=group, user_id=bob.id)

    # read: every participant's sockets. The typist's read, from the same socket, reaches
    # his own sockets after the typing frame would have.
    await b2.send({"type": "read", "conversation_id": group, "seq": 2})
    for socket in (b2, b3):
        await socket.first("read", unwanted="typing", user_id=bob.id, seq=2)
    for socket in (a1, a3, c3):
        await socket.expect("read", conversation_id=group, user_id=bob.id, seq=2)

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


async def test_a_socket_is_claimed_before_it_opens(cluster: Cluster) -> None:
    """Once the client sees the socket open (and catches up from history), every other
    node already routes the user's frames to this one."""
    n1, n2 = await cluster.node(), await cluster.node()
    api = Client(n1)
    bob = await api.user()
    for _ in range(5):
        socket = await Socket.connect(n2, bob)  # no round trip after the handshake
        async with cluster.redis() as r:
            claims = await r.zrange(RedisKeys(cluster.prefix).claims(bob.id), 0, -1)
        assert claims == [n2.services.settings.node_id]
        assert await n1.services.presence.online([bob.id]) == {bob.id}
        await socket.close()

        async def released() -> bool:
            return await n1.services.presence.online([bob.id]) == set()

        await eventually(released, within=15.0, what="bob's claim to be released")

    # A reconnect storm: sockets opened together are claimed together, each before it opens.
    users = [await api.user() for _ in range(40)]
    sockets = await asyncio.gather(*(Socket.connect(n2, u) for u in users))
    assert await n1.services.presence.online([u.id for u in users]) == {u.id for u in users}
    for socket in sockets:
        await socket.close()
    await api.close()


async def published(
    pubsub: PubSub, conversation_id: str, *markers: tuple[Socket, User, set[str]]
) -> dict[str, list[str]]:
    """What the watched channels carried (channel -> data) before the markers: a typing
    frame each marker socket (of that user) sends now, which its node publishes after all
    it published before, to the channels given."""
    for socket, _, _ in markers:
        await socket.send({"type": "typing", "conversation_id": conversation_id})
    awaited = {(user.id, channel) for _, user, channels in markers for channel in channels}
    seen: dict[str, list[str]] = {}
    async with asyncio.timeout(10):
        while awaited:
            message = await pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "message":
                continue
            channel, parts = message["channel"], message["data"].split("\n")
            rest = []
            for users, frame in zip(parts[::2], parts[1::2], strict=True):
                body = json.loads(frame)
                marker = (body.get("user_id"), channel)
                if body["type"] == "typing" and marker in awaited:
                    awaited.discard(marker)
                else:
                    rest.append(f"{users}\n{frame}")
            if rest:
                seen.setdefault(channel, []).append("\n".join(rest))
    return seen


async def test_a_frame_goes_only_to_the_nodes_holding_its_users(cluster: Cluster) -> None:
    # Typing frames are the markers here, several a second: none may be thinned out.
    n1, n2, n3 = [await cluster.node(typing_interval_seconds=0) for _ in range(3)]
    api = Client(n1)
    alice, bob, carol = [await api.user() for _ in range(3)]
    group = (await api.conversation(alice, bob, carol, title="trio"))["id"]
    async with cluster.redis() as r, r.pubsub() as watch:
        n1_, n2_, n3_ = (cluster.channel(n) for n in (n1, n2, n3))
        await watch.subscribe(n1_, n2_, n3_)
        a1 = await connect(n1, alice)
        b2 = await connect(n2, bob)
        await published(watch, group, (a1, alice, {n2_}), (b2, bob, {n1_}))  # presence

        # Carol has no socket anywhere, alice's is on the sending node: only n2 hears.
        await a1.send(send_frame(group, "one"))
        frame = await b2.expect("message.new")
        seen = await published(watch, group, (a1, alice, {n2_}))
        assert list(seen) == [cluster.channel(n2)]
        [data] = seen[cluster.channel(n2)]
        users, _, payload = data.partition("\n")
        assert users == str(bob.id)
        assert json.loads(payload) == frame

        # Bob on a second node, and carol there too: n3 gets one frame for both of them.
        b3 = await connect(n3, bob)
        c3 = await connect(n3, carol)
        await published(watch, group, (c3, carol, {n1_, n2_}))  # carol's presence
        await a1.send(send_frame(group, "two"))
        for socket in (b2, b3, c3):
            frame = await socket.expect("message.new")
            assert frame["message"]["content"] == "two"
        seen = await published(watch, group, (a1, alice, {n2_, n3_}))
        assert sorted(seen) == sorted([cluster.channel(n2), cluster.channel(n3)])
        [data] = seen[cluster.channel(n3)]
        assert sorted(data.partition("\n")[0].split(",")) == sorted([str(bob.id), str(carol.id)])

        # Bob's socket on n2 closes: once n2 withdraws its claim, n2 hears nothing more.
        await b2.close()

        async def n2_let_go() -> bool:
            node = n2.services.settings.node_id
            return await r.zscore(RedisKeys(cluster.prefix).claims(bob.id), node) is None

        await eventually(n2_let_go, within=15.0, what="n2 to withdraw its claim on bob")
        await a1.send(send_frame(group, "three"))
        await b3.expect("message.new")
        seen = await published(watch, group, (a1, alice, {n3_}))
        assert list(seen) == [cluster.channel(n3)]

        for socket in (a1, b3, c3):
            await socket.close()
    await api.close()
