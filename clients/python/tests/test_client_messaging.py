"""Conversations, sends over the socket and REST, live events and history, devices."""

from __future__ import annotations

import pytest
from client_testkit import MakeNode, Node, Recorder, me, signed_in

from messenger_client import (
    ConversationNew,
    Forbidden,
    MessageNew,
    NotFound,
    Presence,
    RateLimited,
    Read,
    Typing,
)


async def test_send_and_receive_between_two_clients(server: Node) -> None:
    alice, bob = await signed_in(server.url), await signed_in(server.url)
    try:
        direct = await alice.create_direct(me(bob).id)
        assert direct.type == "direct"
        assert sorted(direct.participant_ids) == sorted([me(alice).id, me(bob).id])
        assert (await bob.create_direct(me(alice).id)).id == direct.id  # the existing one
        alice_events, bob_events = await Recorder.start(alice), await Recorder.start(bob)

        over_socket = await alice.send(direct.id, "hello over the socket")
        over_rest = await bob.send(direct.id, "hello over REST", via="rest")
        assert (over_socket.seq, over_rest.seq) == (1, 2)
        assert over_socket.sender_id == me(alice).id and over_socket.client_msg_id

        got = await bob_events.wait_contents(direct.id, ["hello over the socket"])
        assert got[0] == over_socket
        # Each side's stream is the conversation's log, its own messages included.
        for events in (alice_events, bob_events):
            seen = await events.wait_contents(direct.id, ["hello over REST"])
            assert [m.seq for m in seen] == [1, 2]

        history = await bob.history(direct.id)
        assert [m.content for m in history] == ["hello over the socket", "hello over REST"]
        assert [m.seq for m in await bob.history(direct.id, after_seq=1)] == [2]
        listed = {c.id: c for c in await bob.conversations()}
        assert listed[direct.id].last_seq == 2 and listed[direct.id].last_message == over_rest

        await alice.typing(direct.id)
        typing = await bob_events.wait_for(lambda e: isinstance(e, Typing), "a typing event")
        assert typing == Typing(direct.id, me(alice).id)
        # Bob's own send marked his read up to 2; alice's next message is unread.
        third = await alice.send(direct.id, "read me")
        await bob.read(direct.id, third.seq)
        read = await alice_events.wait_for(lambda e: isinstance(e, Read), "a read event")
        assert read == Read(direct.id, me(bob).id, 3)
        online = await alice_events.wait_for(
            lambda e: isinstance(e, Presence) and e.user_id == me(bob).id, "bob's presence"
        )
        assert online == Presence(me(bob).id, True)
        await alice_events.stop()
        await bob_events.stop()
    finally:
        await alice.close()
        await bob.close()


async def test_a_repeated_client_msg_id_is_one_message(server: Node) -> None:
    alice, bob = await signed_in(server.url), await signed_in(server.url)
    try:
        group = await alice.create_group([me(bob).id], title="Retries")
        assert (group.type, group.title) == ("group", "Retries")
        await alice.connect()
        first = await alice.send(group.id, "once", client_msg_id="retry-1", via="rest")
        again = await alice.send(group.id, "once", client_msg_id="retry-1", via="socket")
        assert again == first
        assert [m.content for m in await bob.history(group.id)] == ["once"]
    finally:
        await alice.close()
        await bob.close()


async def test_errors_of_sends_and_reads_are_typed(server: Node) -> None:
    alice, bob, eve = [await signed_in(server.url) for _ in range(3)]
    try:
        direct = await alice.create_direct(me(bob).id)
        with pytest.raises(Forbidden) as outsider:
            await eve.send(direct.id, "let me in", via="rest")
        assert (outsider.value.status, outsider.value.code) == (403, "not_a_participant")
        await eve.connect()
        with pytest.raises(Forbidden) as on_socket:
            await eve.send(direct.id, "let me in")  # over the socket: the error frame
        assert (on_socket.value.status, on_socket.value.code) == (None, "not_a_participant")
        with pytest.raises(NotFound) as unknown:
            await alice.history("00000000-0000-0000-0000-000000000000")
        assert unknown.value.status == 404
    finally:
        for client in (alice, bob, eve):
            await client.close()


