"""A deleted bot leaves its groups: its participant rows go, ownership passes on, and
every member (the bot's sockets included, until its revoked tokens close them) gets
`conversation.updated`, as when a webhook is revoked.

Direct conversations keep the bot: one has exactly two participants, and the other
side keeps the history with a bot that no longer answers.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.jsonutil import dumps
from app.messenger.fanout import Fanout
from app.messenger.members import shared_view
from app.messenger.models import Conversation, Participant
from app.messenger.participants import ParticipantCache
from app.messenger.roles import ADMIN, OWNER

log = logging.getLogger(__name__)

_conversations = Conversation.__table__
_participants = Participant.__table__


async def leave_groups(conn: AsyncConnection, bot_id: int) -> list[str]:
    """In the caller's transaction: take the bot out of every group it is in, handing
    ownership of a group it owned to its longest-standing admin (else member); the
    groups' ids."""
    rows = (
        await conn.execute(
            select(_participants.c.conversation_id, _participants.c.role)
            .join(_conversations, _conversations.c.id == _participants.c.conversation_id)
            .where(_participants.c.user_id == bot_id, _conversations.c.type == "group")
            .order_by(_participants.c.conversation_id)
        )
    ).all()
    for row in rows:
        await conn.execute(
            delete(_participants).where(
                _participants.c.conversation_id == row.conversation_id,
                _participants.c.user_id == bot_id,
            )
        )
        if row.role == OWNER:
            successor = await conn.scalar(
                select(_participants.c.user_id)
                .where(_participants.c.conversation_id == row.conversation_id)
                .order_by(
                    (_participants.c.role != ADMIN),
                    _participants.c.joined_seq,
                    _participants.c.joined_at,
                    _participants.c.user_id,
                )
                .limit(1)
            )
            if successor is not None:
                await conn.execute(
                    update(_participants)
                    .where(
                        _participants.c.conversation_id == row.conversation_id,
                        _participants.c.user_id == successor,
                    )
                    .values(role=OWNER)
                )
    return [row.conversation_id for row in rows]


async def announce_left(
    engine: AsyncEngine,
    participants: ParticipantCache,
    fanout: Fanout,
    bot_id: int,
    conversation_ids: list[str],
) -> None:
    """After the commit: every node forgets the groups' cached members, then their
    members and the bot get `conversation.updated`."""
    for conversation_id in conversation_ids:
        await participants.changed(conversation_id)
        async with engine.connect() as conn:
            conversation = await shared_view(conn, conversation_id)
        frame = dumps({"type": "conversation.updated", "conversation": conversation})
        await fanout.publish(set(conversation["participant_ids"]) | {bot_id}, frame)
        log.info("bot left group bot=%s conversation=%s", bot_id, conversation_id)
