"""A pooled connection for reads alone.

On PostgreSQL it runs in autocommit: each statement is its own transaction, so reading
costs no BEGIN before and no ROLLBACK after (two round trips of the three a lone query
takes otherwise). Nothing is lost by it: under READ COMMITTED every statement sees its
own snapshot inside a transaction too. The pool sets the isolation level back when the
connection returns. SQLite is left as it is.
"""

from __future__ import annotations

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
