"""Scheduled messages: scheduling, listing and cancelling, sending at the time (live, with
a new seq), the checks at both times, and durability: a node that dies holding a claim,
two nodes racing over the same due rows, a restart with timers pending."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from app.db import utcnow
from app.messenger.cleanup import run_cleanup
from app.messenger.models import Announcement, Message, Reminder, ScheduledMessage
from app.messenger.scheduled import PREFIX
from tests.conftest import migrated_database
from tests.helpers import Client, Node, Socket, User, eventually, make_settings, start_node
from tests.helpers import iso_from_now as at

S = "/api/v1/messenger/scheduled"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def own_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A database of this module's own: no node of another module fires its timers (nodes
    without Redis deliver live only to their own sockets)."""
    async with migrated_database(request.param, tmp_path_factory.mktemp("scheduled")) as url:
        yield url


@pytest.fixture(scope="module")
async def own_node(own_url: str) -> AsyncIterator[Node]:
    node = await start_node(make_settings(own_url))
    yield node
    await node.stop()


@pytest.fixture
async def api(own_node: Node) -> AsyncIterator[Client]:
    client = Client(own_node)
    yield client
    await client.close()


async def schedule(
    api: Client, user: User, conversation_id: str, content: str, when: str, **extra: Any
) -> Any:
    return await api.send(user, conversation_id, content, send_at=when, **extra)


async def status_of(url_or_node: Node, scheduled_id: str) -> Any:
    async with url_or_node.services.engine.connect() as conn:
        return (
            await conn.execute(select(ScheduledMessage).where(ScheduledMessage.id == scheduled_id))
        ).first()


async def copies(node: Node, scheduled_id: str) -> int:
    """Messages written for this scheduled message."""
    async with node.services.engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.client_msg_id == PREFIX + scheduled_id)
            )
            or 0
        )


async def test_scheduled_message_goes_out_live_at_its_time(api: Client) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    before = await api.send(alice, conv["id"], "now")
    assert before.status_code == 201
    bob_socket = await Socket.connect(api.node, bob)
    alice_socket = await Socket.connect(api.node, alice)
    try:
        when = at(1.5)
        r = await schedule(api, alice, conv["id"], "later", when)
        assert r.status_code == 202, r.text
        scheduled_id = r.json()["scheduled_id"]
        assert datetime.fromisoformat(r.json()["send_at"]) == datetime.fromisoformat(when)
        listed = (await api.http.get(S, headers=alice.headers)).json()["scheduled"]
        assert [(s["id"], s["conversation_id"], s["content"]) for s in listed] == [
            (scheduled_id, conv["id"], "later")
        ]
        # Only the sender sees it; nothing is in the conversation yet.
        assert (await api.http.get(S, headers=bob.headers)).json()["scheduled"] == []
        assert [m["content"] for m in await api.messages(bob, conv["id"])] == ["now"]

        frame = await bob_socket.expect("message.new", timeout=6)
        message = frame["message"]
        assert message["content"] == "later" and message["sender_id"] == alice.id
        assert message["seq"] == before.json()["seq"] + 1
        sent_at = datetime.fromisoformat(message["created_at"])
        due = datetime.fromisoformat(when)
        # Sent as if sent then: at its time, within 2 s.
        assert due <= sent_at < due + timedelta(seconds=2)
        # The sender's own sockets see it too.
        mine = await alice_socket.expect("message.new")
        assert mine["message"]["id"] == message["id"]
    finally:
        await bob_socket.close()
        await alice_socket.close()
    # Marked sent just after it went out.
    await eventually(lambda: _status_is(api.node, scheduled_id, "sent"), what="marked sent")
    assert (await status_of(api.node, scheduled_id)).message_id == message["id"]
    assert (await api.http.get(S, headers=alice.headers)).json()["scheduled"] == []
    assert [m["content"] for m in await api.messages(bob, conv["id"])] == ["now", "later"]


