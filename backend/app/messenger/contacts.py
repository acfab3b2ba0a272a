"""Contact announcements: a user's coming and going, told to everyone who shares a
conversation with them."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.jsonutil import dumps
from app.messenger.fanout import Fanout
from app.messenger.models import Participant

_me = Participant.__table__.alias("me")
_other = Participant.__table__.alias("other")
# Built once: making the aliases' columns again for every socket was 40% of a connect's CPU.
_CONTACTS = (
    select(_other.c.user_id)
    .distinct()
    .join(_me, _me.c.conversation_id == _other.c.conversation_id)
    .where(_me.c.user_id == bindparam("user_id"), _other.c.user_id != bindparam("user_id"))
)


def presence_frame(user_id: int, online: bool) -> str:
    return dumps({"type": "presence", "user_id": user_id, "online": online})


class Contacts:
    def __init__(self, engine: AsyncEngine, fanout: Fanout) -> None:
        self._engine = engine
        self._fanout = fanout

    async def of(self, user_id: int) -> list[int]:
        """Everyone who shares a conversation with the user."""
        async with self._engine.connect() as conn:
            return list((await conn.execute(_CONTACTS, {"user_id": user_id})).scalars())

    async def announce(self, user_id: int, online: bool, contacts: list[int] | None = None) -> None:
        """Tell the user's contacts (these, if known already) that they came or went."""
        if contacts is None:
            contacts = await self.of(user_id)
        if contacts:
            await self._fanout.publish(contacts, presence_frame(user_id, online))
