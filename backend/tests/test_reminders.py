"""Reminders: setting one on a visible message only, listing and cancelling, the
`reminder` frame to a user online, the push to one offline (in the notification
history as kind "reminder"), a deleted message, and durability: a dead node's claim
taken over, a restart with reminders pending."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from app.db import utcnow
from app.messenger.db_clock import database_now
from app.messenger.models import (
    DeviceToken,
    Participant,
    PushAttempt,
    Reminder,
    ScheduledMessage,
)
from app.messenger.reminders import reminder_notification_id
from app.messenger.timers import IN_FLIGHT
from tests.conftest import create_pg_database, drop_pg_database, migrate, migrated_database
from tests.helpers import Client, Node, Socket, User, eventually, make_settings, start_node
from tests.helpers import iso_from_now as at
from tests.push_world import PushWorld, start_push_world

R = "/api/v1/me/reminders"
D = "/api/v1/messenger/devices"


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("reminders"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def own_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A database of this module's own: no node of another module fires its timers (nodes
    without Redis deliver live only to their own sockets)."""
    async with migrated_database(request.param, tmp_path_factory.mktemp("reminders-db")) as url:
        yield url


@pytest.fixture(scope="module")
async def own_node(own_url: str, world: PushWorld) -> AsyncIterator[Node]:
    node = await start_node(make_settings(own_url, **world.settings))
    yield node
    await node.stop()


@pytest.fixture
async def api(own_node: Node) -> AsyncIterator[Client]:
    client = Client(own_node)
    yield client
    await client.close()


async def remind(api: Client, user: User, message_id: str, when: str) -> Any:
    return await api.http.post(
        R, json={"message_id": message_id, "remind_at": when}, headers=user.headers
    )


async def sent(api: Client, user: User, conversation_id: str, text: str) -> dict[str, Any]:
    r = await api.send(user, conversation_id, text)
    assert r.status_code == 201, r.text
    message: dict[str, Any] = r.json()
    return message


async def status_of(node: Node, reminder_id: str) -> str | None:
    async with node.services.engine.connect() as conn:
        status: str | None = await conn.scalar(
            select(Reminder.status).where(Reminder.id == reminder_id)
        )
    return status


