"""The database's clock, for timers and leases shared by several nodes.

Due times and leases are compared with the time of the database, not of the node asking:
nodes whose clocks disagree still agree on which rows are due and whose lease ran out.
PostgreSQL: now() (the transaction's start). SQLite serves one node from a file on that
node's disk, so its clock is the node's: the time is bound as a parameter, stored in the
same form as every other timestamp (CURRENT_TIMESTAMP's text form would compare wrongly
with the stored one).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import UTCDateTime, utcnow


def db_now(dialect: str) -> ColumnElement[Any]:
    """The current time as the database sees it."""
    if dialect == "postgresql":
        return func.now()
    return literal(utcnow(), UTCDateTime())


def db_later(dialect: str, seconds: float) -> ColumnElement[Any]:
    """The database's current time plus `seconds` (a lease's end, a backoff's)."""
    if dialect == "postgresql":
        return func.now() + literal(timedelta(seconds=seconds))
    return literal(utcnow() + timedelta(seconds=seconds), UTCDateTime())


async def database_now(engine: AsyncEngine) -> datetime:
    """The database's current time, read (one round trip on PostgreSQL)."""
    if engine.dialect.name != "postgresql":
        return utcnow()
    async with engine.connect() as conn:
        now = await conn.scalar(select(func.now()))
    assert isinstance(now, datetime)
    return now
