"""The push fallback end to end: a real node on PostgreSQL, real sockets, and the
three providers talking to local fakes of FCM, APNs and a Web Push service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Row, select

from app.db import utcnow
from app.messenger.models import PushAttempt, PushDecision
from app.messenger.push.history import message_notification_id
from app.messenger.writer import MessageWriter
from tests.fakes import Mode
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

D = "/api/v1/messenger/devices"
C = "/api/v1/messenger/conversations"


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("push"))


@pytest.fixture(scope="module")
async def push_node(world: PushWorld, postgresql_url: str) -> AsyncIterator[Node]:
    node = await start_node(make_settings(postgresql_url, **world.settings))
    yield node
    await node.stop()


@pytest.fixture
async def api(push_node: Node, world: PushWorld) -> AsyncIterator[Client]:
    world.reset()
    client = Client(push_node)
    yield client
    await client.close()


async def add_device(api: Client, user: User, provider: str, token: str) -> str:
    platform = {"web_push": "web", "fcm": "android", "apns": "ios"}[provider]
    r = await api.http.post(
        f"{D}/register",
        json={"device_token": token, "platform": platform, "provider": provider},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["device_token_id"])


async def job_exists(node: Node, message_id: str) -> bool:
    return await push_job_of(node.services.engine, message_id) is not None


async def job_done(node: Node, message_id: str) -> bool:
    """The message's push job is gone: every device it planned for has an outcome, and
    those outcomes are recorded (in the same transaction)."""
    return not await job_exists(node, message_id)


async def attempts_for(node: Node, message_id: str) -> list[Row[tuple[PushAttempt]]]:
    async with node.services.engine.connect() as conn:
        return list(
            await conn.execute(select(PushAttempt).where(PushAttempt.message_id == message_id))
        )


def metric(name: str, **labels: str) -> float:
    """A metric's value in this process (every node of a test shares the registry)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_offline_user_gets_a_push_on_every_device(api: Client, world: PushWorld) -> None:
    alice = await api.user(display_name="Alice")
    bob = await api.user(display_name="Bob")
    conv = await api.conversation(alice, bob)
    web, fcm, apns = world.webpush.subscribe(), world.fcm_token(), world.apns_token()
    for provider, token in (("web_push", web), ("fcm", fcm), ("apns", apns)):
        await add_device(api, bob, provider, token)

    sock = await Socket.connect(api.node, alice)
    await sock.send(
        {
            "type": "message.send",
            "conversation_id": conv["id"],
            "content": "Lunch\nat  noon?",
            "client_msg_id": "p1",
        }
    )
    message = (await sock.expect("message.ack"))["message"]
    await sock.close()
    await eventually(
        lambda: (
            world.accepted("web_push", web)
            and world.accepted("fcm", fcm)
            and world.accepted("apns", apns)
        )
    )

    data = {
        "type": "message.new",
        "conversation_id": conv["id"],
        "message_id": message["id"],
        "sender_id": alice.id,
        "seq": 1,
        # Bob's notification of it (the history's id, the same on every device).
        "notification_id": message_notification_id(bob.id, message["id"]),
    }
    [w] = world.accepted("web_push", web)
    # What the contract names, as it names it (the rest is in test_push_payloads).
    assert {k: w.payload[k] for k in ("title", "body", "data", "tag", "url", "badge")} == {
        "title": "Alice • Alice",
        "body": "Lunch at noon?",
        "data": data,
        "tag": conv["id"],
        "url": f"{api.node.services.settings.public_base_url}/?conversation={conv['id']}",
        "badge": 1,
    }
    [f] = world.accepted("fcm", fcm)
    assert f.message["notification"] == {"title": "Alice • Alice", "body": "Lunch at noon?"}
    assert f.message["data"] == {**{k: str(v) for k, v in data.items()}, "badge": "1"}
    assert f.message["android"]["notification"]["tag"] == conv["id"]
    [a] = world.accepted("apns", apns)
    assert a.payload["aps"]["alert"] == {"title": "Alice • Alice", "body": "Lunch at noon?"}
    assert a.payload["aps"]["thread-id"] == conv["id"] and a.payload["aps"]["badge"] == 1
    assert a.payload["seq"] == 1 and a.payload["sender_id"] == alice.id
    assert a.headers["apns-push-type"] == "alert" and a.headers["apns-priority"] == "10"

    # Outcomes are recorded, devices marked used, and the job is done.
    await eventually(lambda: job_done(api.node, message["id"]), what="the push job to finish")
    rows = await attempts_for(api.node, message["id"])
    assert sorted((r.provider, r.outcome, r.attempts) for r in rows) == [
        ("apns", "delivered", 1),
        ("fcm", "delivered", 1),
        ("web_push", "delivered", 1),
    ]
    devices = (await api.http.get(D, headers=bob.headers)).json()["devices"]
    assert all(d["last_used_at"] > d["registered_at"] for d in devices)