async def test_set_list_cancel_own_only(api: Client) -> None:
    alice, bob, eve = await api.user(), await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    message = await sent(api, alice, conv["id"], "remember me")
    later = await remind(api, bob, message["id"], at(7200))
    sooner = await remind(api, bob, message["id"], at(3600))
    assert later.status_code == sooner.status_code == 201, later.text
    assert set(sooner.json()) >= {"id", "remind_at"}
    listed = (await api.http.get(R, headers=bob.headers)).json()["reminders"]
    # Soonest first, each with its message.
    assert [r["id"] for r in listed] == [sooner.json()["id"], later.json()["id"]]
    assert listed[0]["message"]["content"] == "remember me"
    assert (await api.http.get(R, headers=eve.headers)).json()["reminders"] == []
    # Someone else's reminder is unknown to them.
    r = await api.http.delete(f"{R}/{later.json()['id']}", headers=eve.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "reminder_not_found"
    r = await api.http.delete(f"{R}/{later.json()['id']}", headers=bob.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = await api.http.delete(f"{R}/{later.json()['id']}", headers=bob.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "reminder_not_pending"
    listed = (await api.http.get(R, headers=bob.headers)).json()["reminders"]
    assert [r["id"] for r in listed] == [sooner.json()["id"]]


async def test_only_visible_messages_and_sane_times(
    api: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, eve, carol = [await api.user() for _ in range(4)]
    conv = await api.conversation(alice, bob)
    message = await sent(api, alice, conv["id"], "private")
    # Another user's message (a conversation they are not in) is no message to them.
    r = await remind(api, eve, message["id"], at(60))
    assert r.status_code == 404 and r.json()["error"]["code"] == "message_not_found"
    r = await remind(api, eve, str(uuid.uuid4()), at(60))
    assert r.status_code == 404
    # Nor one from before they joined a group.
    group = await api.conversation(alice, bob, title="g")
    early = await sent(api, alice, group["id"], "before carol")
    r = await api.http.post(
        f"/api/v1/messenger/conversations/{group['id']}/participants",
        json={"user_ids": [carol.id]},
        headers=alice.headers,
    )
    assert r.status_code in (200, 201), r.text
    r = await remind(api, carol, early["id"], at(60))
    assert r.status_code == 404
    after = await sent(api, alice, group["id"], "after carol")
    assert (await remind(api, carol, after["id"], at(60))).status_code == 201
    for when in (at(-1), at(366 * 86400), "2030-01-01T08:00:00", "soon"):
        r = await remind(api, bob, message["id"], when)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field", when
    r = await api.http.post(R, json={"remind_at": at(60)}, headers=bob.headers)
    assert r.status_code == 422
    monkeypatch.setattr(api.node.services.settings, "max_reminders_per_user", 1)
    assert (await remind(api, bob, message["id"], at(60))).status_code == 201
    r = await remind(api, bob, message["id"], at(60))
    assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_reminders"


async def test_online_user_gets_a_reminder_frame_and_no_push(api: Client, world: PushWorld) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    message = await sent(api, alice, conv["id"], "call mom")
    token = world.webpush.subscribe()
    await _add_device(api, bob, "web_push", token)
    socket = await Socket.connect(api.node, bob)
    try:
        when = at(1.5)
        reminder = (await remind(api, bob, message["id"], when)).json()
        frame = await socket.expect("reminder", timeout=6, id=reminder["id"])
        fired = utcnow()
        assert frame["message"]["id"] == message["id"]
        assert frame["message"]["content"] == "call mom"
        due = datetime.fromisoformat(when)
        assert due <= fired < due + timedelta(seconds=2.5)
        # Marked fired once delivered (frame first, then the mark).
        await eventually(lambda: _is_fired(api.node, reminder["id"]), what="marked fired")
        # Fires once: no second frame before the answer to a ping sent now.
        await socket.nothing("reminder")
    finally:
        await socket.close()
    # (The message itself may have been pushed when sent, bob being offline then.)
    pushed = [r.payload["type"] for r in world.accepted("web_push", token) if r.payload]
    assert "reminder" not in pushed
    assert (await api.http.get(R, headers=bob.headers)).json()["reminders"] == []


async def _add_device(api: Client, user: User, provider: str, token: str) -> None:
    platform = {"web_push": "web", "fcm": "android", "apns": "ios"}[provider]
    r = await api.http.post(
        f"{D}/register",
        json={"device_token": token, "platform": platform, "provider": provider},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text


async def test_offline_user_gets_a_push_recorded_as_a_reminder(
    api: Client, world: PushWorld
) -> None:
    alice, bob = await api.user(display_name="Alice"), await api.user()
    conv = await api.conversation(alice, bob)
    message = await sent(api, alice, conv["id"], "pay the rent")
    web, fcm = world.webpush.subscribe(), world.fcm_token()
    await _add_device(api, bob, "web_push", web)
    await _add_device(api, bob, "fcm", fcm)
    reminder = (await remind(api, bob, message["id"], at(1))).json()
    # (The message itself may have been pushed too: bob was offline when it came.)
    [w] = await eventually(
        lambda: [r for r in world.accepted("web_push", web) if r.payload["type"] == "reminder"],
        what="the web push",
    )
    [f] = await eventually(
        lambda: [r for r in world.accepted("fcm", fcm) if r.message["data"]["type"] == "reminder"],
        what="the fcm push",
    )
    assert w.payload["type"] == "reminder" and w.payload["title"] == "Reminder"
    assert w.payload["body"] == "pay the rent"
    assert w.payload["data"]["reminder_id"] == reminder["id"]
    assert w.payload["data"]["message_id"] == message["id"]
    assert f.message["data"]["reminder_id"] == reminder["id"]
    notification_id = w.payload["data"]["notification_id"]

    async def in_history() -> dict[str, Any] | None:
        r = await api.http.get("/api/v1/me/notifications", headers=bob.headers)
        for item in r.json()["notifications"]:
            if item["id"] == notification_id and len(item.get("deliveries") or []) == 2:
                return dict(item)
        return None

    item = await eventually(in_history, what="the reminder in the notification history")
    assert item["kind"] == "reminder" and item["conversation_id"] == conv["id"]
    await eventually(lambda: _is_fired(api.node, reminder["id"]), what="marked fired")


async def test_deleted_message_still_fires_shown_deleted(api: Client) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    message = await sent(api, alice, conv["id"], "soon gone")
    reminder = (await remind(api, bob, message["id"], at(1))).json()
    r = await api.http.delete(
        f"/api/v1/messenger/conversations/{conv['id']}/messages/{message['id']}",
        headers=alice.headers,
    )
    assert r.status_code in (200, 204), r.text
    socket = await Socket.connect(api.node, bob)
    try:
        frame = await socket.expect("reminder", timeout=6, id=reminder["id"])
    finally:
        await socket.close()
    assert frame["message"]["deleted_at"] is not None and frame["message"]["content"] == ""


async def test_dead_nodes_claim_is_taken_over_and_fires_once(api: Client) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    message = await sent(api, alice, conv["id"], "again")
    socket = await Socket.connect(api.node, bob)
    now = utcnow()
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    try:
        async with api.node.services.engine.begin() as conn:
            await conn.execute(
                insert(Reminder),
                [
                    {
                        "id": ids[0],
                        "user_id": bob.id,
                        "message_id": message["id"],
                        "conversation_id": conv["id"],
                        "remind_at": now - timedelta(seconds=5),
                        "status": "pending",
                        # Its node died holding it; the lease is over.
                        "claimed_by": "dead-node",
                        "lease_until": now - timedelta(seconds=1),
                        "created_at": now,
                    },
                    {
                        "id": ids[1],
                        "user_id": bob.id,
                        "message_id": message["id"],
                        "conversation_id": conv["id"],
                        "remind_at": now - timedelta(seconds=5),
                        "status": "pending",
                        # Held by a live node: left alone.
                        "claimed_by": "live-node",
                        "lease_until": now + timedelta(hours=1),
                        "created_at": now,
                    },
                ],
            )
        await socket.expect("reminder", timeout=6, id=ids[0])
        await socket.nothing("reminder")
    finally:
        await socket.close()
    await eventually(lambda: _is_fired(api.node, ids[0]), what="marked fired")
    assert await status_of(api.node, ids[1]) == "pending"


async def test_restart_with_reminders_pending_loses_nothing(
    own_url: str, api: Client, world: PushWorld
) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    message = await sent(api, alice, conv["id"], "keep me")
    token = world.webpush.subscribe()
    await _add_device(api, bob, "web_push", token)
    other = await start_node(make_settings(own_url, **world.settings))
    other_api = Client(other)
    try:
        reminder = (await remind(other_api, bob, message["id"], at(1.5))).json()
    finally:
        await other_api.close()
        await other.stop()
    # Delivered (bob is offline: a push), by the node still up, once.
    await eventually(
        lambda: _reminder_pushes(world, token, reminder["id"]), what="the reminder's push"
    )
    await eventually(
        lambda: _is_fired(api.node, reminder["id"]), what="the reminder fired elsewhere"
    )
    assert len(_reminder_pushes(world, token, reminder["id"])) == 1


def _reminder_pushes(world: PushWorld, token: str, reminder_id: str) -> list[Any]:
    return [
        r
        for r in world.accepted("web_push", token)
        if r.payload and r.payload["data"].get("reminder_id") == reminder_id
    ]


async def _is_fired(node: Node, reminder_id: str) -> bool:
    return await status_of(node, reminder_id) == "fired"


async def test_a_claim_that_died_while_firing_is_delivered_once_by_another_node(
    api: Client, world: PushWorld
) -> None:
    """A node marked the reminder `firing`, pushed one of bob's two devices (its outcome
    recorded) and died: once its lease is over this node fires it again, pushing only the
    device that has no outcome yet, once."""
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    message = await sent(api, alice, conv["id"], "do not lose me")
    done, left = world.webpush.subscribe(), world.webpush.subscribe()
    engine = api.node.services.engine
    await _add_device(api, bob, "web_push", done)
    async with engine.connect() as conn:
        device_id = await conn.scalar(select(DeviceToken.id).where(DeviceToken.user_id == bob.id))
    assert device_id is not None
    await _add_device(api, bob, "web_push", left)
    reminder_id = str(uuid.uuid4())
    now = utcnow()
    async with engine.begin() as conn:
        notification_id = reminder_notification_id(reminder_id)
        await conn.execute(
            insert(Reminder).values(
                id=reminder_id,
                user_id=bob.id,
                message_id=message["id"],
                conversation_id=conv["id"],
                remind_at=now - timedelta(seconds=5),
                status="firing",
                claimed_by="dead-node",
                lease_until=now - timedelta(seconds=1),
                created_at=now,
            )
        )
        await conn.execute(
            insert(PushAttempt).values(
                message_id=notification_id,
                device_id=device_id,
                user_id=bob.id,
                provider="web_push",
                outcome="delivered",
                attempts=1,
                latency_ms=1.0,
                created_at=now,
                notification_id=notification_id,
            )
        )
    await eventually(lambda: _reminder_pushes(world, left, reminder_id), what="the push")
    await eventually(lambda: _is_fired(api.node, reminder_id), what="marked fired")
    assert len(_reminder_pushes(world, left, reminder_id)) == 1
    assert _reminder_pushes(world, done, reminder_id) == []


async def test_a_message_from_before_the_user_joined_again_does_not_fire(api: Client) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    message = await sent(api, alice, conv["id"], "old news")
    reminder = (await remind(api, bob, message["id"], at(1))).json()
    # Bob left and joined again after the message: it is no longer his to see.
    async with api.node.services.engine.begin() as conn:
        await conn.execute(
            update(Participant)
            .where(Participant.conversation_id == conv["id"], Participant.user_id == bob.id)
            .values(joined_seq=message["seq"])
        )
    listed = (await api.http.get(R, headers=bob.headers)).json()["reminders"]
    assert [(r["id"], r["message"]) for r in listed] == [(reminder["id"], None)]
    socket = await Socket.connect(api.node, bob)
    try:
        await eventually(lambda: _status_is(api.node, reminder["id"], "cancelled"), what="dropped")
        await socket.nothing("reminder")
    finally:
        await socket.close()


async def _status_is(node: Node, reminder_id: str, status: str) -> bool:
    return await status_of(node, reminder_id) == status


async def test_reminders_fire_on_time_while_scheduled_sends_are_stuck(
    api: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every slot of scheduled sends is taken by batches that do not finish: reminders
    still fire within 2 s of their time, by the database's clock."""
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    services = api.node.services
    gate = asyncio.Event()
    fired: list[str] = []

    async def stuck(rows: Any) -> None:
        fired.extend(row.id for row in rows)
        await gate.wait()

    monkeypatch.setattr(services.scheduled, "fire", stuck)
    try:
        # One batch per look: each is claimed (and stuck) before the next is due.
        for n in range(1, IN_FLIGHT + 2):
            await _insert_scheduled(services.engine, conv["id"], alice.id)
            await eventually(lambda n=n: len(fired) >= min(n, IN_FLIGHT), what="a stuck batch")
        message = await sent(api, alice, conv["id"], "on time")
        socket = await Socket.connect(api.node, bob)
        try:
            when = await database_now(services.engine) + timedelta(seconds=1)
            r = await remind(api, bob, message["id"], when.isoformat())
            assert r.status_code == 201, r.text
            await socket.expect("reminder", timeout=6, id=r.json()["id"])
            late = await database_now(services.engine) - when
        finally:
            await socket.close()
        assert timedelta(0) <= late < timedelta(seconds=2)
    finally:
        gate.set()


async def _insert_scheduled(engine: Any, conversation_id: str, sender_id: int) -> None:
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(
            insert(ScheduledMessage).values(
                id=str(uuid.uuid4()),
                conversation_id=conversation_id,
                sender_id=sender_id,
                content="stuck",
                send_at=now,
                status="pending",
                created_at=now,
            )
        )


@pytest.mark.parametrize("kind", ["reminders", "scheduled"])
async def test_the_per_user_cap_holds_under_parallel_requests(kind: str) -> None:
    name, url = await create_pg_database()
    node = None
    try:
        await migrate(url)
        node = await start_node(
            make_settings(url, max_reminders_per_user=3, max_scheduled_per_user=3)
        )
        api = Client(node)
        try:
            alice, bob = await api.user(), await api.user()
            conv = await api.conversation(alice, bob)
            message = await sent(api, alice, conv["id"], "many")
            if kind == "reminders":
                answers = await asyncio.gather(
                    *(remind(api, bob, message["id"], at(3600 + n)) for n in range(12))
                )
                code = "too_many_reminders"
            else:
                answers = await asyncio.gather(
                    *(api.send(bob, conv["id"], f"later {n}", send_at=at(3600)) for n in range(12))
                )
                code = "too_many_scheduled"
            statuses = sorted(r.status_code for r in answers)
            assert statuses.count(409) == 9, [r.text for r in answers]
            assert all(r.json()["error"]["code"] == code for r in answers if r.status_code == 409)
            assert len(statuses) - statuses.count(409) == 3
        finally:
            await api.close()
    finally:
        if node is not None:
            await node.stop()
        await drop_pg_database(name)