async def test_cancel_own_only_and_never_sent(api: Client) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    r = await schedule(api, alice, conv["id"], "never", at(1))
    scheduled_id = r.json()["scheduled_id"]
    # Another user's id is unknown to them.
    r = await api.http.delete(f"{S}/{scheduled_id}", headers=bob.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "scheduled_not_found"
    r = await api.http.delete(f"{S}/{scheduled_id}", headers=alice.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = await api.http.delete(f"{S}/{scheduled_id}", headers=alice.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "scheduled_not_pending"
    # A second one, sent, is sent after the cancelled one's time: the first stayed unsent.
    r = await schedule(api, alice, conv["id"], "marker", at(1.2))
    marker = r.json()["scheduled_id"]
    await eventually(lambda: _status_is(api.node, marker, "sent"), what="the marker sent")
    assert [m["content"] for m in await api.messages(alice, conv["id"])] == ["marker"]
    assert (await status_of(api.node, scheduled_id)).status == "cancelled"
    # Already sent: too late to cancel.
    r = await api.http.delete(f"{S}/{marker}", headers=alice.headers)
    assert r.status_code == 409 and "sent" in r.json()["error"]["message"]


async def _status_is(node: Node, scheduled_id: str, status: str) -> bool:
    row = await status_of(node, scheduled_id)
    return row is not None and row.status == status


async def test_bad_schedules_are_refused(api: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob, eve = await api.user(), await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    cases = [
        ({"send_at": at(-5)}, 422, "invalid_field"),
        ({"send_at": at(400 * 86400)}, 422, "invalid_field"),
        ({"send_at": "2030-01-01T10:00:00"}, 422, "invalid_field"),  # no zone
        ({"send_at": "tomorrow"}, 422, "invalid_field"),
        ({"send_at": at(60), "attachments": [str(uuid.uuid4())]}, 422, "invalid_field"),
    ]
    for extra, status, code in cases:
        r = await api.send(alice, conv["id"], "hi", **extra)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (extra, r.text)
    r = await api.send(alice, conv["id"], "   ", send_at=at(60))
    assert r.status_code == 422 and r.json()["error"]["code"] == "empty_content"
    r = await api.send(alice, conv["id"], "x" * 5000, send_at=at(60))
    assert r.status_code == 422 and r.json()["error"]["code"] == "message_too_long"
    r = await api.send(eve, conv["id"], "hi", send_at=at(60))
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_a_participant"
    r = await api.send(alice, conv["id"], "hi", send_at=at(60), reply_to=str(uuid.uuid4()))
    assert r.status_code == 404 and r.json()["error"]["code"] == "reply_to_not_found"
    # Blocked by the other side of a direct conversation: refused now, as a send is.
    r = await api.http.put(f"/api/v1/me/blocks/{alice.id}", headers=bob.headers)
    assert r.status_code in (200, 201, 204), r.text
    r = await api.send(alice, conv["id"], "hi", send_at=at(60))
    assert r.status_code == 403, r.text
    # A bounded number pending per user.
    carol = await api.user()
    conv2 = await api.conversation(alice, carol)
    monkeypatch.setattr(api.node.services.settings, "max_scheduled_per_user", 2)
    for n in range(2):
        r = await api.send(alice, conv2["id"], f"n{n}", send_at=at(3600))
        assert r.status_code == 202, r.text
    r = await api.send(alice, conv2["id"], "one too many", send_at=at(3600))
    assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_scheduled"
    assert len((await api.http.get(S, headers=alice.headers)).json()["scheduled"]) == 2
    r = await api.http.delete(f"{S}/not-an-id", headers=alice.headers)
    assert r.status_code == 404


async def test_same_client_msg_id_schedules_once(api: Client) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    first = await schedule(api, alice, conv["id"], "once", at(3600), client_msg_id="c-1")
    again = await schedule(api, alice, conv["id"], "once", at(3600), client_msg_id="c-1")
    assert first.status_code == again.status_code == 202
    assert first.json()["scheduled_id"] == again.json()["scheduled_id"]
    assert len((await api.http.get(S, headers=alice.headers)).json()["scheduled"]) == 1


async def test_sender_who_left_fails_and_nothing_is_sent(api: Client) -> None:
    alice, bob, carol = await api.user(), await api.user(), await api.user()
    conv = await api.conversation(alice, bob, carol, title="group")
    r = await schedule(api, bob, conv["id"], "from a leaver", at(2))
    scheduled_id = r.json()["scheduled_id"]
    r = await api.http.delete(
        f"/api/v1/messenger/conversations/{conv['id']}/participants/{bob.id}",
        headers=bob.headers,
    )
    assert r.status_code in (200, 204), r.text
    socket = await Socket.connect(api.node, bob)
    try:
        # Bob hears of it on his sockets.
        frame = await socket.expect("scheduled.failed", timeout=6, id=scheduled_id)
        assert frame["error"] == "not_a_participant"
    finally:
        await socket.close()
    await eventually(lambda: _status_is(api.node, scheduled_id, "failed"), what="failed")
    row = await status_of(api.node, scheduled_id)
    assert row.error == "not_a_participant" and row.message_id is None
    assert await copies(api.node, scheduled_id) == 0
    # Listed as failed until dismissed.
    listed = (await api.http.get(S, headers=bob.headers)).json()["scheduled"]
    assert [(s["id"], s["status"]) for s in listed] == [(scheduled_id, "failed")]
    r = await api.http.delete(f"{S}/{scheduled_id}", headers=bob.headers)
    assert r.status_code == 200 and r.json()["status"] == "dismissed"
    assert (await api.http.get(S, headers=bob.headers)).json()["scheduled"] == []


async def _insert_due(
    node: Node, conversation_id: str, sender_id: int, n: int, **row: Any
) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    now = utcnow()
    async with node.services.engine.begin() as conn:
        await conn.execute(
            insert(ScheduledMessage),
            [
                {
                    "id": i,
                    "conversation_id": conversation_id,
                    "sender_id": sender_id,
                    "content": f"due {k}",
                    "send_at": row.get("send_at", now),
                    "status": "pending",
                    "claimed_by": row.get("claimed_by"),
                    "lease_until": row.get("lease_until"),
                    "created_at": now,
                }
                for k, i in enumerate(ids)
            ],
        )
    return ids


async def test_a_dead_nodes_claim_is_taken_over_and_sent_once(api: Client) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    past = utcnow() - timedelta(seconds=1)
    # Claimed by a node that died before sending: taken over once its lease is over.
    [lost] = await _insert_due(
        api.node, conv["id"], alice.id, 1, claimed_by="dead-node", lease_until=past
    )
    # Claimed by a node that died after the commit, before marking it sent: the message
    # exists (its client_msg_id is the scheduled one's), and sending again is a repeat.
    [half] = await _insert_due(
        api.node, conv["id"], alice.id, 1, claimed_by="dead-node", lease_until=past
    )
    # A claim still held is left alone.
    [held] = await _insert_due(
        api.node,
        conv["id"],
        alice.id,
        1,
        claimed_by="live-node",
        lease_until=utcnow() + timedelta(hours=1),
    )
    # (Whether this send or the timer comes first, one message is written.)
    r = await api.send(alice, conv["id"], "due 0", client_msg_id=PREFIX + half)
    assert r.status_code in (200, 201), r.text
    for scheduled_id in (lost, half):
        await eventually(lambda i=scheduled_id: _status_is(api.node, i, "sent"), what="sent")
        assert await copies(api.node, scheduled_id) == 1
    assert (await status_of(api.node, half)).message_id == r.json()["id"]
    assert (await status_of(api.node, held)).status == "pending"
    assert await copies(api.node, held) == 0


async def test_restart_with_timers_pending_loses_nothing(own_url: str, api: Client) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    other = await start_node(make_settings(own_url))
    other_api = Client(other)
    try:
        r = await schedule(other_api, alice, conv["id"], "survives", at(1.5))
        assert r.status_code == 202
        scheduled_id = r.json()["scheduled_id"]
    finally:
        await other_api.close()
        await other.stop()
    # That node is gone before the time; whichever node is up sends it, once.
    await eventually(lambda: _status_is(api.node, scheduled_id, "sent"), what="sent")
    assert await copies(api.node, scheduled_id) == 1


@pytest.fixture
async def race_url(tmp_path: Path) -> AsyncIterator[str]:
    """A PostgreSQL database of the test's own: no other module's node (they keep
    running for the session) claims the rows the two nodes race over."""
    async with migrated_database("postgresql", tmp_path) as url:
        yield url


async def test_two_nodes_racing_send_each_once(race_url: str) -> None:
    first = await start_node(make_settings(race_url, timer_batch=20))
    second = await start_node(make_settings(race_url, timer_batch=20))
    # Every row handed to a node's firing, counted: a row claimed twice shows here even
    # though the messages' unique key would hide its second copy.
    handed: dict[str, int] = {}
    for node in (first, second):
        kind = node.services.scheduled
        original = kind.fire

        async def counting(rows: Any, original: Any = original) -> None:
            for row in rows:
                handed[row.id] = handed.get(row.id, 0) + 1
            await original(rows)

        kind.fire = counting
    api = Client(first)
    sockets: list[Socket] = []
    try:
        alice, bob = await api.user(), await api.user()
        conv = await api.conversation(alice, bob)
        sockets = [await Socket.connect(first, bob), await Socket.connect(second, bob)]
        ids = await _insert_due(
            first, conv["id"], alice.id, 200, send_at=utcnow() + timedelta(seconds=1)
        )

        async def all_sent() -> bool:
            async with first.services.engine.connect() as conn:
                left = await conn.scalar(
                    select(func.count())
                    .select_from(ScheduledMessage)
                    .where(ScheduledMessage.id.in_(ids), ScheduledMessage.status != "sent")
                )
            return left == 0

        await eventually(all_sent, within=20, what="all 200 sent")
        async with first.services.engine.connect() as conn:
            written = (
                await conn.execute(
                    select(Message.client_msg_id, func.count())
                    .where(Message.conversation_id == conv["id"])
                    .group_by(Message.client_msg_id)
                )
            ).all()
            seqs = (
                await conn.scalars(select(Message.seq).where(Message.conversation_id == conv["id"]))
            ).all()
        assert sorted(c for c, _ in written) == sorted(PREFIX + i for i in ids)
        assert all(n == 1 for _, n in written)
        assert sorted(seqs) == list(range(1, 201))
        assert handed == dict.fromkeys(ids, 1)
        # Bob's sockets (one per node: each node publishes to its own) saw each once; a
        # node firing a row twice would publish it twice.
        seen = [c for socket in sockets for c in await _message_frames(socket)]
        assert sorted(seen) == sorted(PREFIX + i for i in ids)
    finally:
        for socket in sockets:
            await socket.close()
        await api.close()
        await asyncio.gather(first.stop(), second.stop())


async def _message_frames(socket: Socket) -> list[str]:
    """The client_msg_id of every message.new the socket got, up to the answer to a ping
    sent now (the node answers it after every frame queued before)."""
    await socket.send({"type": "ping"})
    found = []
    while (frame := await socket.recv(5.0))["type"] != "pong":
        if frame["type"] == "message.new":
            found.append(frame["message"]["client_msg_id"])
    return found


async def test_a_socket_send_with_send_at_is_refused_not_sent_now(api: Client) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    socket = await Socket.connect(api.node, alice)
    try:
        await socket.send(
            {
                "type": "message.send",
                "conversation_id": conv["id"],
                "content": "tomorrow",
                "client_msg_id": "ws-later",
                "send_at": at(3600),
            }
        )
        error = await socket.expect("error", ref="ws-later")
        assert error["code"] == "invalid_field"
        assert "schedule over REST" in error["message"]
    finally:
        await socket.close()
    assert await api.messages(bob, conv["id"]) == []


async def test_a_row_cancelled_while_its_claim_ran_out_is_not_sent(api: Client) -> None:
    """A node whose lease ran out mid-way (the row was cancelled meanwhile) checks its
    claim again right before sending: nothing goes out."""
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    kind = api.node.services.scheduled
    node_id = api.node.services.settings.node_id
    [scheduled_id] = await _insert_due(
        api.node,
        conv["id"],
        alice.id,
        1,
        send_at=utcnow() + timedelta(hours=1),
        claimed_by=node_id,
        lease_until=utcnow() - timedelta(seconds=1),
    )
    row = await status_of(api.node, scheduled_id)
    r = await api.http.delete(f"{S}/{scheduled_id}", headers=alice.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    await kind.fire([row])
    assert (await status_of(api.node, scheduled_id)).status == "cancelled"
    assert await copies(api.node, scheduled_id) == 0


async def test_cancel_is_refused_while_a_live_claim_holds_it(api: Client) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    [held] = await _insert_due(
        api.node,
        conv["id"],
        alice.id,
        1,
        send_at=utcnow() + timedelta(hours=1),
        claimed_by="live-node",
        lease_until=utcnow() + timedelta(hours=1),
    )
    r = await api.http.delete(f"{S}/{held}", headers=alice.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "scheduled_not_pending"
    assert (await status_of(api.node, held)).status == "pending"


async def test_a_batch_whose_firing_raised_is_sent_soon_after(
    api: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not after the whole lease (30 s): let go with a short backoff, then sent."""
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    kind = api.node.services.scheduled
    original = kind.fire
    raised: list[int] = []

    async def failing_once(rows: Any) -> None:
        if not raised:
            raised.append(len(rows))
            raise RuntimeError("the first firing fails")
        await original(rows)

    monkeypatch.setattr(kind, "fire", failing_once)
    [scheduled_id] = await _insert_due(api.node, conv["id"], alice.id, 1)
    await eventually(
        lambda: _status_is(api.node, scheduled_id, "sent"), within=5.0, what="sent after retry"
    )
    assert raised == [1]
    assert await copies(api.node, scheduled_id) == 1
    # Sent rows keep only their ids: the text lives in the message.
    assert (await status_of(api.node, scheduled_id)).content == ""


async def test_the_daily_cleanup_removes_old_finished_timers_only(api: Client) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    message = (await api.send(alice, conv["id"], "remind me")).json()
    settings = api.node.services.settings
    old = utcnow() - timedelta(days=settings.push_attempt_retention_days + 1)
    old_sent = await _insert_due(api.node, conv["id"], alice.id, 1, send_at=old)
    old_pending = await _insert_due(
        api.node, conv["id"], alice.id, 1, send_at=old, claimed_by="live-node"
    )
    recent_sent = await _insert_due(api.node, conv["id"], alice.id, 1, claimed_by="live-node")
    async with api.node.services.engine.begin() as conn:
        await conn.execute(
            update(ScheduledMessage)
            .where(ScheduledMessage.id.in_(old_sent + recent_sent))
            .values(status="sent", claimed_by=None)
        )
        reminders = {str(uuid.uuid4()): status for status in ("fired", "cancelled", "pending")}
        await conn.execute(
            insert(Reminder),
            [
                {
                    "id": rid,
                    "user_id": bob.id,
                    "message_id": message["id"],
                    "conversation_id": conv["id"],
                    "remind_at": old,
                    "status": status,
                    "claimed_by": "live-node" if status == "pending" else None,
                    "created_at": old,
                }
                for rid, status in reminders.items()
            ],
        )
        announcements = {str(uuid.uuid4()): status for status in ("done", "sending")}
        await conn.execute(
            insert(Announcement),
            [
                {
                    "id": aid,
                    "created_by": alice.id,
                    "title": "t",
                    "content": "c",
                    "audience": "list",
                    "user_ids": [bob.id],
                    "status": status,
                    "claimed_by": "live-node",
                    "lease_until": utcnow() + timedelta(hours=1),
                    "created_at": old,
                    "finished_at": old if status == "done" else None,
                }
                for aid, status in announcements.items()
            ],
        )
    report = await run_cleanup(api.node.services.engine, settings)
    assert report.timers_removed >= 4
    async with api.node.services.engine.connect() as conn:
        scheduled_left = set(
            (
                await conn.scalars(
                    select(ScheduledMessage.id).where(ScheduledMessage.sender_id == alice.id)
                )
            ).all()
        )
        reminders_left = set(
            (await conn.scalars(select(Reminder.id).where(Reminder.id.in_(list(reminders))))).all()
        )
        announcements_left = set(
            (
                await conn.scalars(
                    select(Announcement.id).where(Announcement.id.in_(list(announcements)))
                )
            ).all()
        )
    assert scheduled_left == set(old_pending + recent_sent)
    assert [reminders[r] for r in reminders_left] == ["pending"]
    assert [announcements[a] for a in announcements_left] == ["sending"]
