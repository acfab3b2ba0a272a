"""Deleting many old rows a batch at a time, each batch its own short transaction.

One DELETE of a month of push records holds its row locks (and, on SQLite, the
database's write lock) until it is done, and bloats one transaction's WAL; a batch of
a few thousand rows by primary key is over in milliseconds, and what the node writes
meanwhile waits at most that long. On PostgreSQL the batch's ids are taken with
SKIP LOCKED, so two nodes deleting at once never wait on each other (a row skipped so
is left for the next run).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import one_of

BATCH = 5_000  # rows per transaction
MAX_BATCHES = 10_000  # per call: what is left waits for the next run


@dataclass(frozen=True, slots=True)
class Deleted:
    rows: int = 0
    batches: int = 0
    largest: int = 0  # the most rows one statement removed

    def __add__(self, other: Deleted) -> Deleted:
        return Deleted(
            self.rows + other.rows,
            self.batches + other.batches,
            max(self.largest, other.largest),
        )


async def delete_in_batches(
    engine: AsyncEngine, table: Table, where: ColumnElement[bool], batch: int = BATCH
) -> Deleted:
    """Delete the rows of `table` matching `where`, at most `batch` per transaction.

    Keyset by primary key: each batch starts past the last id the one before looked at,
    so no batch walks again over the index entries its predecessors emptied (dead until
    vacuum), and one call ends after a single pass."""
    (key,) = table.primary_key.columns
    dialect = engine.dialect.name
    rows = batches = largest = 0
    last: Any = None
    for _ in range(MAX_BATCHES):
        ids: Any = select(key).where(where)
        if last is not None:
            ids = ids.where(key > last)
        ids = ids.order_by(key).limit(batch)
        if dialect == "postgresql":
            ids = ids.with_for_update(skip_locked=True)
        async with engine.begin() as conn:
            found = list((await conn.scalars(ids)).all())
            removed = 0
            if found:
                result = await conn.execute(delete(table).where(one_of(key, found, dialect)))
                removed = result.rowcount
        rows += removed
        batches += 1
        largest = max(largest, removed)
        if len(found) < batch:
            break
        last = found[-1]
        await asyncio.sleep(0)  # let the node's other work in between batches
    return Deleted(rows, batches, largest)
