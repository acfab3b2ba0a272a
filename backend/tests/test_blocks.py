"""Blocks over real sockets, on SQLite and PostgreSQL: the list, what a block refuses
(direct conversations, groups, sends), and presence only where neither blocked the other."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.cluster import Cluster, connect
from tests.helpers import Client, Node, Socket, User, eventually, make_settings, start_node

pytest_plugins = ["tests.cluster_fixtures"]

BLOCKS = "/api/v1/me/blocks"
CONVERSATIONS = "/api/v1/messenger/conversations"


async def block(client: Client, who: User, whom: User) -> None:
    r = await client.http.put(f"{BLOCKS}/{whom.id}", headers=who.headers)
    assert r.status_code == 200, r.text


async def unblock(client: Client, who: User, whom: User) -> None:
    r = await client.http.delete(f"{BLOCKS}/{whom.id}", headers=who.headers)
    assert r.status_code == 200, r.text


async def create(client: Client, owner: User, kind: str, *others: User) -> tuple[int, dict]:
    body: dict = {"type": kind, "participant_ids": [u.id for u in others]}
    r = await client.http.post(CONVERSATIONS, json=body, headers=owner.headers)
    return r.status_code, r.json()


async def test_list_block_unblock_and_bad_ids(client: Client) -> None:
    me, other, third = await client.user(), await client.user(), await client.user()
    r = await client.http.put(f"{BLOCKS}/{other.id}", headers=me.headers)
    assert r.status_code == 200
    first = r.json()
    assert first["user_id"] == other.id and first["created_at"]
    # Idempotent: the same block, made when it first was.
    r = await client.http.put(f"{BLOCKS}/{other.id}", headers=me.headers)
    assert r.status_code == 200 and r.json() == first
    await block(client, me, third)
    await block(client, other, me)

    r = await client.http.get(BLOCKS, headers=me.headers)
    assert r.status_code == 200
    listed = r.json()["blocks"]
    assert [b["user_id"] for b in listed] == [third.id, other.id]  # newest first
    assert listed[1] == first
    r = await client.http.get(BLOCKS, headers=other.headers)
    assert [b["user_id"] for b in r.json()["blocks"]] == [me.id]

    await unblock(client, me, other)
    await unblock(client, me, other)  # nothing to undo: still 200
    r = await client.http.get(BLOCKS, headers=me.headers)
    assert [b["user_id"] for b in r.json()["blocks"]] == [third.id]

    r = await client.http.put(f"{BLOCKS}/{me.id}", headers=me.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field"
    for bad in (9_999_999, 0, 2**31, 2**32, 10**18 - 1):
        for method in ("PUT", "DELETE"):
            r = await client.http.request(method, f"{BLOCKS}/{bad}", headers=me.headers)
            assert r.status_code == 404, (method, bad, r.text)
            assert r.json()["error"]["code"] == "user_not_found"
    # Past 18 digits (app.web's int convertor), or not a number, no route takes the path.
    for bad in (str(2**63), str(10**30), "9" * 5000, "abc", "-1", "1.5", "%00"):
        for method in ("PUT", "DELETE"):
            r = await client.http.request(method, f"{BLOCKS}/{bad}", headers=me.headers)
            assert 400 <= r.status_code < 500 and "error" in r.json(), (method, bad, r.text)
    for method, path in (("GET", BLOCKS), ("PUT", f"{BLOCKS}/{other.id}")):
        r = await client.http.request(method, path)
        assert r.status_code == 401
    r = await client.http.post(f"{BLOCKS}/{other.id}", headers=me.headers)
    assert r.status_code == 405


async def test_blocked_user_cannot_start_a_direct_or_a_group(client: Client) -> None:
    victim, pest, friend = await client.user(), await client.user(), await client.user()
    await block(client, victim, pest)

    status, body = await create(client, pest, "direct", victim)
    assert status == 403 and body["error"]["code"] == "blocked"
    status, body = await create(client, pest, "group", friend, victim)
    assert status == 403 and body["error"]["code"] == "blocked"
    r = await client.http.get(CONVERSATIONS, headers=victim.headers)
    assert r.json()["conversations"] == []
    # The blocker is not held back, and others may still put the two together.
    status, _ = await create(client, friend, "group", pest, victim)
    assert status == 201

    await unblock(client, victim, pest)
    status, body = await create(client, pest, "direct", victim)
    assert status == 201 and sorted(body["participant_ids"]) == sorted([victim.id, pest.id])
    # A direct conversation that exists is refused as well once the block is back.
    await block(client, victim, pest)
    status, body = await create(client, pest, "direct", victim)
    assert status == 403 and body["error"]["code"] == "blocked"


async def test_no_sends_into_a_direct_conversation_of_a_blocker(client: Client) -> None:
    victim, pest = await client.user(), await client.user()
    direct = (await client.conversation(pest, victim))["id"]
    pair_group = (await client.conversation(pest, victim, title="two of us"))["id"]
    # Sent before the block: it also puts the answer in the node's cache.
    assert (await client.send(pest, direct, "hello")).status_code == 201

    await block(client, victim, pest)
    # Refused at once on this node (the cached answer is dropped), REST and WebSocket.
    r = await client.send(pest, direct, "still there?", client_msg_id="rest-1")
    assert r.status_code == 403 and r.json()["error"]["code"] == "blocked"
    sock = await Socket.connect(client.node, pest)
    try:
        await sock.send(
            {
                "type": "message.send",
                "conversation_id": direct,
                "content": "hello??",
                "client_msg_id": "ws-1",
            }
        )
        error = await sock.expect("error")
        assert error["code"] == "blocked" and error["ref"] == "ws-1"
    finally:
        await sock.close()
    # Groups are not refused, even of two; nor is the blocker.
    assert (await client.send(pest, pair_group, "in the group")).status_code == 201
    assert (await client.send(victim, direct, "go away")).status_code == 201

    # Nothing of the refused sends was stored: no message, no seq taken.
    messages = await client.messages(victim, direct)
    assert [(m["seq"], m["content"]) for m in messages] == [(1, "hello"), (2, "go away")]

    await unblock(client, victim, pest)
    r = await client.send(pest, direct, "sorry", client_msg_id="rest-1")
    assert r.status_code == 201 and r.json()["seq"] == 3


async def test_presence_stops_at_a_block(client: Client) -> None:
    me, them = await client.user(), await client.user()
    direct = (await client.conversation(me, them))["id"]
    theirs = await connect(client.node, them)
    mine: Socket | None = None
    try:
        # Before the block: my coming online reaches them, and I learn they are here.
        mine = await Socket.connect(client.node, me)
        assert (await mine.expect("presence", user_id=them.id))["online"] is True
        assert (await theirs.expect("presence", user_id=me.id))["online"] is True

        # Blocking them while both are online: each sees the other go.
        await block(client, me, them)
        assert (await theirs.expect("presence", user_id=me.id))["online"] is False
        assert (await mine.expect("presence", user_id=them.id))["online"] is False
        await mine.hang_up()
        await theirs.nothing("presence")  # the block already said I am gone

        # From then on my coming online sends them nothing, and I learn nothing of them.
        mine = await Socket.connect(client.node, me)
        await mine.send({"type": "ping"})
        await mine.first("pong", unwanted="presence")
        await theirs.nothing("presence")
        # Nor the other way round.
        await theirs.hang_up()
        theirs = await Socket.connect(client.node, them)
        await theirs.send({"type": "ping"})
        await theirs.first("pong", unwanted="presence")
        await mine.nothing("presence")
        # The conversation itself stays (the blocker may still write in it).
        assert (await client.send(me, direct, "still here")).status_code == 201
        await theirs.expect("message.new")

        # Unblocking brings it back at once, and for later comings and goings.
        await unblock(client, me, them)
        assert (await theirs.expect("presence", user_id=me.id))["online"] is True
        assert (await mine.expect("presence", user_id=them.id))["online"] is True
        await mine.hang_up()
        assert (await theirs.expect("presence", user_id=me.id))["online"] is False
    finally:
        await theirs.close()
        if mine is not None:
            await mine.close()


async def test_group_presence_respects_blocks(client: Client) -> None:
    creator, member, blocked_one = await client.user(), await client.user(), await client.user()
    # The creator blocked one of the people they then put in a group (allowed: that one
    # did not block the creator); a member had blocked that one too.
    await block(client, creator, blocked_one)
    await block(client, member, blocked_one)
    s_member = await connect(client.node, member)
    s_blocked = await connect(client.node, blocked_one)
    s_creator = await connect(client.node, creator)
    late: Socket | None = None
    try:
        status, group = await create(client, creator, "group", member, blocked_one)
        assert status == 201
        # The creator's presence reaches the member, never the one they blocked; the
        # creator learns the member is here, nothing of the blocked one.
        assert (await s_member.expect("presence", user_id=creator.id))["online"] is True
        await s_blocked.expect("conversation.new", conversation_id=group["id"])
        await s_blocked.nothing("presence")
        assert (await s_creator.expect("presence", user_id=member.id))["online"] is True
        await s_creator.nothing("presence")

        # Between members who are not otherwise contacts: the blocked one coming online
        # again reaches nobody in the group, since both others blocked them.
        await s_blocked.hang_up()
        s_blocked = await Socket.connect(client.node, blocked_one)
        await s_blocked.send({"type": "ping"})
        await s_blocked.first("pong", unwanted="presence")
        await s_member.nothing("presence")
        await s_creator.nothing("presence")

        # A fourth user with no block at all sees everyone and is seen by everyone.
        fourth = await client.user()
        await create(client, fourth, "group", creator, member, blocked_one)
        for s in (s_creator, s_member, s_blocked):
            await s.expect("conversation.new")
        late = await Socket.connect(client.node, fourth)
        seen = {(await late.expect("presence"))["user_id"] for _ in range(3)}
        assert seen == {creator.id, member.id, blocked_one.id}
        for s in (s_creator, s_member, s_blocked):
            assert (await s.expect("presence", user_id=fourth.id))["online"] is True
        # The member going offline reaches the fourth, not the one the member blocked.
        await s_member.hang_up()
        assert (await late.expect("presence", user_id=member.id))["online"] is False
        await s_blocked.nothing("presence")
    finally:
        for s in (s_member, s_blocked, s_creator, late):
            if s is not None:
                await s.close()


async def test_cap_on_blocks_per_user(db_url: str) -> None:
    node = await start_node(make_settings(db_url, max_blocks_per_user=2))
    api = Client(node)
    try:
        me = await api.user()
        others = [await api.user() for _ in range(3)]
        await block(api, me, others[0])
        await block(api, me, others[1])
        await block(api, me, others[1])  # the same block again is not a new one
        r = await api.http.put(f"{BLOCKS}/{others[2].id}", headers=me.headers)
        assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_blocks"
        await unblock(api, me, others[0])
        await block(api, me, others[2])
    finally:
        await api.close()
        await node.stop()


@pytest.fixture
async def two_nodes(postgresql_url: str) -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes on one PostgreSQL, each caching a block's answer for half a second."""
    n1 = await start_node(make_settings(postgresql_url, block_cache_seconds=0.5))
    n2 = await start_node(make_settings(postgresql_url, block_cache_seconds=0.5))
    yield n1, n2
    await n1.stop()
    await n2.stop()


