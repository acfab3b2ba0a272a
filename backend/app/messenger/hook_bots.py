"""Webhooks' bots as members: what a group may do with one, and what ends its webhook.

A webhook's bot belongs to its webhook: it is never made an admin or the owner of its
group (its URL is a credential anyone holding it could then use to run the group), and
taking it out of the group revokes the webhook, so the URL answers the same 404 as any
revoked one, and the group's webhook list and what posts agree.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import utcnow
from app.messenger.models import IncomingWebhook
from app.models import User

_hooks = IncomingWebhook.__table__
_users = User.__table__


async def is_hook_bot(conn: AsyncConnection, user_id: int) -> bool:
    """Whether the user is the bot of some webhook (standing or revoked)."""
    found = await conn.scalar(select(_hooks.c.id).where(_hooks.c.bot_id == user_id).limit(1))
    return found is not None


async def revoke_hooks_of(conn: AsyncConnection, conversation_id: str, bot_id: int) -> int:
    """In the caller's transaction, after the bot left the group: revoke its standing
    webhooks there and take the bot from its owner; how many webhooks were revoked."""
    result = await conn.execute(
        update(_hooks)
        .where(
            _hooks.c.conversation_id == conversation_id,
            _hooks.c.bot_id == bot_id,
            _hooks.c.revoked_at.is_(None),
        )
        .values(revoked_at=utcnow())
    )
    revoked = int(result.rowcount)
    if revoked:
        await conn.execute(update(_users).where(_users.c.id == bot_id).values(bot_owner_id=None))
    return revoked
