"""The daily cleanup: stale and inactive devices, old push records; one node at a time."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
from sqlalchemy import select, update

from app.db import utcnow
from app.messenger.cleanup import LOCK_KEY, CleanupLoop, run_cleanup
from app.messenger.models import DeviceToken, PushAttempt
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
