"""The send path when PostgreSQL is stuck: a statement that hangs on a lock is cancelled
and its senders get 503 `unavailable`; the writer's queue and each socket's sends in
flight are bounded. Another connection holding the conversation's row lock (as a stuck
transaction would) is what makes the writer hang."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.cluster import send_frame
from tests.conftest import migrated_database
from tests.helpers import Client, Node, Socket, eventually, make_settings, start_node


@contextlib.asynccontextmanager
async def row_locked(database_url: str, conversation_id: str) -> AsyncIterator[None]:
    """Another connection holds the conversation's row lock until the block ends."""
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation_id
            )
            yield
    finally:
        await conn.close()


@pytest.fixture
async def impatient_node(postgresql_url: str) -> AsyncIterator[Node]:
    node = await start_node(make_settings(postgresql_url, database_statement_timeout_seconds=1))
    yield node
    await node.stop()


@pytest.fixture
async def patient_node(postgresql_url: str) -> AsyncIterator[Node]:
    """A statement timeout longer than any test: the writer stays stuck until released."""
    settings = make_settings(
        postgresql_url,
        database_statement_timeout_seconds=60,
        writer_queue_limit=4,
        websocket_sends_in_flight=3,
    )
    node = await start_node(settings)
    yield node
    await node.stop()


