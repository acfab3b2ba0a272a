"""The push planner's kept read connection: the same connection use after use, the
pool's for a use while it is taken, a new one after a failure, and autocommit."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.db import make_engine
from app.messenger.push.read_connection import KeptReadConnection


async def _backend_pid(conn) -> int:
    return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_one_connection_is_kept_between_uses(postgresql_url: str) -> None:
    engine = make_engine(postgresql_url, pool_size=2, max_overflow=0)
    reads = KeptReadConnection(engine)
    try:
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
    finally:
        await reads.close()
        assert engine.pool.checkedout() == 0
        await engine.dispose()


async def test_a_failed_statement_drops_the_connection(postgresql_url: str) -> None:
    engine = make_engine(postgresql_url, pool_size=2, max_overflow=0)
    reads = KeptReadConnection(engine)
    try:
        async with reads.use() as conn:
            first = await _backend_pid(conn)
        with pytest.raises(DBAPIError):
            async with reads.use() as conn:
                # As a server restart does to it: the connection is ended under it.
                await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        async with reads.use() as conn:
            assert await _backend_pid(conn) != first
    finally:
        await reads.close()
        await engine.dispose()


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
