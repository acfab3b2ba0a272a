"""The push planner's kept read connection: the same connection use after use, the
pool's for a use while it is taken, a new one after a failure, and autocommit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import make_engine
from app.messenger.push.read_connection import KeptReadConnection
from tests.helpers import eventually


@pytest.fixture
async def kept(postgresql_url: str) -> AsyncIterator[tuple[AsyncEngine, KeptReadConnection]]:
    engine = make_engine(postgresql_url, pool_size=2, max_overflow=0)
    reads = KeptReadConnection(engine)
    try:
        yield engine, reads
    finally:
        await reads.close()
        await engine.dispose()


async def _backend_pid(conn) -> int:
    return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_one_connection_is_kept_between_uses(kept) -> None:
    engine, reads = kept
    async with reads.use() as conn:
        first = await _backend_pid(conn)
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None and not driver.is_in_transaction()  # autocommit
    async with reads.use() as conn:
        assert await _backend_pid(conn) == first
        # Taken: a second use at the same time reads on a connection of the pool.
        async with reads.use() as other:
            assert await _backend_pid(other) != first
    assert engine.pool.checkedout() == 1  # the kept one only
    await reads.close()
    assert engine.pool.checkedout() == 0


async def test_a_failed_statement_drops_the_connection(kept) -> None:
    _, reads = kept
    async with reads.use() as conn:
        first = await _backend_pid(conn)
    with pytest.raises(DBAPIError):
        async with reads.use() as conn:
            # As a server restart does to it: the connection is ended under it.
            await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
    async with reads.use() as conn:
        assert await _backend_pid(conn) != first


async def test_a_connection_the_server_ended_while_kept_is_replaced(kept) -> None:
    engine, reads = kept
    async with reads.use() as conn:
        first = await _backend_pid(conn)
    # Between two uses, as a restart or an idle timeout ends it.
    async with engine.connect() as other:
        await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    await eventually(lambda: _driver_closed(reads))
    async with reads.use() as conn:  # no error: a new connection
        assert await _backend_pid(conn) != first


def _driver_closed(reads: KeptReadConnection) -> bool:
    conn = reads._conn
    assert conn is not None and conn.sync_connection is not None
    driver = conn.sync_connection.connection.driver_connection
    return driver is not None and driver.is_closed()


async def test_sqlite_reads_on_the_pool(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    reads = KeptReadConnection(engine)
    try:
        async with reads.use() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        assert engine.pool.checkedout() == 0
    finally:
        await reads.close()
        await engine.dispose()
