"""Who is in a conversation, cached: every send asks.

Membership changes (members.py) drop the conversation from the cache of every node at
once: `changed` drops it here and calls `broadcast`, which the many-node fan-out sets to
tell the other nodes (fanout_redis), each of which calls `invalidate`. An entry lives
at most ENTRY_SECONDS, so a missed invalidation (Redis down) does not last; the
database refuses a non-participant's history and changes whatever the cache says."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.errors import ApiError
from app.messenger.models import Conversation, Participant

_participants = Participant.__table__
_conversations = Conversation.__table__
# Conversation types nobody may send into (an admin's announcements reach them another way).
READ_ONLY_TYPES = frozenset({"announcement"})

ENTRY_SECONDS = 30.0  # how long a node trusts what it read without being told


class ParticipantCache:
    def __init__(
        self, engine: AsyncEngine, max_size: int = 100_000, ttl: float = ENTRY_SECONDS
    ) -> None:
        self._engine = engine
        # conversation id -> (participants, until: time.monotonic(), read-only type)
        self._cache: OrderedDict[str, tuple[frozenset[int], float, bool]] = OrderedDict()
        self._max_size = max_size
        self._ttl = ttl
        # Bumped by every invalidation: a lookup that raced one does not keep what it read.
        self._generation = 0
        # Set by the many-node fan-out: tells the other nodes a conversation changed.
        self.broadcast: Callable[[str], Awaitable[None]] | None = None

    def invalidate(self, conversation_id: str | None) -> None:
        """Forget the conversation's participants (they changed); None: forget all."""
        self._generation += 1
        if conversation_id is None:
            self._cache.clear()
        else:
            self._cache.pop(conversation_id, None)

    async def changed(self, conversation_id: str) -> None:
        """The conversation's membership changed (committed): forget it on every node."""
        self.invalidate(conversation_id)
        if self.broadcast is not None:
            await self.broadcast(conversation_id)

    async def get(self, conversation_id: str) -> frozenset[int] | None:
        """The participants' ids, or None when there is no such conversation."""
        found = await self._lookup(conversation_id)
        return None if found is None else found[0]

    async def _lookup(self, conversation_id: str) -> tuple[frozenset[int], bool] | None:
        """The participants' ids and whether nobody may send into the conversation (its
        type, kept in the same entry: it leaves the cache with the participants)."""
        entry = self._cache.get(conversation_id)
        if entry is not None and entry[1] > time.monotonic():
            self._cache.move_to_end(conversation_id)
            return entry[0], entry[2]
        generation = self._generation
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(_participants.c.user_id, _conversations.c.type)
                    .join(_conversations, _conversations.c.id == _participants.c.conversation_id)
                    .where(_participants.c.conversation_id == conversation_id)
                )
            ).all()
            members = frozenset(r.user_id for r in rows)
        if not members:
            return None
        read_only = rows[0].type in READ_ONLY_TYPES
        if generation != self._generation:
            return members, read_only  # may be from before a change: used once, not kept
        self._cache[conversation_id] = (members, time.monotonic() + self._ttl, read_only)
        self._cache.move_to_end(conversation_id)
        if len(self._cache) > self._max_size:
            self._cache.popitem(last=False)
        return members, read_only

    async def of_member(self, user_id: int, conversation_id: str) -> frozenset[int]:
        """The conversation's participants if the user is one; 404 or 403 otherwise."""
        participants = await self.get(conversation_id)
        if participants is None:
            raise ApiError(404, "conversation_not_found", "no such conversation")
        if user_id not in participants:
            raise not_a_participant()
        return participants

    async def of_sender(self, user_id: int, conversation_id: str) -> frozenset[int]:
        """of_member, for a send (or a reaction, or typing): also 403 `read_only` for a
        conversation nobody sends into. Costs nothing more than of_member (the type comes
        with the participants, in the same cache entry)."""
        found = await self._lookup(conversation_id)
        if found is None:
            raise ApiError(404, "conversation_not_found", "no such conversation")
        participants, read_only = found
        if user_id not in participants:
            raise not_a_participant()
        if read_only:
            raise ApiError(403, "read_only", "nobody can send into this conversation")
        return participants


async def joined_seq(conn: AsyncConnection, conversation_id: str, user_id: int) -> int | None:
    """The seq the user joined the conversation at (they see only the messages after it),
    or None when they are not in it."""
    seq: int | None = await conn.scalar(
        select(_participants.c.joined_seq).where(
            _participants.c.conversation_id == conversation_id,
            _participants.c.user_id == user_id,
        )
    )
    return seq


def not_a_participant() -> ApiError:
    return ApiError(403, "not_a_participant", "you are not in this conversation")
