"""Lock one user's row for the rest of a transaction: per-user caps count, then insert.

Counting what a user holds and inserting one more are two statements; two requests of
the same user at once could both count under the cap and both insert. Taking the user's
row first makes them go one after the other. PostgreSQL: SELECT ... FOR UPDATE. SQLite
has one writer at a time: a write as the transaction's first statement takes its write
lock, so the count that follows is already inside it.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.models import User

_users = User.__table__


async def lock_user(conn: AsyncConnection, user_id: int) -> None:
    """Hold the user's row until `conn`'s transaction ends."""
    if conn.dialect.name == "postgresql":
        await conn.execute(select(_users.c.id).where(_users.c.id == user_id).with_for_update())
    else:
        await conn.execute(update(_users).where(_users.c.id == user_id).values(id=_users.c.id))
