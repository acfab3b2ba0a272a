"""The push decision log costs a row per run of messages, not one per message: runs of
one conversation's seqs decided alike for one user are coalesced, and the runs of
recipients who are looking (the bulk under load) are held up to a second to grow."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from app.db import utcnow
from app.messenger.cleanup import run_cleanup
from app.messenger.models import PushDecision
from app.messenger.push.decision_log import DecisionLog
from tests.helpers import Client, Node, Socket, eventually, make_settings, start_node


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def runs(rows: list[dict[str, Any]]) -> list[tuple[int, str, int, int, str, str | None]]:
    return [
        (
            r["user_id"],
            r["conversation_id"],
            r["first_seq"],
            r["last_seq"],
            r["reason"],
            r["message_id"],
        )
        for r in rows
    ]


def test_consecutive_seqs_decided_alike_are_one_row() -> None:
    clock = Clock()
    log = DecisionLog(hold=1.0, clock=clock)
    for seq in range(1, 6):
        log.add(7, "c1", seq, f"m{seq}", "muted")
    log.add(7, "c1", 6, "m6", "sent")  # another reason: a new run
    log.add(7, "c1", 8, "m8", "sent")  # a gap: a new run
    log.add(7, "c2", 1, "x1", "muted")  # another conversation
    log.add(8, "c1", 1, "m1", "muted")  # another user
    log.add(7, "c1", 8, "m8", "sent")  # decided again (a job taken up again): no new row
    assert sorted(runs(log.take())) == [
        (7, "c1", 1, 5, "muted", None),
        (7, "c1", 6, 6, "sent", "m6"),
        (7, "c1", 8, 8, "sent", "m8"),
        (7, "c2", 1, 1, "muted", "x1"),
        (8, "c1", 1, 1, "muted", "m1"),
    ]
    assert log.take() == [] and len(log) == 0
    assert log.counts() == {"muted": 7, "sent": 3}
    assert log.counts() == {}


def test_online_runs_are_held_until_they_are_a_second_old() -> None:
    clock = Clock()
    log = DecisionLog(hold=1.0, clock=clock)
    for seq in range(1, 401):
        log.add(1, "c", seq, f"m{seq}", "online")
    assert log.take() == []  # still growing
    assert log.next_due() == 1.0
    clock.now += 0.6
    for seq in range(401, 1001):
        log.add(1, "c", seq, f"m{seq}", "online")
    log.add(2, "c", 5, "m5", "online")
    assert log.take() == []
    assert log.next_due() == pytest.approx(0.4)
    clock.now += 0.4
    assert runs(log.take()) == [(1, "c", 1, 1000, "online", None)]
    # The younger run is due a second after it began.
    assert log.next_due() == pytest.approx(0.6)
    assert runs(log.take(force=True)) == [(2, "c", 5, 5, "online", "m5")]
    assert log.next_due() is None


def test_a_run_spans_the_users_own_messages() -> None:
    log = DecisionLog()
    log.add(1, "c", 1, "m1", "online")
    log.own(1, "c", 2)  # their reply
    log.add(1, "c", 3, "m3", "online")
    log.own(1, "c", 4)
    log.own(2, "c", 5)  # someone without a run there: nothing
    log.own(1, "c", 7)  # not next to the run: nothing
    assert runs(log.take(force=True)) == [(1, "c", 1, 4, "online", None)]
    log.add(1, "c", 8, "m8", "muted")
    log.own(1, "c", 9)
    # One message decided, and the user's own after it: the row still names it.
    assert runs(log.take()) == [(1, "c", 8, 9, "muted", "m8")]


def test_rows_not_written_are_kept_up_to_a_limit() -> None:
    log = DecisionLog(limit=3)
    log.add(1, "c", 1, "m1", "muted")
    rows = log.take()
    log.restore(rows)
    assert runs(log.take()) == runs(rows)
    log.restore([{**rows[0], "first_seq": n, "last_seq": n} for n in range(5)])
    assert [r["first_seq"] for r in log.take()] == [2, 3, 4]
    assert log.dropped == 2


@pytest.fixture(scope="module")
async def busy_node(db_url: str) -> AsyncIterator[Node]:
    n = await start_node(make_settings(db_url, send_rate_per_second=100_000, send_burst=100_000))
    yield n
    await n.stop()


async def decision_rows(node: Node, user_id: int) -> list[Any]:
    async with node.services.engine.connect() as conn:
        return list(
            await conn.execute(
                select(PushDecision)
                .where(PushDecision.user_id == user_id)
                .order_by(PushDecision.first_seq)
            )
        )


def online_decisions() -> float:
    return REGISTRY.get_sample_value("messenger_push_decisions_total", {"reason": "online"}) or 0.0


async def test_a_thousand_messages_to_someone_looking_are_a_handful_of_rows(
    busy_node: Node,
) -> None:
    api = Client(busy_node)
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    bob_sock = await Socket.connect(busy_node, bob)
    alice_sock = await Socket.connect(busy_node, alice)
    before = online_decisions()
    try:
        await bob_sock.send({"type": "ping"})
        await bob_sock.expect("pong")

        async def send_all() -> None:
            for i in range(1000):
                await alice_sock.send(
                    {
                        "type": "message.send",
                        "conversation_id": conv["id"],
                        "content": f"line {i}",
                        "client_msg_id": f"c{i}",
                    }
                )

        sending = asyncio.create_task(send_all())
        seqs = [
            (await alice_sock.expect("message.ack", timeout=30))["message"]["seq"]
            for _ in range(1000)
        ]
        await sending
        assert sorted(seqs) == list(range(1, 1001))

        async def covered() -> list[Any]:
            rows = await decision_rows(busy_node, bob.id)
            return rows if rows and rows[-1].last_seq == 1000 else []

        rows = await eventually(covered, what="the decisions up to seq 1000")
        # Runs of one reason that follow each other without gap or overlap, seq 1 to 1000.
        assert {r.reason for r in rows} == {"online"}
        assert {r.conversation_id for r in rows} == {conv["id"]}
        assert rows[0].first_seq == 1
        assert all(a.last_seq + 1 == b.first_seq for a, b in itertools.pairwise(rows))
        assert len(rows) <= 10, [(r.first_seq, r.last_seq) for r in rows]
        assert all(r.message_id is None for r in rows if r.first_seq < r.last_seq)
        assert online_decisions() - before >= 1000
        # Nobody else was decided for: the sender is never a recipient.
        assert await decision_rows(busy_node, alice.id) == []
    finally:
        await alice_sock.close()
        await bob_sock.close()
        await api.close()


async def send_many(sock: Socket, conversation_id: str, count: int, tag: str) -> list[int]:
    """Send `count` messages without waiting for each; their seqs once acknowledged."""

    async def send_all() -> None:
        for i in range(count):
            await sock.send(
                {
                    "type": "message.send",
                    "conversation_id": conversation_id,
                    "content": f"{tag} {i}",
                    "client_msg_id": f"{tag}{i}",
                }
            )

    sending = asyncio.create_task(send_all())
    seqs = [(await sock.expect("message.ack", timeout=30))["message"]["seq"] for _ in range(count)]
    await sending
    return seqs


async def test_two_people_chatting_while_looking_are_a_handful_of_rows_each(
    busy_node: Node,
) -> None:
    api = Client(busy_node)
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    socks = [await Socket.connect(busy_node, alice), await Socket.connect(busy_node, bob)]
    try:
        sent = await asyncio.gather(
            send_many(socks[0], conv["id"], 500, "a"), send_many(socks[1], conv["id"], 500, "b")
        )
        assert sorted(sent[0] + sent[1]) == list(range(1, 1001))
        for user, theirs in ((bob, sent[0]), (alice, sent[1])):

            async def covered(user_id: int = user.id, last: int = max(theirs)) -> list[Any]:
                rows = await decision_rows(busy_node, user_id)
                return rows if rows and rows[-1].last_seq >= last else []

            rows = await eventually(covered, what="the decisions of the whole chat")
            assert {r.reason for r in rows} == {"online"}
            # Each of the other's messages is in exactly one row; the runs span one's own.
            for seq in theirs:
                assert sum(r.first_seq <= seq <= r.last_seq for r in rows) == 1, seq
            assert len(rows) <= 10, [(r.first_seq, r.last_seq) for r in rows]
    finally:
        for sock in socks:
            await sock.close()
        await api.close()


async def test_the_daily_cleanup_removes_old_decisions(busy_node: Node, db_url: str) -> None:
    conversation_id = str(uuid.uuid4())
    now = utcnow()
    async with busy_node.services.engine.begin() as conn:
        await conn.execute(
            PushDecision.__table__.insert(),
            [
                {
                    "user_id": 1,
                    "conversation_id": conversation_id,
                    "first_seq": seq,
                    "last_seq": seq,
                    "reason": "online",
                    "created_at": now - timedelta(days=age),
                }
                for seq, age in ((1, 31), (2, 29))
            ],
        )
    report = await run_cleanup(busy_node.services.engine, make_settings(db_url))
    assert report.ran and report.decisions_removed >= 1
    async with busy_node.services.engine.connect() as conn:
        left = await conn.execute(
            select(PushDecision.first_seq).where(PushDecision.conversation_id == conversation_id)
        )
        assert list(left.scalars()) == [2]
