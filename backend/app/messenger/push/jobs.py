"""What a push job holds, read back: its messages, each with its conversation's
participants (as the commit handed them over)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.messenger.message_store import Committed, message_dict
from app.messenger.models import Message, Participant

_messages = Message.__table__
_participants = Participant.__table__
CHUNK = 500  # ids per statement


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
