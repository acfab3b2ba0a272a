"""The daily cleanup: stale and inactive devices, old push records; one node at a time."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg
from sqlalchemy import event, func, insert, select, update

from app.db import utcnow
from app.messenger.batched_delete import delete_in_batches
from app.messenger.cleanup import LOCK_KEY, CleanupLoop, run_cleanup
from app.messenger.models import DeviceToken, PushAttempt, PushDecision
from tests.conftest import PG_HOST, PG_PORT, PG_USER
from tests.helpers import Client, eventually, make_settings

D = "/api/v1/messenger/devices/register"


async def _device(client: Client, user, token: str) -> str:  # type: ignore[no-untyped-def]
    r = await client.http.post(
        D,
        json={"device_token": token, "platform": "android", "provider": "fcm"},
        headers=user.headers,
    )
    return r.json()["device_token_id"]


async def test_cleanup_removes_what_is_stale(client: Client, db_url: str) -> None:
    u = await client.user()
    fresh = await _device(client, u, f"fresh-{uuid.uuid4().hex}")
    stale = await _device(client, u, f"stale-{uuid.uuid4().hex}")
    inactive = await _device(client, u, f"inactive-{uuid.uuid4().hex}")
    engine = client.node.services.engine
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(
            update(DeviceToken)
            .where(DeviceToken.id == stale)
            .values(last_used_at=now - timedelta(days=91))
        )
        await conn.execute(
            update(DeviceToken).where(DeviceToken.id == inactive).values(is_active=False)
        )
        await conn.execute(
            PushAttempt.__table__.insert(),
            [
                {
                    "message_id": "m-old",
                    "device_id": fresh,
                    "user_id": u.id,
                    "provider": "fcm",
                    "outcome": "delivered",
                    "attempts": 1,
                    "created_at": now - timedelta(days=31),
                },
                {
                    "message_id": "m-new",
                    "device_id": fresh,
                    "user_id": u.id,
                    "provider": "fcm",
                    "outcome": "delivered",
                    "attempts": 1,
                    "created_at": now,
                },
            ],
        )
    report = await run_cleanup(engine, make_settings(db_url))
    assert report.ran and report.devices_removed >= 2 and report.attempts_removed >= 1
    async with engine.connect() as conn:
        left = set(
            (
                await conn.execute(select(DeviceToken.id).where(DeviceToken.user_id == u.id))
            ).scalars()
        )
        messages = set(
            (
                await conn.execute(
                    select(PushAttempt.message_id).where(PushAttempt.user_id == u.id)
                )
            ).scalars()
        )
    assert left == {fresh}
    assert messages == {"m-new"}


async def test_only_one_node_cleans_at_a_time(pg_client: Client, postgresql_url: str) -> None:
    name = postgresql_url.rsplit("/", 1)[1]
    other = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=name)
    try:
        async with other.transaction():
            await other.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            report = await run_cleanup(
                pg_client.node.services.engine, make_settings(postgresql_url)
            )
            assert report.ran is False
        report = await run_cleanup(pg_client.node.services.engine, make_settings(postgresql_url))
        assert report.ran is True
    finally:
        await other.close()


async def test_loop_runs_on_its_interval(pg_client: Client, postgresql_url: str) -> None:
    u = await pg_client.user()
    inactive = await _device(pg_client, u, f"loop-{uuid.uuid4().hex}")
    engine = pg_client.node.services.engine
    async with engine.begin() as conn:
        await conn.execute(
            update(DeviceToken).where(DeviceToken.id == inactive).values(is_active=False)
        )
    loop = CleanupLoop(engine, make_settings(postgresql_url, cleanup_interval_seconds=0.05))
    await loop.start()

    async def gone() -> bool:
        async with engine.connect() as conn:
            return (
                await conn.scalar(select(DeviceToken.id).where(DeviceToken.id == inactive)) is None
            )

    try:
        await eventually(gone, what="the loop to remove the inactive device")
    finally:
        await loop.stop()


async def test_batches_go_forward_by_id_never_back_to_the_start(client: Client) -> None:
    """Each batch starts past the last id the one before took (keyset), so no batch walks
    again over what its predecessors emptied; every matching row goes, the rest stay."""
    engine = client.node.services.engine
    user_id, other = uuid.uuid4().int % 1_000_000 + 1_000_000, 1
    rows = [
        {
            "user_id": user_id if i % 4 else other,  # a quarter are not to be deleted
            "conversation_id": "c",
            "first_seq": i,
            "last_seq": i,
            "reason": "online",
            "created_at": utcnow(),
        }
        for i in range(47)
    ]
    table = PushDecision.__table__
    async with engine.begin() as conn:
        await conn.execute(insert(PushDecision), rows)
        ids = list(
            (
                await conn.scalars(
                    select(table.c.id).where(table.c.user_id == user_id).order_by(table.c.id)
                )
            ).all()
        )
    selects: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "push_decisions" in statement:
            selects.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        report = await delete_in_batches(engine, table, table.c.user_id == user_id, batch=10)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)
    async with engine.connect() as conn:
        left = await conn.scalar(
            select(func.count()).select_from(table).where(table.c.user_id == user_id)
        )
    assert left == 0 and report.rows == 35 and report.batches == 4
    assert len(selects) == 4
    # The first batch starts at the index's start; every later one past an id.
    assert " > " not in selects[0][0].split("WHERE", 1)[1]
    # Batch n + 1 starts past the last id batch n took: the 10th, 20th and 30th row's.
    for (statement, parameters), bound in zip(selects[1:], ids[9::10], strict=True):
        assert "push_decisions.id > " in statement, statement
        values = parameters.values() if isinstance(parameters, dict) else parameters
        assert bound in list(values), (bound, parameters)