async def test_send_flood_raises_rate_limited_on_rest_and_socket(start_server: MakeNode) -> None:
    server = await start_server(send_burst=2, send_rate_per_second=0.1)
    alice, bob = await signed_in(server.url), await signed_in(server.url)
    try:
        direct = await alice.create_direct(me(bob).id)
        await alice.send(direct.id, "one", via="rest")
        await alice.send(direct.id, "two", via="rest")
        with pytest.raises(RateLimited) as rest:
            await alice.send(direct.id, "three", via="rest")
        assert (rest.value.status, rest.value.code) == (429, "rate_limited")
        assert rest.value.retry_after >= 1
        await alice.connect()
        with pytest.raises(RateLimited) as socket:
            await alice.send(direct.id, "four", via="socket")
        assert socket.value.code == "rate_limited" and socket.value.retry_after >= 1
        assert [m.content for m in await bob.history(direct.id)] == ["one", "two"]
    finally:
        await alice.close()
        await bob.close()


async def test_device_registration(server: Node) -> None:
    async with await signed_in(server.url) as client:
        token = "fcm-token-" + me(client).username
        first = await client.register_device(token, "android", "fcm", device_name="Pixel")
        assert first.created and first.user_id == me(client).id and first.platform == "android"
        again = await client.register_device(token, "android", "fcm", device_name="Pixel")
        assert not again.created and again.device_token_id == first.device_token_id
        devices = await client.devices()
        assert [(d.id, d.provider, d.device_name, d.is_active) for d in devices] == [
            (first.device_token_id, "fcm", "Pixel", True)
        ]
        await client.unregister_device(token)
        assert await client.devices() == []
        with pytest.raises(NotFound):
            await client.unregister_device(token)


async def test_events_of_a_message_sent_by_the_stream_owner_elsewhere(server: Node) -> None:
    """A message the caller sent from another device reaches this stream too."""
    phone = await signed_in(server.url)
    assert phone.tokens is not None
    laptop_user = me(phone)
    bob = await signed_in(server.url)
    try:
        direct = await phone.create_direct(me(bob).id)
        events = await Recorder.start(phone)
        await phone.send(direct.id, "from the phone's REST", via="rest")
        got = await events.wait_for(lambda e: isinstance(e, MessageNew), "the message")
        assert isinstance(got, MessageNew) and got.message.sender_id == laptop_user.id
        await events.stop()
    finally:
        await phone.close()
        await bob.close()


async def test_conversations_that_start_or_admit_the_caller_while_connected(server: Node) -> None:
    alice, bob, carol = [await signed_in(server.url) for _ in range(3)]
    try:
        group = await bob.create_group([me(carol).id], title="Before alice")
        await bob.send(group.id, "not for alice 1", via="rest")
        await bob.send(group.id, "not for alice 2", via="rest")
        events = await Recorder.start(alice)

        # A member added later sees from when they joined: the first message they get
        # is seq 3, and nothing before it is fetched for them.
        added = await bob.add_participants(group.id, [me(alice).id])
        assert me(alice).id in added.participant_ids
        await bob.send(group.id, "welcome", via="rest")
        got = await events.wait_contents(group.id, ["welcome"])
        assert [(m.seq, m.content) for m in got] == [(3, "welcome")]

        direct = await carol.create_direct(me(alice).id)
        await events.wait_for(lambda e: e == ConversationNew(direct.id), "the new direct one")
        assert ConversationNew(group.id) in events.events  # added to it: new to alice too
        await carol.send(direct.id, "hi alice", via="rest")
        got = await events.wait_contents(direct.id, ["hi alice"])
        assert [m.seq for m in got] == [1]
        await events.stop()
    finally:
        for client in (alice, bob, carol):
            await client.close()
