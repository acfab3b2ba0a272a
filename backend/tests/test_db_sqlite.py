"""The embedded SQLite database: what each connection is set to."""

from __future__ import annotations

from sqlalchemy import text

from app.db import make_engine


async def test_sqlite_syncs_every_commit(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        async with engine.connect() as conn:
            synchronous = (await conn.execute(text("PRAGMA synchronous"))).scalar_one()
            journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
    finally:
        await engine.dispose()
    assert (synchronous, journal) == (2, "wal")  # 2 is FULL: the WAL is synced at commit
