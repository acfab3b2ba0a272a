"""Read marks: how far each participant has read a conversation, told to the others."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.jsonutil import dumps
from app.messenger.fanout import Fanout
from app.messenger.models import Conversation, Participant

_conversations = Conversation.__table__
_participants = Participant.__table__


class ReadMarks:
    def __init__(self, engine: AsyncEngine, fanout: Fanout) -> None:
        self._engine = engine
        self._fanout = fanout

    async def mark(
        self, user_id: int, conversation_id: str, seq: int, participants: frozenset[int]
    ) -> None:
        """Move the user's read mark forward to `seq` (never back, never past the last
        message) and, if it moved, tell every socket of the participants."""
        if await self._move(user_id, conversation_id, seq):
            frame = dumps(
                {"type": "read", "conversation_id": conversation_id, "user_id": user_id, "seq": seq}
            )
            await self._fanout.publish(participants, frame)

    async def _move(self, user_id: int, conversation_id: str, seq: int) -> bool:
        last_seq = (
            select(_conversations.c.last_seq)
            .where(_conversations.c.id == conversation_id)
            .scalar_subquery()
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(_participants)
                .where(
                    _participants.c.conversation_id == conversation_id,
                    _participants.c.user_id == user_id,
                    _participants.c.last_read_seq < seq,
                    last_seq >= seq,
                )
                .values(last_read_seq=seq)
            )
        return result.rowcount > 0