async def test_a_block_reaches_other_nodes_within_the_cache_time(
    two_nodes: tuple[Node, Node],
) -> None:
    n1, n2 = two_nodes
    api1, api2 = Client(n1), Client(n2)
    try:
        victim, pest = await api1.user(), await api1.user()
        direct = (await api1.conversation(pest, victim))["id"]
        # Both nodes have the answer cached.
        assert (await api1.send(pest, direct, "one")).status_code == 201
        assert (await api2.send(pest, direct, "two")).status_code == 201

        await block(api1, victim, pest)
        # The node that took the block refuses at once; the other within its cache time.
        assert (await api1.send(pest, direct, "three")).status_code == 403

        async def refused_on_n2() -> bool:
            r = await api2.send(pest, direct, "four")
            assert r.status_code in (201, 403), r.text
            return r.status_code == 403

        await eventually(refused_on_n2, within=3, every=0.1, what="node 2 to refuse")

        await unblock(api2, victim, pest)
        assert (await api2.send(pest, direct, "five")).status_code == 201

        async def accepted_on_n1() -> bool:
            r = await api1.send(pest, direct, "six")
            assert r.status_code in (201, 403), r.text
            return r.status_code == 201

        await eventually(accepted_on_n1, within=3, every=0.1, what="node 1 to accept")
    finally:
        await api1.close()
        await api2.close()


