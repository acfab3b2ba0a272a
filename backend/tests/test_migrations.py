"""The schema changes only through Alembic: migrations go up and down on both
databases, and the models agree with them."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import Base
from app.migrations import SchemaOutOfDate, check_schema_current, downgrade, upgrade
from tests.conftest import create_pg_database, drop_pg_database

TABLES = {
    "users",
    "conversations",
    "participants",
    "messages",
    "push_jobs",
    "device_tokens",
    "push_attempts",
}


def _tables(conn) -> set[str]:  # type: ignore[no-untyped-def]
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


def _diff(conn) -> list:  # type: ignore[no-untyped-def]
    return compare_metadata(
        MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_url(request: pytest.FixtureRequest, tmp_path) -> object:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    name, url = await create_pg_database()
    yield url
    await drop_pg_database(name)


async def test_upgrade_downgrade_and_models_agree(empty_url: str) -> None:
    engine = create_async_engine(empty_url)
    try:
        with pytest.raises(SchemaOutOfDate):
            await check_schema_current(engine)
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == TABLES
            assert await conn.run_sync(_diff) == []
        await check_schema_current(engine)
        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == TABLES
    finally:
        await engine.dispose()
