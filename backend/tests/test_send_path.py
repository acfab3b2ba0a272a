"""The send path: seq allocation, idempotent client_msg_id, push work in the same
transaction, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.messenger.models import Message
from app.messenger.writer import MessageWriter
from tests.helpers import Client, Socket, make_settings, push_job_of, start_node


async def test_concurrent_sends_get_seq_without_gaps(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    results = await asyncio.gather(
        *(
            client.send(a if i % 2 else b, conv["id"], f"m{i}", client_msg_id=f"c{i}")
            for i in range(50)
        )
    )
    assert all(r.status_code == 201 for r in results)
    assert sorted(r.json()["seq"] for r in results) == list(range(1, 51))
    history = await client.messages(a, conv["id"], limit=200)
    assert [m["seq"] for m in history] == list(range(1, 51))
    assert len({m["id"] for m in history}) == 50


async def test_two_nodes_share_one_seq(postgresql_url: str) -> None:
    nodes = [await start_node(make_settings(postgresql_url)) for _ in range(2)]
    clients = [Client(n) for n in nodes]
    try:
        a, b = await clients[0].user(), await clients[0].user()
        conv = await clients[0].conversation(a, b)
        results = await asyncio.gather(
            *(clients[i % 2].send(a, conv["id"], f"m{i}") for i in range(60))
        )
        assert sorted(r.json()["seq"] for r in results) == list(range(1, 61))
    finally:
        for c in clients:
            await c.close()
        for n in nodes:
            await n.stop()


async def test_each_conversation_commits_in_the_order_sent(client: Client) -> None:
    """The writer's lanes run side by side; a conversation's sends keep their order."""
    users = [await client.user() for _ in range(2)]
    conversations = [(await client.conversation(*users, title=f"g{i}"))["id"] for i in range(6)]
    members = frozenset(u.id for u in users)
    writer = MessageWriter(client.node.services.engine, "lanes-test", 30, lanes=3)
    await writer.start()
    try:
        futures = [
            (
                conversations[i % 6],
                writer.submit(conversations[i % 6], users[i % 2].id, str(i), None, members),
            )
            for i in range(120)
        ]
        results = [(c, (await f)[0]) for c, f in futures]
    finally:
        await writer.stop()
    for conversation in conversations:
        seqs = [m["seq"] for c, m in results if c == conversation]
        assert seqs == list(range(1, 21))


async def test_the_writer_returns_its_connection_as_it_found_it(pg_client: Client) -> None:
    """The writer plans its statement once on a connection of its own; the pool gets that
    connection back with PostgreSQL's default planning."""
    a, b = await pg_client.user(), await pg_client.user()
    conv = await pg_client.conversation(a, b)
    engine = create_async_engine(
        pg_client.node.services.settings.effective_database_url, pool_size=1
    )
    writer = MessageWriter(engine, "reset-test", 30, lanes=1)
    try:
        await writer.start()
        _, created = await writer.submit(conv["id"], a.id, "hello", None, frozenset({a.id, b.id}))
        assert created
        await writer.stop()
        async with engine.connect() as conn:  # the only connection: the writer's
            assert await conn.scalar(text("SHOW plan_cache_mode")) == "auto"
    finally:
        await engine.dispose()


async def test_client_msg_id_is_idempotent(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    watcher = await Socket.connect(client.node, b)
    try:
        first = await client.send(a, conv["id"], "once", client_msg_id="same")
        assert first.status_code == 201
        await watcher.expect("message.new")
        again = await client.send(a, conv["id"], "once (retried)", client_msg_id="same")
        assert again.status_code == 200
        assert again.json() == first.json()
        await watcher.nothing("message.new")
        # Concurrent repeats (one batch, or racing batches) still make one message.
        repeats = await asyncio.gather(
            *(client.send(a, conv["id"], "burst", client_msg_id="burst") for _ in range(10))
        )
        assert len({r.json()["id"] for r in repeats}) == 1
        assert sorted(r.status_code for r in repeats) == [200] * 9 + [201]
        # The same client_msg_id from another sender is another message.
        other = await client.send(b, conv["id"], "mine", client_msg_id="same")
        assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
        assert [m["seq"] for m in await client.messages(a, conv["id"])] == [1, 2, 3]
    finally:
        await watcher.close()


async def test_push_work_is_recorded_with_the_message(client: Client) -> None:
    """The writer inserts the message and its leased push job in one transaction."""
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    engine = client.node.services.engine
    writer = MessageWriter(engine, node_id="writer-test", push_lease_seconds=30)
    await writer.start()
    try:
        members = frozenset({a.id, b.id})
        message, created = await writer.submit(conv["id"], a.id, "hello", "cm-1", members)
        repeat, created_again = await writer.submit(conv["id"], a.id, "hello", "cm-1", members)
    finally:
        await writer.stop()
    assert created and not created_again and repeat == message
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(Message).where(Message.id == message["id"])
        )
    assert count == 1
    job = await push_job_of(engine, message["id"])
    assert job is not None and job.message_ids == [message["id"]]
    assert job.claimed_by == "writer-test"
    assert job.lease_until > message["created_at"]
