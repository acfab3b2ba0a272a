"""Attention on one node, on SQLite and PostgreSQL: a recipient is pushed unless one of
their sockets is active; an idle tab no longer silences the phone, and going idle pushes
what came while they were active and is still unread."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from prometheus_client import REGISTRY

from app.messenger.attention import SocketAttention
from app.messenger.presence import LocalPresence
from tests.helpers import (
    Client,
    Node,
    Socket,
    User,
    eventually,
    make_settings,
    push_job_of,
    start_node,
)
from tests.push_world import PushWorld, start_push_world

D = "/api/v1/messenger/devices/register"


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("attention"))


@pytest.fixture(autouse=True)
def fresh(world: PushWorld) -> None:
    world.reset()


@pytest.fixture(scope="module")
async def node(world: PushWorld, db_url: str) -> AsyncIterator[Node]:
    settings = {**world.settings, "push_recheck_interval_seconds": 0.2}
    n = await start_node(make_settings(db_url, **settings))
    yield n
    await n.stop()


@pytest.fixture
async def api(node: Node) -> AsyncIterator[Client]:
    client = Client(node)
    yield client
    await client.close()


async def web_device(api: Client, user: User, world: PushWorld) -> str:
    token = world.webpush.subscribe()
    r = await api.http.post(
        D,
        json={"device_token": token, "platform": "web", "provider": "web_push"},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text
    return token


async def activity(socket: Socket, state: str) -> None:
    """Say the state, and wait until the node has handled the frame (it answers a ping
    after every frame before it)."""
    await socket.send({"type": "activity", "state": state})
    await socket.send({"type": "ping"})
    await socket.expect("pong")


def pushed(world: PushWorld, token: str) -> list[str]:
    """The message ids the device was pushed, in order (clearing pushes left out)."""
    received = world.accepted("web_push", token)
    return [r.payload["data"]["message_id"] for r in received if "data" in r.payload]


async def job_done(node: Node, message_id: str) -> bool:
    return await push_job_of(node.services.engine, message_id) is None


def rechecks() -> float:
    return REGISTRY.get_sample_value("messenger_push_rechecks_total") or 0.0


async def test_an_idle_tab_lets_the_push_through_and_an_active_socket_silences_it(
    node: Node, api: Client, world: PushWorld
) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    web = await web_device(api, bob, world)
    attention, presence = node.services.attention, node.services.presence
    tab = await Socket.connect(node, bob)
    try:
        assert await attention.online([bob.id]) == {bob.id}  # never said: active
        await activity(tab, "idle")
        assert await attention.online([bob.id]) == set()
        assert await presence.online([bob.id]) == {bob.id}  # still online to contacts

        first = (await api.send(alice, conv["id"], "lunch?")).json()
        await tab.expect("message.new")  # the idle tab still gets its frames
        await eventually(lambda: pushed(world, web) == [first["id"]], what="bob's push")

        # A second socket that never said anything counts as active: no push.
        phone = await Socket.connect(node, bob)
        try:
            assert await attention.online([bob.id]) == {bob.id}
            second = (await api.send(alice, conv["id"], "at noon")).json()
            await phone.expect("message.new")
            await eventually(lambda: job_done(node, second["id"]), what="the push job")
            assert pushed(world, web) == [first["id"]]
            # He reads it there before he leaves: nothing to push late either.
            await phone.send({"type": "read", "conversation_id": conv["id"], "seq": 2})
            await phone.expect("read", user_id=bob.id, seq=2)
        finally:
            await phone.hang_up()
        third = (await api.send(alice, conv["id"], "see you")).json()
        await eventually(
            lambda: pushed(world, web) == [first["id"], third["id"]], what="the third push"
        )
    finally:
        await tab.close()


async def test_going_idle_pushes_what_came_while_active_and_is_unread(
    node: Node, api: Client, world: PushWorld
) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    web = await web_device(api, bob, world)
    tab = await Socket.connect(node, bob)
    before = rechecks()
    try:
        message = (await api.send(alice, conv["id"], "did you see this?")).json()
        await tab.expect("message.new")
        await eventually(lambda: job_done(node, message["id"]), what="the push job")
        assert pushed(world, web) == []  # active: skipped, remembered

        # He looks away with the message unread: it is pushed, once.
        await activity(tab, "idle")
        await eventually(lambda: pushed(world, web) == [message["id"]], what="the late push")
        assert rechecks() == before + 1
        # Back and away again: nothing new to push, nothing pushed twice.
        # (A change within a second of the last waits out the second.)
        await activity(tab, "active")
        await eventually(lambda: node.services.attention.online([bob.id]), what="active again")
        await activity(tab, "idle")
        await eventually(lambda: not_active(node, bob), what="bob idle again")
        later = (await api.send(alice, conv["id"], "hello?")).json()
        await eventually(
            lambda: pushed(world, web) == [message["id"], later["id"]], what="the next push"
        )
        assert rechecks() == before + 1
    finally:
        await tab.close()


async def not_active(node: Node, user: User) -> bool:
    return not await node.services.attention.online([user.id])


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "activity"},
        {"type": "activity", "state": None},
        {"type": "activity", "state": 1},
        {"type": "activity", "state": True},
        {"type": "activity", "state": ["idle"]},
        {"type": "activity", "state": "away"},
        {"type": "activity", "state": "IDLE"},
        {"type": "activity", "state": ""},
    ],
)
async def test_a_bad_activity_frame_is_answered_and_changes_nothing(
    node: Node, api: Client, frame: dict
) -> None:
    bob = await api.user()
    socket = await Socket.connect(node, bob)
    try:
        await socket.send(frame)
        error = await socket.expect("error")
        assert error["code"] == "invalid_field"
        assert "state" in error["message"]
        await socket.send({"type": "ping"})
        await socket.expect("pong")  # the socket stays open
        assert await node.services.attention.online([bob.id]) == {bob.id}
    finally:
        await socket.close()


async def test_counts_stay_right_through_repeats_and_closes(node: Node, api: Client) -> None:
    bob = await api.user()
    attention, presence = node.services.attention, node.services.presence
    tab, phone = await Socket.connect(node, bob), await Socket.connect(node, bob)
    await activity(tab, "idle")
    await activity(tab, "idle")  # the same again: nothing changes
    await activity(phone, "active")  # it already was
    assert await attention.online([bob.id]) == {bob.id}
    await activity(phone, "idle")
    assert await attention.online([bob.id]) == set()
    await activity(phone, "idle")
    # The tab comes back (a change within a second of its last waits out the second).
    await activity(tab, "active")
    await eventually(lambda: attention.online([bob.id]), what="bob active on the tab")

    await tab.hang_up()  # closed while active
    assert await attention.online([bob.id]) == set()
    assert await presence.online([bob.id]) == {bob.id}
    await phone.hang_up()  # closed while idle
    assert await presence.online([bob.id]) == set()
    assert await attention.online([bob.id]) == set()

    # Opened again: counted again, once.
    again = await Socket.connect(node, bob)
    await activity(again, "active")
    assert await attention.online([bob.id]) == {bob.id}
    await again.hang_up()
    assert await attention.online([bob.id]) == set()
    assert await presence.online([bob.id]) == set()


async def test_a_change_waiting_when_the_socket_closes_leaves_nothing(
    node: Node, api: Client
) -> None:
    bob = await api.user()
    attention = node.services.attention
    tab = await Socket.connect(node, bob)
    await activity(tab, "idle")
    await activity(tab, "active")  # within the second: waits
    await tab.hang_up()
    assert await attention.online([bob.id]) == set()
    assert await node.services.presence.online([bob.id]) == set()


class CountingPresence(LocalPresence):
    """The one-node presence, counting the changes it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0

    async def socket_opened(self, user_id: int) -> bool:
        self.changes += 1
        return await super().socket_opened(user_id)

    async def socket_closed(self, user_id: int) -> bool:
        self.changes += 1
        return await super().socket_closed(user_id)


async def test_a_flood_of_toggles_costs_a_change_per_interval() -> None:
    attention = CountingPresence()
    socket = SocketAttention(attention, 7, interval=0.5)
    await socket.open()
    assert attention.changes == 1
    for i in range(1001):
        await socket.report(i % 2 == 1)  # idle, active, idle, ... ends idle
    # The first change at once; the rest wait out the interval, and only the last counts.
    assert attention.changes == 2 and socket.pending
    await eventually(lambda: not socket.pending, what="the waiting change", every=0.05)
    assert attention.changes == 2  # idle was the last word, and already counted
    assert await attention.online([7]) == set()

    # A change is applied alone once its interval is over.
    await socket.report(True)
    await eventually(lambda: attention.online([7]), what="active again", every=0.05)
    assert attention.changes == 3
    # Closed with a change waiting: the change is dropped, the active socket uncounted.
    await socket.report(False)
    assert socket.pending and await attention.online([7]) == {7}
    await socket.close()
    assert attention.changes == 4 and not socket.pending
    assert await attention.online([7]) == set()