async def test_a_burst_is_one_push_per_device_saying_how_many(
    api: Client, world: PushWorld
) -> None:
    alice = await api.user(display_name="Alice")
    bob = await api.user(display_name="Bob")
    conv = await api.conversation(alice, bob)
    web, fcm, apns = world.webpush.subscribe(), world.fcm_token(), world.apns_token()
    for provider, token in (("web_push", web), ("fcm", fcm), ("apns", apns)):
        await add_device(api, bob, provider, token)

    # Three sends committed in one batch (queued before the writer runs), so planned in
    # one batch too: pushes racing each other could leave an older one shown last.
    writer = api.node.services.writer
    participants = frozenset(conv["participant_ids"])
    futures = [
        writer.submit(conv["id"], alice.id, text, f"burst-{i}", participants)
        for i, text in enumerate(("first", "second", "third"))
    ]
    burst = [message for message, _ in await asyncio.gather(*futures)]
    await eventually(lambda: job_done(api.node, burst[-1]["id"]), what="the push job")

    latest = burst[-1]
    [w] = world.accepted("web_push", web)
    assert (w.payload["data"]["message_id"], w.payload["count"]) == (latest["id"], 3)
    assert w.payload["body"] == "3 new messages: third"
    [f] = world.accepted("fcm", fcm)
    assert f.message["data"]["message_id"] == latest["id"]
    assert f.message["notification"]["body"] == "3 new messages: third"
    [a] = world.accepted("apns", apns)
    assert (a.payload["message_id"], a.payload["aps"]["alert"]["body"]) == (
        latest["id"],
        "3 new messages: third",
    )
    # Only the push made is an outcome; all three are decided sent, as one run.
    for older in burst[:-1]:
        assert await attempts_for(api.node, older["id"]) == []
    assert len(await attempts_for(api.node, latest["id"])) == 3
    async with api.node.services.engine.connect() as conn:
        runs = [
            (r.first_seq, r.last_seq, r.reason)
            for r in await conn.execute(
                select(PushDecision).where(
                    PushDecision.user_id == bob.id, PushDecision.conversation_id == conv["id"]
                )
            )
        ]
    assert runs == [(1, 3, "sent")]


async def test_only_offline_unmuted_participants_are_pushed(api: Client, world: PushWorld) -> None:
    sender, online, muted, snoozed, disabled, woke, plain = [await api.user() for _ in range(7)]
    conv = await api.conversation(
        sender, online, muted, snoozed, disabled, woke, plain, title="Crew"
    )
    tokens = {}
    for user in (sender, online, muted, snoozed, disabled, woke, plain):
        tokens[user.id] = world.webpush.subscribe()
        await add_device(api, user, "web_push", tokens[user.id])
    settings = f"{C}/{conv['id']}/settings"
    now = utcnow()
    await api.http.put(settings, json={"muted": True}, headers=muted.headers)
    await api.http.put(
        settings,
        json={"mute_until": (now + timedelta(hours=1)).isoformat()},
        headers=snoozed.headers,
    )
    await api.http.put(settings, json={"push_enabled": False}, headers=disabled.headers)
    await api.http.put(
        settings,
        json={"mute_until": (now - timedelta(minutes=1)).isoformat()},
        headers=woke.headers,
    )

    online_sock = await Socket.connect(api.node, online)
    try:
        r = await api.send(sender, conv["id"], "standup in 5")
        assert r.status_code == 201
        await online_sock.expect("message.new")
        # Once the job is gone, every push it planned was made.
        await eventually(lambda: job_done(api.node, r.json()["id"]), what="the push job")
        pushed = {uid for uid, t in tokens.items() if world.webpush.received_for(t)}
        assert pushed == {woke.id, plain.id}
        assert (
            world.accepted("web_push", tokens[plain.id])[0].payload["title"]
            == f"{sender.display_name} • Crew"
        )
    finally:
        await online_sock.close()


