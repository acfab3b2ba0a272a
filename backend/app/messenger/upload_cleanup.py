"""The cleanup of uploads: files nobody can be shown any more are removed.

Two kinds go, a batch at a time: uploads never sent with a message within
UPLOAD_UNATTACHED_HOURS (and an hour more, GRACE, so that a send which looked one up
just before it ran out has long finished claiming it), and uploads of deleted messages
(or of messages gone with their conversation). Each file is removed from storage
first, with its thumbnail, and only then its row: a storage failure keeps the row, so
the next run tries again and no file is lost track of.

On several nodes only one sweeps at a time: on PostgreSQL the sweep holds a
session-level advisory lock of its own (the daily cleanup's transaction lock is gone by
then, since storage is not called while it is held); a node that finds it taken skips
its sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, null, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.advisory_locks import advisory_unlock, try_advisory_lock
from app.config import Settings
from app.db import one_of, utcnow
from app.messenger.models import Message, Upload
from app.messenger.storage import Storage

log = logging.getLogger(__name__)

_uploads = Upload.__table__
_messages = Message.__table__

BATCH = 200
# Storage deletes in flight at once (each one a file, or a call to the S3 store).
CONCURRENCY = 16
GRACE = timedelta(hours=1)
# Any fixed number, the same on every node (and not the daily cleanup's): the lock's name.
LOCK_KEY = 0x75706C6F6164  # "upload"


@dataclass(frozen=True)
class UploadCleanupReport:
    removed: int = 0
    failed: int = 0  # kept for the next run: their storage could not be reached
    ran: bool = True  # False when another node was sweeping


async def remove_stale_uploads(
    engine: AsyncEngine, storage: Storage, settings: Settings
) -> UploadCleanupReport:
    """Remove unsent uploads past their time and the uploads of deleted messages, from
    storage and then from the table."""
    cutoff = utcnow() - timedelta(hours=settings.upload_unattached_hours) - GRACE
    unsent = and_(_uploads.c.message_id.is_(None), _uploads.c.created_at < cutoff)
    live_message = (
        select(_messages.c.id)
        .where(_messages.c.id == _uploads.c.message_id, _messages.c.deleted_at.is_(None))
        .correlate(_uploads)
    )
    unshown = and_(_uploads.c.message_id.is_not(None), ~exists(live_message))
    removed = failed = 0
    async with contextlib.AsyncExitStack() as held:
        if engine.dialect.name == "postgresql":
            # A connection of its own holds the lock for the whole sweep (its batches
            # commit on others) and gives it back when closed, even if the sweep fails.
            conn = await held.enter_async_context(engine.connect())
            if not await try_advisory_lock(conn, LOCK_KEY):
                log.info("upload cleanup skipped: another node is running it")
                return UploadCleanupReport(ran=False)
            await conn.commit()  # the lock is the session's: no transaction left open
            held.push_async_callback(_unlock, conn)
        for condition in (unsent, unshown):
            gone, kept = await _sweep(engine, storage, condition)
            removed, failed = removed + gone, failed + kept
    log.info("upload cleanup done removed=%d failed=%d", removed, failed)
    return UploadCleanupReport(removed, failed)


async def _unlock(conn: AsyncConnection) -> None:
    try:
        await advisory_unlock(conn, LOCK_KEY)
    except Exception:
        # A connection that may still hold the lock never goes back to the pool:
        # closing it for good frees the lock.
        await conn.invalidate()
        raise


async def _sweep(
    engine: AsyncEngine, storage: Storage, condition: ColumnElement[bool]
) -> tuple[int, int]:
    """Every upload that meets `condition`, in batches by id: (removed, failed)."""
    removed = failed = 0
    after = ""
    limit = asyncio.Semaphore(CONCURRENCY)
    while True:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        _uploads.c.id,
                        _uploads.c.storage_key,
                        _uploads.c.thumbnail_key,
                        _uploads.c.message_id,
                    )
                    .where(condition, _uploads.c.id > after)
                    .order_by(_uploads.c.id)
                    .limit(BATCH)
                )
            ).all()
        if not rows:
            return removed, failed
        after = rows[-1].id
        outcomes = await asyncio.gather(*(_remove_files(storage, row, limit) for row in rows))
        done = [row for row, ok in zip(rows, outcomes, strict=True) if ok]
        failed += len(rows) - len(done)
        if done:
            ids = [row.id for row in done]
            message_ids = list({row.message_id for row in done if row.message_id is not None})
            async with engine.begin() as conn:
                dialect = conn.dialect.name
                await conn.execute(delete(_uploads).where(one_of(_uploads.c.id, ids, dialect)))
                if message_ids:
                    # A deleted message keeps no names of the files it carried.
                    await conn.execute(
                        update(_messages)
                        .where(
                            one_of(_messages.c.id, message_ids, dialect),
                            _messages.c.deleted_at.is_not(None),
                        )
                        .values(attachments=null())
                    )
            removed += len(done)
        if len(rows) < BATCH:
            return removed, failed


async def _remove_files(storage: Storage, row: Any, limit: asyncio.Semaphore) -> bool:
    """Remove an upload's file and thumbnail from storage; whether both are gone."""
    async with limit:
        try:
            if row.thumbnail_key:
                await storage.delete(row.thumbnail_key)
            await storage.delete(row.storage_key)
        except Exception as exc:  # the store unreachable or refusing: the next run retries
            log.warning(
                "upload not removed from storage id=%s error=%s", row.id, exc.__class__.__name__
            )
            return False
    return True
