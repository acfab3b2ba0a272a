"""Contact announcements: a user's coming and going, told to everyone who shares a
conversation with them, unless either of the two blocked the other."""

from __future__ import annotations

from sqlalchemy import bindparam, exists, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine

from app.jsonutil import dumps
from app.messenger.fanout import Fanout
from app.messenger.models import Participant
from app.models import Block

_me = Participant.__table__.alias("me")
_other = Participant.__table__.alias("other")
_blocks = Block.__table__
# Everyone the user blocked or was blocked by: read once per query, not once per contact.
_SEVERED = union_all(
    select(_blocks.c.blocked_id).where(_blocks.c.blocker_id == bindparam("user_id")),
    select(_blocks.c.blocker_id).where(_blocks.c.blocked_id == bindparam("user_id")),
)
# Built once: making the aliases' columns again for every socket was 40% of a connect's CPU.
_CONTACTS = (
    select(_other.c.user_id)
    .distinct()
    .join(_me, _me.c.conversation_id == _other.c.conversation_id)
    .where(
        _me.c.user_id == bindparam("user_id"),
        _other.c.user_id != bindparam("user_id"),
        _other.c.user_id.not_in(_SEVERED),
    )
)
_SHARE = select(
    exists()
    .select_from(_me.join(_other, _me.c.conversation_id == _other.c.conversation_id))
    .where(_me.c.user_id == bindparam("a"), _other.c.user_id == bindparam("b"))
)


def presence_frame(user_id: int, online: bool) -> str:
    return dumps({"type": "presence", "user_id": user_id, "online": online})


class Contacts:
    def __init__(self, engine: AsyncEngine, fanout: Fanout) -> None:
        self._engine = engine
        self._fanout = fanout

    async def of(self, user_id: int) -> list[int]:
        """Everyone who shares a conversation with the user, and neither blocked the other."""
        async with self._engine.connect() as conn:
            return list((await conn.execute(_CONTACTS, {"user_id": user_id})).scalars())

    async def share_a_conversation(self, a: int, b: int) -> bool:
        """Whether the two are in a conversation together (blocks aside)."""
        async with self._engine.connect() as conn:
            return bool(await conn.scalar(_SHARE, {"a": a, "b": b}))

    async def announce(self, user_id: int, online: bool, contacts: list[int] | None = None) -> None:
        """Tell the user's contacts (these, if known already) that they came or went."""
        if contacts is None:
            contacts = await self.of(user_id)
        if contacts:
            await self._fanout.publish(contacts, presence_frame(user_id, online))