async def test_dead_tokens_deactivate_their_devices(api: Client, world: PushWorld) -> None:
    a, b = await api.user(), await api.user()
    conv = await api.conversation(a, b)
    web, fcm, apns = world.webpush.subscribe(Mode.DEAD), world.fcm_token(), world.apns_token()
    world.fcm.script(fcm, Mode.DEAD)
    world.apns.script(apns, Mode.BAD_TOKEN)
    for provider, token in (("web_push", web), ("fcm", fcm), ("apns", apns)):
        await add_device(api, b, provider, token)
    message = (await api.send(a, conv["id"], "anyone there?")).json()

    async def all_inactive() -> bool:
        devices = (await api.http.get(D, headers=b.headers)).json()["devices"]
        return not any(d["is_active"] for d in devices)

    await eventually(all_inactive, what="every device deactivated")
    rows = await attempts_for(api.node, message["id"])
    assert sorted((r.provider, r.outcome) for r in rows) == [
        ("apns", "dead_token"),
        ("fcm", "dead_token"),
        ("web_push", "dead_token"),
    ]
    # An inactive device gets nothing more.
    world.reset()
    again = (await api.send(a, conv["id"], "hello?")).json()
    await eventually(lambda: job_done(api.node, again["id"]), what="the push job")
    assert not await attempts_for(api.node, again["id"])
    assert (
        not world.webpush.received
        and not world.fcm.received_for(fcm)
        and not world.apns.received_for(apns)
    )


async def test_throttled_then_delivered_with_the_same_notification(
    api: Client, world: PushWorld
) -> None:
    a, b = await api.user(), await api.user()
    conv = await api.conversation(a, b)
    web, fcm, apns = (
        world.webpush.subscribe(Mode.THROTTLED, Mode.OK),
        world.fcm_token(),
        world.apns_token(),
    )
    world.fcm.script(fcm, Mode.THROTTLED, Mode.OK)
    world.apns.script(apns, Mode.THROTTLED, Mode.OK)
    for provider, token in (("web_push", web), ("fcm", fcm), ("apns", apns)):
        await add_device(api, b, provider, token)
    message = (await api.send(a, conv["id"], "retry me")).json()
    await eventually(
        lambda: (
            world.accepted("web_push", web)
            and world.accepted("fcm", fcm)
            and world.accepted("apns", apns)
        )
    )
    # Two tries each; the APNs retry carries the same apns-id, Web Push the same Topic.
    tries = world.apns.received_for(apns)
    assert [t.status for t in tries] == [429, 200]
    assert tries[0].headers["apns-id"] == tries[1].headers["apns-id"]
    # A conversation's notifications replace each other: one collapse id for all.
    collapse = message["conversation_id"].replace("-", "")
    assert {t.headers["apns-collapse-id"] for t in tries} == {collapse}
    fcm_tries = world.fcm.received_for(fcm)
    assert {t.message["apns"]["headers"]["apns-collapse-id"] for t in fcm_tries} == {collapse}
    web_tries = world.webpush.received_for(web)
    assert [t.status for t in web_tries] == [429, 201]
    assert web_tries[0].headers["Topic"] == web_tries[1].headers["Topic"]
    await eventually(lambda: job_done(api.node, message["id"]), what="the push job")
    rows = await attempts_for(api.node, message["id"])
    assert sorted((r.provider, r.outcome, r.attempts) for r in rows) == [
        ("apns", "delivered", 2),
        ("fcm", "delivered", 2),
        ("web_push", "delivered", 2),
    ]


async def test_down_for_good_gives_up_and_keeps_the_device(api: Client, world: PushWorld) -> None:
    a, b = await api.user(), await api.user()
    conv = await api.conversation(a, b)
    fcm = world.fcm_token()
    world.fcm.script(fcm, Mode.DOWN)
    await add_device(api, b, "fcm", fcm)
    message = (await api.send(a, conv["id"], "is FCM up?")).json()
    [row] = await eventually(lambda: attempts_for(api.node, message["id"]), what="an outcome")
    assert (row.outcome, row.attempts) == ("gave_up", 3)
    assert len(world.fcm.received_for(fcm)) == 3
    [device] = (await api.http.get(D, headers=b.headers)).json()["devices"]
    assert device["is_active"] is True


