"""Who is in a conversation, cached: every send asks, and membership does not change."""

from __future__ import annotations

from collections import OrderedDict

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import ApiError
from app.messenger.models import Participant

_participants = Participant.__table__


class ParticipantCache:
    def __init__(self, engine: AsyncEngine, max_size: int = 100_000) -> None:
        self._engine = engine
        self._cache: OrderedDict[str, frozenset[int]] = OrderedDict()
        self._max_size = max_size

    async def get(self, conversation_id: str) -> frozenset[int] | None:
        """The participants' ids, or None when there is no such conversation."""
        members = self._cache.get(conversation_id)
        if members is not None:
            self._cache.move_to_end(conversation_id)
            return members
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(_participants.c.user_id).where(
                    _participants.c.conversation_id == conversation_id
                )
            )
            members = frozenset(rows.scalars())
        if not members:
            return None
        self._cache[conversation_id] = members
        if len(self._cache) > self._max_size:
            self._cache.popitem(last=False)
        return members

    async def of_member(self, user_id: int, conversation_id: str) -> frozenset[int]:
        """The conversation's participants if the user is one; 404 or 403 otherwise."""
        participants = await self.get(conversation_id)
        if participants is None:
            raise ApiError(404, "conversation_not_found", "no such conversation")
        if user_id not in participants:
            raise ApiError(403, "not_a_participant", "you are not in this conversation")
        return participants