async def test_no_presence_across_nodes_after_a_block(cluster: Cluster) -> None:
    n1, n2 = await cluster.node(), await cluster.node()
    api = Client(n1)
    me, them = await api.user(), await api.user()
    direct = (await api.conversation(me, them))["id"]
    theirs = await connect(n2, them)
    try:
        mine = await connect(n1, me)
        assert (await theirs.expect("presence", user_id=me.id))["online"] is True
        await mine.hang_up()
        assert (await theirs.expect("presence", user_id=me.id))["online"] is False

        await block(api, me, them)
        await theirs.expect("presence", user_id=me.id, online=False)  # from the block
        # My node announces a new socket before it answers its first ping; a message it
        # publishes after that reaches them with no presence frame ahead of it.
        mine = await connect(n1, me)
        assert (await api.send(me, direct, "marker")).status_code == 201
        await theirs.first("message.new", unwanted="presence")
        await mine.hang_up()
        assert (await api.send(me, direct, "marker 2")).status_code == 201
        await theirs.first("message.new", unwanted="presence")
    finally:
        await theirs.close()
        await api.close()


async def test_no_typing_into_a_direct_conversation_of_a_blocker(client: Client) -> None:
    victim, pest = await client.user(), await client.user()
    direct = (await client.conversation(pest, victim))["id"]
    pair_group = (await client.conversation(pest, victim, title="two of us"))["id"]
    await block(client, victim, pest)
    watcher, typist = (
        await Socket.connect(client.node, victim),
        await Socket.connect(client.node, pest),
    )
    try:
        await typist.send({"type": "typing", "conversation_id": direct})
        await typist.send({"type": "typing", "conversation_id": pair_group})
        # The group's typing comes through; the direct one was dropped before it.
        await watcher.first("typing", "typing", conversation_id=pair_group, user_id=pest.id)
        # The blocker may still type to the one they blocked.
        await watcher.send({"type": "typing", "conversation_id": direct})
        await typist.expect("typing", conversation_id=direct, user_id=victim.id)
    finally:
        await watcher.close()
        await typist.close()