async def test_hanging_provider_never_holds_up_the_socket(api: Client, world: PushWorld) -> None:
    a, b = await api.user(), await api.user()
    conv = await api.conversation(a, b)
    apns = world.apns_token()
    world.apns.script(apns, Mode.HANG)
    await add_device(api, b, "apns", apns)
    sock = await Socket.connect(api.node, a)
    try:
        acks = []
        for i in range(5):
            await sock.send(
                {
                    "type": "message.send",
                    "conversation_id": conv["id"],
                    "content": f"m{i}",
                    "client_msg_id": f"h{i}",
                }
            )
            acks.append((await sock.expect("message.ack", timeout=2))["message"])
        # Every send was acknowledged while the first push is still hanging.
        assert await job_exists(api.node, acks[0]["id"])
        assert [m["seq"] for m in acks] == [1, 2, 3, 4, 5]
    finally:
        await sock.close()
    # Messages planned in one batch push the newest alone: whichever were pushed end up
    # given up, and the newest is among them.
    await eventually(lambda: attempts_for(api.node, acks[-1]["id"]), what="an outcome")
    for message in acks:
        await eventually(lambda m=message: job_done(api.node, m["id"]), what="the push jobs")
    rows = [r for m in acks for r in await attempts_for(api.node, m["id"])]
    assert rows and {r.outcome for r in rows} == {"gave_up"}


async def test_metrics_count_pushes(api: Client, world: PushWorld) -> None:
    a, b = await api.user(), await api.user()
    conv = await api.conversation(a, b)
    web = world.webpush.subscribe()
    await add_device(api, b, "web_push", web)
    fcm = world.fcm_token()
    world.fcm.script(fcm, Mode.DOWN)
    await add_device(api, b, "fcm", fcm)

    def counts() -> list[float]:
        return [
            metric("messenger_pushes_total", provider="web_push", outcome="delivered"),
            metric("messenger_pushes_total", provider="fcm", outcome="gave_up"),
            metric("messenger_push_commit_to_accepted_seconds_count", provider="web_push"),
        ]

    before = counts()
    message = (await api.send(a, conv["id"], "count me")).json()
    await eventually(lambda: job_done(api.node, message["id"]), what="the push job")
    assert counts() == [n + 1 for n in before]
    text = (await api.http.get("/metrics")).text
    assert 'messenger_pushes_total{outcome="gave_up",provider="fcm"}' in text


async def test_vapid_public_key(api: Client, world: PushWorld) -> None:
    a = await api.user()
    r = await api.http.get("/api/v1/messenger/push/vapid-public-key", headers=a.headers)
    assert r.json() == {"public_key": world.settings["vapid_public_key"]}


async def test_push_work_left_by_a_dead_node_is_sent_once(
    world: PushWorld, postgresql_url: str, push_node: Node
) -> None:
    world.reset()
    client = Client(push_node)
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    web = world.webpush.subscribe()
    await add_device(client, b, "web_push", web)
    await client.close()

    # A node commits a message and dies before pushing: its job's lease runs out.
    writer = MessageWriter(push_node.services.engine, node_id="dead-node", push_lease_seconds=-1)
    await writer.start()
    message, _ = await writer.submit(
        conv["id"], a.id, "sent before the crash", "crash-1", frozenset(conv["participant_ids"])
    )
    await writer.stop()
    assert await job_exists(push_node, message["id"])
    recovered = metric("messenger_push_jobs_recovered_total")

    # Two fresh nodes start; both look for orphaned work, only one may send it.
    fast = {**world.settings, "push_recovery_interval_seconds": 0.1}
    nodes = await asyncio.gather(
        *(start_node(make_settings(postgresql_url, **fast)) for _ in range(2))
    )
    try:
        await eventually(lambda: job_done(push_node, message["id"]), what="the push job")
        # Taken up by recovery (other tests' orphaned jobs may be claimed in the same run,
        # so the count can grow by more than this one); pushed exactly once.
        assert metric("messenger_push_jobs_recovered_total") > recovered
        [push] = world.accepted("web_push", web)
        assert push.payload["data"]["message_id"] == message["id"]
        assert len(await attempts_for(push_node, message["id"])) == 1
    finally:
        for node in nodes:
            await node.stop()
