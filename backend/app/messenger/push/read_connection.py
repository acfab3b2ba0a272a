"""Connections for reads alone.

On PostgreSQL they run in autocommit: each statement is its own transaction, so reading
costs no BEGIN before and no ROLLBACK after (two round trips of the three a lone query
takes otherwise). Nothing is lost by it: under READ COMMITTED every statement sees its
own snapshot inside a transaction too. The pool sets the isolation level back when the
connection returns. SQLite is left as it is.

The push planner reads through a connection it keeps (`KeptReadConnection`): taking
one from the pool and giving it back costs about 0.15 ms of CPU, and 0.5 ms on a node
idle long enough for its caches to go cold (measured here): a tenth of the time from a
lone message's commit to its push.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


@asynccontextmanager
async def read_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection whose statements only read (nothing it does is committed)."""
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


class KeptReadConnection:
    """One read connection kept between uses, for one user at a time; a use while it is
    taken, or on SQLite (no round trips to save), gets one from the pool as ever. A
    statement that fails drops it: the next use connects anew (a restarted server, a
    failover)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._taken = asyncio.Lock()

    @asynccontextmanager
    async def use(self) -> AsyncIterator[AsyncConnection]:
        if self._engine.dialect.name != "postgresql" or self._taken.locked():
            async with read_connection(self._engine) as conn:
                yield conn
            return
        async with self._taken:
            if self._conn is not None and not _usable(self._conn):
                # The server ended it while it was kept (a restart, a failover, an idle
                # timeout): the pool's checkout would have noticed; here it is seen.
                await self.close()
            if self._conn is None:
                conn = await self._engine.connect()
                try:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                except BaseException:
                    await conn.close()
                    raise
                self._conn = conn
            try:
                yield self._conn
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            await conn.close()
        except Exception:  # a broken connection: the pool lets it go
            with contextlib.suppress(Exception):
                await conn.invalidate()
        finally:
            self._conn = None


def _usable(conn: AsyncConnection) -> bool:
    """Not closed on either side, as far as is known without a round trip."""
    if conn.closed or conn.invalidated:
        return False
    driver = conn.sync_connection.connection.driver_connection if conn.sync_connection else None
    return driver is not None and not driver.is_closed()
