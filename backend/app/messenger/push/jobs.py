"""What a push job holds, read back: its messages, each with its conversation's
participants (as the commit handed them over); and the delayed jobs, written for the
pushes that wait out their recipient's push delay.

A delayed job is a row like any other, for one recipient, unclaimed, its lease ending
when it is due: it is claimed then, like a job whose node died, on whichever node asks
first, and pushes only what is still unread. Its id is made from the job it came from,
the recipient and the second it is due, so planning that job again (a retry, a crash
before the job was deleted) writes the same row, not a second one.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import upsert
from app.messenger.message_store import Committed, message_dict
from app.messenger.models import Message, Participant, PushJob

_messages = Message.__table__
_participants = Participant.__table__
_jobs = PushJob.__table__
CHUNK = 500  # ids per statement
_DELAYED = uuid.UUID("5b0c1d52-8e0e-4d3a-9a43-6f0d2f3c9d71")  # names delayed job ids


async def load_committed(
    conn: AsyncConnection, message_ids: Collection[str]
) -> dict[str, Committed]:
    """These messages (those still there), each with its conversation's participants."""
    ids = list(set(message_ids))
    messages: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), CHUNK):
        rows = await conn.execute(select(_messages).where(_messages.c.id.in_(ids[i : i + CHUNK])))
        messages.update((r.id, message_dict(r)) for r in rows)
    members: dict[str, set[int]] = {}
    conversations = list({m["conversation_id"] for m in messages.values()})
    for i in range(0, len(conversations), CHUNK):
        for r in await conn.execute(
            select(_participants.c.conversation_id, _participants.c.user_id).where(
                _participants.c.conversation_id.in_(conversations[i : i + CHUNK])
            )
        ):
            members.setdefault(r.conversation_id, set()).add(r.user_id)
    return {
        message_id: Committed(m, frozenset(members.get(m["conversation_id"], ())))
        for message_id, m in messages.items()
    }


def delayed_jobs(
    waiting: Iterable[tuple[str, int, str, datetime]], now: datetime
) -> list[dict[str, Any]]:
    """push_jobs rows for (job it came from, recipient, message, due) pushes: one per job,
    recipient and second they are due, held until the latest of its messages is due."""
    groups: dict[tuple[str, int, int], tuple[list[str], datetime]] = {}
    for job_id, user_id, message_id, due in waiting:
        key = (job_id, user_id, int(due.timestamp()))
        found = groups.get(key)
        if found is None:
            groups[key] = ([message_id], due)
        else:
            if message_id not in found[0]:
                found[0].append(message_id)
            groups[key] = (found[0], max(found[1], due))
    return [
        {
            "id": str(uuid.uuid5(_DELAYED, f"{job_id}:{user_id}:{second}")),
            "message_ids": ids,
            "created_at": now,
            "claimed_by": None,
            "lease_until": due,
            "recipient_id": user_id,
            "after_delay": True,
        }
        for (job_id, user_id, second), (ids, due) in groups.items()
    ]


async def write_delayed(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert these delayed jobs; one already written (same id) stays as it is."""
    if not rows:
        return
    statement = upsert(_jobs, conn.dialect.name).on_conflict_do_nothing(index_elements=["id"])
    for i in range(0, len(rows), CHUNK):
        await conn.execute(statement, rows[i : i + CHUNK])


async def next_delayed(conn: AsyncConnection) -> datetime | None:
    """When the first delayed job not yet claimed is due."""
    return await conn.scalar(
        select(_jobs.c.lease_until)
        .where(_jobs.c.claimed_by.is_(None), _jobs.c.after_delay.is_(True))
        .order_by(_jobs.c.lease_until)
        .limit(1)
    )
