"""Reconnects: the network cut under a socket, and the node restarted on its port. What
was sent meanwhile is caught up from history, once each and in seq order, before what
comes live; a socket send left unanswered is sent again and stored once."""

from __future__ import annotations

import asyncio

from client_testkit import QUICK, MakeNode, Node, Proxy, Recorder, me, signed_in

from messenger_client import Client, Connected, Disconnected


async def test_catch_up_after_the_network_was_cut(server: Node) -> None:
    proxy = Proxy(server.port)
    await proxy.start()
    bob = await signed_in(server.url)
    alice = await signed_in(proxy.url)  # alice reaches the node through the proxy
    try:
        direct = await bob.create_direct(me(alice).id)
        group = await bob.create_group([me(alice).id], title="Away")
        events = await Recorder.start(alice)
        await bob.send(direct.id, "before", via="rest")
        await events.wait_contents(direct.id, ["before"])

        await proxy.cut()
        await events.wait_for(lambda e: isinstance(e, Disconnected), "the drop to be seen")
        # Alice sends while away: the socket send waits for the socket to come back.
        pending = asyncio.create_task(alice.send(group.id, "sent while away", via="socket"))
        away = [f"away {i}" for i in range(5)]
        for text in away:
            await bob.send(direct.id, text, via="rest")
        await bob.send(group.id, "group while away", via="rest")

        await proxy.resume()
        await events.wait_for(
            lambda e: isinstance(e, Connected) and e.reconnect, "alice to reconnect"
        )
        mine = await asyncio.wait_for(pending, 10)
        await bob.send(direct.id, "after", via="rest")
        got = await events.wait_contents(direct.id, ["after"])
        assert [m.content for m in got] == ["before", *away, "after"]
        assert [m.seq for m in got] == list(range(1, 8))  # no loss, no repeat, in order

        group_seen = await events.wait_contents(group.id, ["group while away", "sent while away"])
        assert sorted(m.seq for m in group_seen) == [1, 2]
        assert [m.seq for m in group_seen] == [1, 2]
        history = await bob.history(group.id)
        assert [m.content for m in history].count("sent while away") == 1
        assert mine in history
        await events.stop()
    finally:
        await alice.close()
        await bob.close()
        await proxy.stop()


async def test_reconnect_to_a_restarted_node(start_server: MakeNode) -> None:
    server = await start_server()
    bob = await signed_in(server.url)
    alice = Client(server.url, backoff=QUICK)
    try:
        await alice.register(f"r{me(bob).username}", "correct horse battery")
        await alice.login(f"r{me(bob).username}", "correct horse battery")
        direct = await bob.create_direct(me(alice).id)
        events = await Recorder.start(alice)
        await bob.send(direct.id, "first", via="rest")
        await events.wait_contents(direct.id, ["first"])

        server = await server.restart()
        await bob.send(direct.id, "second", via="rest")
        await events.wait_for(lambda e: isinstance(e, Connected) and e.reconnect, "a reconnect")
        await bob.send(direct.id, "third", via="rest")
        got = await events.wait_contents(direct.id, ["second", "third"])
        assert [(m.seq, m.content) for m in got] == [(1, "first"), (2, "second"), (3, "third")]
        drops = [e for e in events.events if isinstance(e, Disconnected)]
        assert drops and drops[0].code == 1012  # the node said it was restarting
        await events.stop()
    finally:
        await alice.close()
        await bob.close()
        await server.stop()
