"""Clearing: a read anywhere (REST, or a `read` frame on any node) takes a conversation's
notifications down from every device of the reader that was shown them, once per
device, through all three providers (their protocol-true fakes); so does deleting a
message. Nobody else's devices, and nothing for a read that did not move."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Row, select

from app.messenger.models import DeviceToken, PushAttempt
from app.messenger.push.clearing import Clearing
from app.messenger.push.service import PushService
from tests.cluster import Cluster, connect
from tests.fakes import Mode
from tests.helpers import Client, Node, User, eventually, make_settings, start_node
from tests.push_world import PushWorld, start_push_world

pytest_plugins = ["tests.cluster_fixtures"]

D = "/api/v1/messenger/devices/register"
C = "/api/v1/messenger/conversations"
PROVIDERS = ("web_push", "fcm", "apns")


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("push-clearing"))


@pytest.fixture(scope="module")
async def node(world: PushWorld, db_url: str) -> AsyncIterator[Node]:
    n = await start_node(make_settings(db_url, **world.settings))
    yield n
    await n.stop()


@pytest.fixture
async def api(node: Node, world: PushWorld) -> AsyncIterator[Client]:
    world.reset()
    client = Client(node)
    yield client
    await client.close()


async def add_device(api: Client, user: User, provider: str, token: str) -> str:
    platform = {"web_push": "web", "fcm": "android", "apns": "ios"}[provider]
    r = await api.http.post(
        D,
        json={"device_token": token, "platform": platform, "provider": provider},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["device_token_id"])


async def three_devices(api: Client, user: User, world: PushWorld) -> dict[str, str]:
    """A Web Push, an FCM and an APNs device of the user: provider -> token."""
    tokens = {
        "web_push": world.webpush.subscribe(),
        "fcm": world.fcm_token(),
        "apns": world.apns_token(),
    }
    for provider, token in tokens.items():
        await add_device(api, user, provider, token)
    return tokens


def clears(world: PushWorld, provider: str, token: str) -> list[dict[str, Any]]:
    """The clearing pushes a device accepted, as {conversation_id, seq, badge} (a
    deleted message's adding message_id and reason), each checked against its
    provider's form of a clear."""
    found = []
    for r in world.accepted(provider, token):
        if provider == "fcm":
            fields = r.message.get("data", {})
            if fields.get("type") != "clear":
                continue
            # A data message: nothing is shown, the app takes the notification down.
            assert "notification" not in r.message, r.message
            assert "notification" not in r.message.get("android", {}), r.message
        else:
            fields = r.payload
            if fields.get("type") != "clear":
                continue
            if provider == "apns":
                assert r.headers["apns-push-type"] == "background", r.headers
                assert r.headers.get("apns-priority") == "5", r.headers
                aps = fields["aps"]
                assert aps.get("content-available") == 1, fields
                assert "alert" not in aps and "sound" not in aps, fields
                fields = {**fields, "badge": aps["badge"]}  # the app icon's, set silently
            else:
                # The service worker closes the notifications with the message's tag.
                shown = world.accepted(provider, token)
                tags = {p.payload.get("tag") for p in shown if p.payload.get("type") != "clear"}
                assert fields["tag"] in tags - {None}, fields
        clear = {
            "conversation_id": fields["conversation_id"],
            "seq": int(fields["seq"]),  # FCM data values are strings
            "badge": int(fields["badge"]),
        }
        if "reason" in fields or "message_id" in fields:
            clear |= {"message_id": fields["message_id"], "reason": fields["reason"]}
        found.append(clear)
    return found


def every_clear(world: PushWorld, tokens: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {provider: clears(world, provider, token) for provider, token in tokens.items()}


def messages_shown(world: PushWorld, provider: str, token: str) -> int:
    """Accepted pushes that are not clears."""
    return len(world.accepted(provider, token)) - len(clears(world, provider, token))


async def delivered(node: Node, message_id: str, count: int) -> list[Row[Any]]:
    """The message's delivered pushes, once all `count` are recorded."""

    async def rows() -> list[Row[Any]] | None:
        async with node.services.engine.connect() as conn:
            found = list(
                await conn.execute(
                    select(PushAttempt).where(
                        PushAttempt.message_id == message_id, PushAttempt.outcome == "delivered"
                    )
                )
            )
        return found if len(found) >= count else None

    found: list[Row[Any]] = await eventually(rows, what=f"{count} pushes of {message_id}")
    assert len(found) == count
    return found


async def cleared(node: Node, message_id: str) -> dict[str, bool]:
    """device id -> whether its push of the message is cleared."""
    async with node.services.engine.connect() as conn:
        rows = await conn.execute(
            select(PushAttempt.device_id, PushAttempt.cleared_at).where(
                PushAttempt.message_id == message_id
            )
        )
        return {r.device_id: r.cleared_at is not None for r in rows}


async def send(api: Client, user: User, conversation_id: str, content: str) -> dict[str, Any]:
    r = await api.send(user, conversation_id, content)
    assert r.status_code == 201, r.text
    message: dict[str, Any] = r.json()
    return message


async def read(api: Client, user: User, conversation_id: str, seq: int) -> None:
    r = await api.http.post(f"{C}/{conversation_id}/read", json={"seq": seq}, headers=user.headers)
    assert r.status_code == 200, r.text


async def settled(clearing: Clearing) -> None:
    await eventually(lambda: clearing.pending == 0, what="the clearings to finish")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_read_clears_each_device_once_up_to_its_seq(
    api: Client, node: Node, world: PushWorld
) -> None:
    alice, bob = await api.user(), await api.user()
    conv = (await api.conversation(alice, bob))["id"]
    tokens = await three_devices(api, bob, world)
    # Each pushed before the next is sent (one batch would push the newest alone).
    first = await send(api, alice, conv, "one")
    for row in await delivered(node, first["id"], 3):
        assert (row.conversation_id, row.seq) == (conv, first["seq"])
    second = await send(api, alice, conv, "two")
    for row in await delivered(node, second["id"], 3):
        assert (row.conversation_id, row.seq) == (conv, second["seq"])
    # Registered after the pushes: it was shown nothing, and is told nothing.
    late = world.webpush.subscribe()
    await add_device(api, bob, "web_push", late)
    clearing = node.services.clearing
    sent = {
        p: metric("messenger_push_clears_total", provider=p, outcome="delivered") for p in PROVIDERS
    }

    # Reading the first message clears what was shown of it; the badge counts the second.
    await read(api, bob, conv, 1)
    await settled(clearing)
    one = {"conversation_id": conv, "seq": 1, "badge": 1}
    assert every_clear(world, tokens) == {p: [one] for p in PROVIDERS}
    assert set((await cleared(node, first["id"])).values()) == {True}
    assert set((await cleared(node, second["id"])).values()) == {False}

    # The same mark again did not move: nothing is queued, nothing sent.
    await read(api, bob, conv, 1)
    assert clearing.pending == 0
    assert every_clear(world, tokens) == {p: [one] for p in PROVIDERS}

    # Reading on: one more clear per device, the badge now at zero.
    await read(api, bob, conv, 2)
    await settled(clearing)
    two = {"conversation_id": conv, "seq": 2, "badge": 0}
    assert every_clear(world, tokens) == {p: [one, two] for p in PROVIDERS}
    assert set((await cleared(node, second["id"])).values()) == {True}
    await read(api, bob, conv, 2)
    assert clearing.pending == 0
    assert every_clear(world, tokens) == {p: [one, two] for p in PROVIDERS}
    assert world.accepted("web_push", late) == []
    for p in PROVIDERS:
        assert messages_shown(world, p, tokens[p]) == 2
        after = metric("messenger_push_clears_total", provider=p, outcome="delivered")
        assert after == sent[p] + 2


async def test_a_read_clears_only_the_readers_devices(
    api: Client, node: Node, world: PushWorld
) -> None:
    alice, bob, carol = await api.user(), await api.user(), await api.user()
    conv = (await api.conversation(alice, bob, carol, title="Crew"))["id"]
    bob_web = world.webpush.subscribe()
    await add_device(api, bob, "web_push", bob_web)
    carol_tokens = {"web_push": world.webpush.subscribe(), "fcm": world.fcm_token()}
    for provider, token in carol_tokens.items():
        await add_device(api, carol, provider, token)
    message = await send(api, alice, conv, "hello both")
    await delivered(node, message["id"], 3)

    await read(api, carol, conv, 1)
    await settled(node.services.clearing)
    done = {"conversation_id": conv, "seq": 1, "badge": 0}
    assert every_clear(world, carol_tokens) == {"web_push": [done], "fcm": [done]}
    # Bob's notification stays: he has not read it.
    assert clears(world, "web_push", bob_web) == []
    assert messages_shown(world, "web_push", bob_web) == 1
    states = await cleared(node, message["id"])
    async with node.services.engine.connect() as conn:
        owners = dict(
            (
                await conn.execute(
                    select(PushAttempt.device_id, PushAttempt.user_id).where(
                        PushAttempt.message_id == message["id"]
                    )
                )
            ).all()
        )
    assert {owners[d]: c for d, c in states.items()} == {bob.id: False, carol.id: True}

    # The sender reading (a mark that moves for alice) clears nothing of anyone's.
    await read(api, alice, conv, 1)
    await settled(node.services.clearing)
    assert clears(world, "web_push", bob_web) == []

    await read(api, bob, conv, 1)
    await settled(node.services.clearing)
    assert clears(world, "web_push", bob_web) == [done]
    assert every_clear(world, carol_tokens) == {"web_push": [done], "fcm": [done]}


async def test_a_deleted_messages_notification_is_cleared(
    api: Client, node: Node, world: PushWorld
) -> None:
    alice, bob = await api.user(), await api.user()
    conv = (await api.conversation(alice, bob))["id"]
    tokens = await three_devices(api, bob, world)
    first = await send(api, alice, conv, "keep me")
    await delivered(node, first["id"], 3)
    second = await send(api, alice, conv, "oops, wrong chat")
    await delivered(node, second["id"], 3)
    clearing = node.services.clearing

    clearing.message_deleted(conv, second["id"])
    await settled(clearing)
    # It names the message (a client closes only a notification showing it), and its
    # seq is that message's, no read mark.
    gone = {
        "conversation_id": conv,
        "seq": 2,
        "badge": 2,
        "message_id": second["id"],
        "reason": "deleted",
    }
    assert every_clear(world, tokens) == {p: [gone] for p in PROVIDERS}
    assert set((await cleared(node, second["id"])).values()) == {True}
    assert set((await cleared(node, first["id"])).values()) == {False}

    # Cleared once: deleting it again (or a message nobody was pushed) sends nothing.
    clearing.message_deleted(conv, second["id"])
    clearing.message_deleted(conv, "00000000-0000-0000-0000-000000000000")
    await settled(clearing)
    assert every_clear(world, tokens) == {p: [gone] for p in PROVIDERS}


async def test_a_read_while_the_push_is_in_flight_still_clears_it(
    api: Client, node: Node, world: PushWorld
) -> None:
    alice, bob = await api.user(), await api.user()
    conv = (await api.conversation(alice, bob))["id"]
    # A slow push service: it asks twice to come back in a second (Retry-After: 1).
    web = world.webpush.subscribe(Mode.THROTTLED, Mode.THROTTLED, Mode.OK)
    await add_device(api, bob, "web_push", web)
    message = await send(api, alice, conv, "read me before you show me")

    await eventually(lambda: world.webpush.received_for(web), what="the first try")
    await read(api, bob, conv, 1)
    # Nothing recorded yet: the read's own clearing finds nothing to take down.
    assert await cleared(node, message["id"]) == {}

    # Once its outcome is recorded, the push is found read already, and cleared.
    await eventually(lambda: clears(world, "web_push", web), what="a clear after the late push")
    await settled(node.services.clearing)
    assert clears(world, "web_push", web) == [{"conversation_id": conv, "seq": 1, "badge": 0}]
    assert [r.status for r in world.webpush.received_for(web)] == [429, 429, 201, 201]
    assert set((await cleared(node, message["id"])).values()) == {True}


async def test_a_burst_of_marks_is_one_clearing_and_a_full_queue_drops(
    api: Client, node: Node, world: PushWorld
) -> None:
    alice, bob, carol = await api.user(), await api.user(), await api.user()
    conv = (await api.conversation(alice, bob, carol, title="Burst"))["id"]
    bob_web, carol_web = world.webpush.subscribe(), world.webpush.subscribe()
    await add_device(api, bob, "web_push", bob_web)
    await add_device(api, carol, "web_push", carol_web)
    first = await send(api, alice, conv, "a")
    await delivered(node, first["id"], 2)
    second = await send(api, alice, conv, "b")
    await delivered(node, second["id"], 2)

    services = node.services
    clearing = Clearing(services.settings, services.engine, services.push, queue_limit=1)
    dropped = metric("messenger_push_clears_dropped_total")
    try:
        # Marks as a scrolling client makes them: one clearing, up to the highest.
        clearing.read_moved(bob.id, conv, 1)
        clearing.read_moved(bob.id, conv, 2)
        clearing.read_moved(bob.id, conv, 1)
        # The queue holds one: carol's is dropped (her next read clears it).
        clearing.read_moved(carol.id, conv, 2)
        assert clearing.pending == 1
        assert metric("messenger_push_clears_dropped_total") == dropped + 1
        await settled(clearing)
        assert clears(world, "web_push", bob_web) == [
            {"conversation_id": conv, "seq": 2, "badge": 2}
        ]
        assert clears(world, "web_push", carol_web) == []
        assert set((await cleared(node, second["id"])).values()) == {True, False}
    finally:
        await clearing.stop()

    # Carol's read clears hers.
    await read(api, carol, conv, 2)
    await settled(services.clearing)
    assert clears(world, "web_push", carol_web) == [{"conversation_id": conv, "seq": 2, "badge": 0}]


async def test_a_provider_off_is_skipped_and_a_dead_token_deactivates(
    api: Client, node: Node, world: PushWorld
) -> None:
    alice, bob = await api.user(), await api.user()
    conv = (await api.conversation(alice, bob))["id"]
    tokens = await three_devices(api, bob, world)
    # FCM takes the message, then says the token is gone.
    world.fcm.script(tokens["fcm"], Mode.OK, Mode.DEAD)
    message = await send(api, alice, conv, "hi")
    await delivered(node, message["id"], 3)

    # A node where APNs is off: its device is left alone (and left uncleared).
    services = node.services
    started = services.push.providers
    push = PushService(
        services.settings,
        services.engine,
        services.presence,
        providers={p: started[p] for p in ("web_push", "fcm")},
    )
    clearing = Clearing(services.settings, services.engine, push)
    try:
        clearing.read_moved(bob.id, conv, 1)
        await settled(clearing)
    finally:
        await clearing.stop()
    one = {"conversation_id": conv, "seq": 1, "badge": 1}  # bob's mark is still at 0
    assert clears(world, "web_push", tokens["web_push"]) == [one]
    assert clears(world, "apns", tokens["apns"]) == []
    [refused] = [r for r in world.fcm.received_for(tokens["fcm"]) if r.status == 404]
    assert refused.message["data"]["type"] == "clear"
    async with services.engine.connect() as conn:
        active = dict(
            (
                await conn.execute(
                    select(DeviceToken.provider, DeviceToken.is_active).where(
                        DeviceToken.user_id == bob.id
                    )
                )
            ).all()
        )
        shown = dict(
            (
                await conn.execute(
                    select(PushAttempt.provider, PushAttempt.cleared_at).where(
                        PushAttempt.message_id == message["id"]
                    )
                )
            ).all()
        )
    assert active == {"web_push": True, "fcm": False, "apns": True}
    assert {p: at is not None for p, at in shown.items()} == {
        "web_push": True,
        "fcm": True,
        "apns": False,
    }

    # The node's own clearing (every provider on) takes what is left: APNs' alone.
    await read(api, bob, conv, 1)
    await settled(services.clearing)
    assert clears(world, "apns", tokens["apns"]) == [
        {"conversation_id": conv, "seq": 1, "badge": 0}
    ]
    assert clears(world, "web_push", tokens["web_push"]) == [one]
    assert set((await cleared(node, message["id"])).values()) == {True}


async def test_reads_on_either_node_clear_every_device_once(
    cluster: Cluster, world: PushWorld
) -> None:
    world.reset()
    n1, n2 = await cluster.node(**world.settings), await cluster.node(**world.settings)
    api = Client(n1)
    try:
        alice, bob = await api.user(), await api.user()
        conv = (await api.conversation(alice, bob))["id"]
        tokens = await three_devices(api, bob, world)
        first = await send(api, alice, conv, "one")
        await delivered(n1, first["id"], 3)
        second = await send(api, alice, conv, "two")
        await delivered(n1, second["id"], 3)

        # REST on the first node.
        await read(api, bob, conv, 1)
        await settled(n1.services.clearing)
        one = {"conversation_id": conv, "seq": 1, "badge": 1}
        assert every_clear(world, tokens) == {p: [one] for p in PROVIDERS}

        # A read frame on a socket of the other node.
        socket = await connect(n2, bob)
        try:
            await socket.send({"type": "read", "conversation_id": conv, "seq": 2})
            await socket.expect("read", user_id=bob.id, seq=2)
            await settled(n2.services.clearing)
        finally:
            await socket.close()
        two = {"conversation_id": conv, "seq": 2, "badge": 0}
        assert every_clear(world, tokens) == {p: [one, two] for p in PROVIDERS}
        assert set((await cleared(n1, first["id"])).values()) == {True}
        assert set((await cleared(n1, second["id"])).values()) == {True}

        # The same mark again, on either node: nothing.
        await read(api, bob, conv, 2)
        api2 = Client(n2)
        await read(api2, bob, conv, 2)
        await api2.close()
        assert n1.services.clearing.pending == n2.services.clearing.pending == 0
        assert every_clear(world, tokens) == {p: [one, two] for p in PROVIDERS}
    finally:
        await api.close()