async def test_a_send_stuck_on_a_lock_fails_clearly_and_the_writer_goes_on(
    impatient_node: Node, postgresql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    api = Client(impatient_node)
    alice, bob = await api.user(), await api.user()
    conversation = (await api.conversation(alice, bob))["id"]
    socket = await Socket.connect(impatient_node, alice)
    async with row_locked(postgresql_url, conversation):
        await socket.send(send_frame(conversation, "secret words", "m1"))
        error = await socket.expect("error", timeout=15)
        assert (error["code"], error["ref"]) == ("unavailable", "m1")
        assert error["retry_after"] >= 1
        r = await api.send(alice, conversation, "more secret words", client_msg_id="m2")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable"
        assert int(r.headers["Retry-After"]) >= 1

    # The lock is gone: the same sends, repeated, go through, each once.
    await socket.send(send_frame(conversation, "secret words", "m1"))
    ack = await socket.expect("message.ack", client_msg_id="m1")
    assert ack["message"]["seq"] == 1
    r = await api.send(alice, conversation, "more secret words", client_msg_id="m2")
    assert r.status_code == 201, r.text
    messages = await api.messages(alice, conversation)
    assert [m["content"] for m in messages] == ["secret words", "more secret words"]
    # One line per failed batch: no traceback, nothing of the message.
    lines = [r for r in caplog.records if r.name == "app.messenger.writer"]
    assert len(lines) == 2, [r.getMessage() for r in lines]
    for record in lines:
        assert record.levelno == logging.WARNING and record.exc_info is None
        assert "database unavailable" in record.getMessage()
        assert "secret" not in record.getMessage()
    await socket.close()
    await api.close()


async def test_a_full_writer_queue_refuses_sends_at_once(
    patient_node: Node, postgresql_url: str
) -> None:
    writer = patient_node.services.writer
    api = Client(patient_node)
    alice, bob = await api.user(), await api.user()
    conversation = (await api.conversation(alice, bob))["id"]
    socket = await Socket.connect(patient_node, bob)
    async with row_locked(postgresql_url, conversation):
        stuck = [
            asyncio.create_task(api.send(alice, conversation, f"queued {i}", client_msg_id=f"q{i}"))
            for i in range(4)
        ]
        await eventually(lambda: writer.pending == 4, what="four sends in the writer")
        r = await api.send(alice, conversation, "one too many")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1
        await socket.send(send_frame(conversation, "one too many", "over"))
        error = await socket.expect("error")
        assert (error["code"], error["ref"]) == ("overloaded", "over")
        assert error["retry_after"] >= 1
        assert not any(task.done() for task in stuck)
    # Released: what was queued is written, and nothing else.
    assert [r.status_code for r in await asyncio.gather(*stuck)] == [201] * 4
    messages = await api.messages(alice, conversation)
    assert sorted(m["content"] for m in messages) == [f"queued {i}" for i in range(4)]
    await socket.close()
    await api.close()


async def test_a_socket_with_its_sends_in_flight_is_not_read_further(
    patient_node: Node, postgresql_url: str
) -> None:
    writer = patient_node.services.writer
    api = Client(patient_node)
    alice, bob = await api.user(), await api.user()
    conversation = (await api.conversation(alice, bob))["id"]
    socket = await Socket.connect(patient_node, alice)
    other = await Socket.connect(patient_node, bob)
    async with row_locked(postgresql_url, conversation):
        for i in range(8):
            await socket.send(send_frame(conversation, f"burst {i}", f"b{i}"))
        await eventually(lambda: writer.pending == 3, what="three sends in the writer")
        # The node has gone on reading other sockets meanwhile; this one's five other
        # sends are still unread.
        for _ in range(3):
            await other.send({"type": "ping"})
            await other.expect("pong")
        assert writer.pending == 3
    # Released: the rest is read, every send answered in order.
    acks = [await socket.expect("message.ack", timeout=10) for _ in range(8)]
    assert [a["client_msg_id"] for a in acks] == [f"b{i}" for i in range(8)]
    assert [a["message"]["seq"] for a in acks] == list(range(1, 9))
    for s in (socket, other):
        await s.close()
    await api.close()


async def test_a_request_stuck_on_the_database_answers_503_not_500(
    impatient_node: Node, postgresql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Any route, not only the send path: a statement cancelled by the timeout is the
    database being unavailable (503 with Retry-After, a WARNING line), not a bug."""
    api = Client(impatient_node)
    alice, bob = await api.user(), await api.user()
    conversation = (await api.conversation(alice, bob))["id"]
    conn = await asyncpg.connect(postgresql_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE participants IN ACCESS EXCLUSIVE MODE")
            with caplog.at_level(logging.WARNING, logger="app.errors"):
                r = await api.http.get(
                    f"/api/v1/messenger/conversations/{conversation}/settings",
                    headers=alice.headers,
                )
    finally:
        await conn.close()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    failed = [rec for rec in caplog.records if rec.name == "app.errors"]
    assert failed and all(rec.levelno == logging.WARNING for rec in failed)
    # Once the lock is gone the same request answers.
    r = await api.http.get(
        f"/api/v1/messenger/conversations/{conversation}/settings", headers=alice.headers
    )
    assert r.status_code == 200, r.text


async def test_the_writers_plan_made_on_empty_tables_never_scans_them_whole(
    tmp_path: Path,
) -> None:
    """The writer prepares its batch statement once per connection. Made on a new
    deployment's near-empty tables (and no ANALYZE since: autovacuum may be off, as
    here), a plan that scanned conversations and participants whole would do so at every
    send as they grow. After 20,000 more of each, sends read them by key only."""
    async with migrated_database("postgresql", tmp_path) as url:
        node = await start_node(make_settings(url))
        api = Client(node)
        try:
            alice, bob = await api.user(), await api.user()
            conversation = (await api.conversation(alice, bob))["id"]
            assert (await api.send(alice, conversation, "planned here")).status_code == 201
            admin = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                await admin.execute(
                    "INSERT INTO conversations (id, type, created_by, created_at, last_seq) "
                    "SELECT gen_random_uuid()::text, 'group', $1, now(), 0 "
                    "FROM generate_series(1, 20000)",
                    alice.id,
                )
                await admin.execute(
                    "INSERT INTO participants (conversation_id, user_id, joined_at, "
                    "last_read_seq, muted) SELECT id, $1, now(), 0, false FROM conversations "
                    "WHERE id <> $2",
                    alice.id,
                    conversation,
                )
                before = await _seq_scans(admin)
                for i in range(20):
                    r = await api.send(alice, conversation, f"after {i}")
                    assert r.status_code == 201, r.text
                assert await _seq_scans(admin) == before
            finally:
                await admin.close()
        finally:
            await api.close()
            await node.stop()


async def _seq_scans(conn: asyncpg.Connection) -> dict[str, int]:
    """Whole-table scans of the tables a send touches, as PostgreSQL counts them (its
    statistics lag a little: forced out first)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch(
        "SELECT relname, seq_scan FROM pg_stat_user_tables "
        "WHERE relname IN ('conversations', 'participants', 'messages')"
    )
    return {r["relname"]: r["seq_scan"] for r in rows}
