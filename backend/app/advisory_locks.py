"""PostgreSQL advisory locks: one node at a time runs a periodic job.

Each job has its own key, the same on every node. A node that does not get the lock
skips its run rather than waiting: another node is running the job now.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection


async def try_advisory_xact_lock(conn: AsyncConnection, key: int) -> bool:
    """Whether this transaction now holds the lock `key` (until it ends)."""
    return bool(await conn.scalar(select(func.pg_try_advisory_xact_lock(key))))


async def try_advisory_lock(conn: AsyncConnection, key: int) -> bool:
    """Whether this connection now holds the lock `key` (until advisory_unlock or the
    connection closes). The caller commits: the lock is the session's, not the
    transaction's."""
    return bool(await conn.scalar(select(func.pg_try_advisory_lock(key))))


async def advisory_unlock(conn: AsyncConnection, key: int) -> None:
    """Gives back the lock `key` held by this connection, and commits."""
    await conn.scalar(select(func.pg_advisory_unlock(key)))
    await conn.commit()
