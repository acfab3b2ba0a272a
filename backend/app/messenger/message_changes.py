"""Messages that change after they are sent: edits, deletions and reactions, and how a
client catches up on the changes it missed (REST, and `message.updated` frames).

Every change runs in one transaction that first bumps the conversation's change counter
(conversations.change_seq, under its row lock, as a send takes the row for its seq) and
stamps the message with the new value. The lock orders the changes of a conversation by
their counter, and each commits before the next can take it, so a reader that reads the
counter and then the messages changed up to it sees every one of them: a client's cursor
is that counter, and `changed_after` misses nothing and repeats nothing.

A change that changes nothing (a reaction made twice, a message deleted again) writes
nothing and tells no one: the answer is the message as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import null, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import Settings
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse, dumps
from app.messenger.blocks import Blocks
from app.messenger.emoji import canonical_emoji
from app.messenger.fanout import Fanout
from app.messenger.mentions import Mentions
from app.messenger.message_store import change_cursor, reactions_of, with_reactions
from app.messenger.message_text import check_message_text
from app.messenger.models import Conversation, Message, MessageReaction, Participant
from app.messenger.participants import ParticipantCache, not_a_participant
from app.messenger.push.history import blank_notifications_of
from app.messenger.roles import GroupPolicy, role_of
from app.openapi import schemas
from app.openapi.api import documented
from app.ratelimit import RateLimiter, too_many_requests
from app.web import RequestReader, query_int

log = logging.getLogger(__name__)

_conversations = Conversation.__table__
_messages = Message.__table__
_reactions = MessageReaction.__table__
_participants = Participant.__table__

DEFAULT_CHANGES_LIMIT = 100
MAX_CHANGES_LIMIT = 200
MAX_MESSAGE_ID = 64  # longer is no id of ours (they are 36-character UUIDs)

# (conversation_id, message_id) of a message just deleted: its notifications go.
OnDeleted = Callable[[str, str], None]
# What a change does to the locked message, given it and its conversation; None: nothing.
Apply = Callable[[AsyncConnection, Any, Any, int], Awaitable[dict[str, Any] | None]]


class EditBody(BaseModel):
    content: str


class _Unchanged(Exception):
    """The change changes nothing: its transaction is rolled back, the counter unmoved."""


def _not_found() -> ApiError:
    return ApiError(404, "message_not_found", "no such message in this conversation")


def _deleted() -> ApiError:
    return ApiError(409, "message_deleted", "the message was deleted")


class MessageChanges:
    """Edits, deletions, reactions and the catch-up of changes."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        participants: ParticipantCache,
        mentions: Mentions,
        fanout: Fanout,
        limiter: RateLimiter,
        on_deleted: OnDeleted | None = None,
        blocks: Blocks | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._policy = GroupPolicy.from_settings(settings)
        self._participants = participants
        self._mentions = mentions
        self._fanout = fanout
        self._limiter = limiter
        self._on_deleted = on_deleted
        # Edits and reactions reach the other side as sends do: a block refuses them.
        self._blocks = blocks
        self._edit_window = timedelta(seconds=settings.message_edit_window_seconds)

    async def reply_exists(self, conversation_id: str, message_id: str, sender_id: int) -> bool:
        """Whether the sender's reply may quote this message: one of the conversation's
        from after the sender joined, not deleted. (Messages are never removed but with
        their conversation, so it stays so.)"""
        if len(message_id) > MAX_MESSAGE_ID:
            return False
        async with self._engine.connect() as conn:
            found = await conn.scalar(
                select(_messages.c.id)
                .join(
                    _participants,
                    (_participants.c.conversation_id == _messages.c.conversation_id)
                    & (_participants.c.user_id == sender_id),
                )
                .where(
                    _messages.c.id == message_id,
                    _messages.c.conversation_id == conversation_id,
                    _messages.c.deleted_at.is_(None),
                    _messages.c.seq > _participants.c.joined_seq,
                )
            )
        return found is not None

    async def edit(
        self, user_id: int, conversation_id: str, message_id: str, content: str
    ) -> dict[str, Any]:
        """The sender's new content; mentions are found again. 403 for anyone else's
        message or past the edit window, 409 for a deleted one."""
        settings = self._settings
        check_message_text(content, settings.max_message_length)
        participants = await self._participants.of_member(user_id, conversation_id)
        await self._check_blocked(user_id, conversation_id, participants)
        await self._check_rate(user_id)
        mentions = None
        if "@" in content:
            mentions = await self._mentions.resolve(user_id, conversation_id, content, participants)

        async def apply(conn: AsyncConnection, row: Any, conv: Any, seq: int) -> dict[str, Any]:
            if row.deleted_at is not None:
                raise _deleted()
            if row.sender_id != user_id:
                raise ApiError(403, "not_your_message", "only its sender may edit a message")
            now = utcnow()
            if now - row.created_at > self._edit_window:
                raise ApiError(403, "edit_window_passed", "the message is too old to edit")
            return {
                "content": content,
                "mentions": mentions if mentions else null(),
                "edited_at": now,
            }

        message = await self._change(user_id, conversation_id, message_id, apply)
        log.info("message edited user=%s conversation=%s message=%s", *_ids(message, user_id))
        return message

    async def delete(self, user_id: int, conversation_id: str, message_id: str) -> dict[str, Any]:
        """Empty the message, keeping its seq (and reply_to); its reactions and mentions
        go, and so do its notifications (taken down from devices, their text blanked in
        the history). The sender or a group admin; again: the same."""
        await self._participants.of_member(user_id, conversation_id)
        await self._check_rate(user_id)

        async def apply(
            conn: AsyncConnection, row: Any, conv: Any, seq: int
        ) -> dict[str, Any] | None:
            if row.sender_id != user_id and not self._policy.may_delete_others(
                await role_of(conn, conversation_id, user_id)
            ):
                raise ApiError(
                    403, "not_allowed", "only its sender or a group admin may delete a message"
                )
            if row.deleted_at is not None:
                return None
            await conn.execute(_reactions.delete().where(_reactions.c.message_id == row.id))
            # The notification history keeps no text of a deleted message. The row is
            # locked first: a push flush writing its notifications now either finishes
            # before (and is blanked here) or waits and blanks them itself (push.history).
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    select(_messages.c.id).where(_messages.c.id == row.id).with_for_update()
                )
            await blank_notifications_of(conn, row.id)
            return {"content": "", "mentions": null(), "deleted_at": utcnow()}

        message = await self._change(user_id, conversation_id, message_id, apply)
        if self._on_deleted is not None:
            self._on_deleted(conversation_id, message_id)
        log.info("message deleted user=%s conversation=%s message=%s", *_ids(message, user_id))
        return message

    async def react(
        self, user_id: int, conversation_id: str, message_id: str, emoji: str, on: bool
    ) -> dict[str, Any]:
        """Add (on) or take back the caller's reaction with this emoji; either twice is
        once. 422 for anything but one emoji, 409 on a deleted message or past the
        distinct emoji a message may have."""
        canonical = canonical_emoji(emoji)
        if canonical is None:
            raise ApiError(422, "invalid_emoji", "a reaction is one emoji")
        emoji = canonical  # one reaction however its presentation selectors were written
        # A read-only conversation (announcements) takes no reactions: 403 `read_only`.
        participants = await self._participants.of_sender(user_id, conversation_id)
        if on:  # taking one back reaches no one new
            await self._check_blocked(user_id, conversation_id, participants)
        await self._check_rate(user_id)
        limit = self._settings.max_reactions_per_message

        async def apply(
            conn: AsyncConnection, row: Any, conv: Any, seq: int
        ) -> dict[str, Any] | None:
            if row.deleted_at is not None:
                raise _deleted()
            mine = (
                (_reactions.c.message_id == row.id)
                & (_reactions.c.emoji == emoji)
                & (_reactions.c.user_id == user_id)
            )
            if not on:
                removed = await conn.execute(_reactions.delete().where(mine))
                return {} if removed.rowcount else None
            present = set(
                (
                    await conn.execute(
                        select(_reactions.c.emoji, _reactions.c.user_id).where(
                            _reactions.c.message_id == row.id
                        )
                    )
                ).all()
            )
            if (emoji, user_id) in present:
                return None
            if emoji not in {e for e, _ in present} and len({e for e, _ in present}) >= limit:
                raise ApiError(
                    409, "too_many_reactions", f"a message has at most {limit} different emoji"
                )
            await conn.execute(
                _reactions.insert().values(
                    message_id=row.id, emoji=emoji, user_id=user_id, created_at=utcnow()
                )
            )
            return {}

        return await self._change(user_id, conversation_id, message_id, apply)

    async def changed_after(
        self, conversation_id: str, cursor: int, limit: int, after_seq: int = 0
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """The messages changed since the cursor, in the order of their latest change, at
        most `limit`: (messages, the cursor to go on from, whether more follow). Only
        messages after after_seq (the caller's joined_seq) count."""
        async with self._engine.connect() as conn:
            # Read first: every change up to it is committed (see the module's note).
            top = await change_cursor(conn, conversation_id)
            rows = (
                await conn.execute(
                    select(_messages)
                    .where(
                        _messages.c.conversation_id == conversation_id,
                        _messages.c.change_seq > cursor,
                        _messages.c.change_seq <= top,
                        _messages.c.seq > after_seq,
                    )
                    .order_by(_messages.c.change_seq)
                    .limit(limit + 1)
                )
            ).all()
            more = len(rows) > limit
            rows = rows[:limit]
            messages = await with_reactions(conn, rows)
        next_cursor = rows[-1].change_seq if more else max(top, cursor)
        return messages, next_cursor, more

    async def _check_blocked(
        self, user_id: int, conversation_id: str, participants: frozenset[int]
    ) -> None:
        """403 where a send would be refused: the other side of a direct conversation
        blocked the caller (deleting stays allowed)."""
        if self._blocks is not None:
            await self._blocks.check_send(user_id, conversation_id, participants)

    async def _check_rate(self, user_id: int) -> None:
        """Changes count as sends: one bucket, so toggling a reaction cannot flood."""
        settings = self._settings
        retry_after = await self._limiter.hit(
            f"send:{user_id}", settings.send_rate_per_second, settings.send_burst
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many changes; slow down")

    async def _change(
        self,
        user_id: int,
        conversation_id: str,
        message_id: str,
        apply: Apply,
    ) -> dict[str, Any]:
        """Run one change in its transaction (see the module's note) and tell the sockets
        of the participants who have the message (joined before it); the message as it is
        after. Who is in is read under the conversation's row lock, which membership
        changes take too: a just-removed caller is refused, a just-added member is told
        only of what they have."""
        if len(message_id) > MAX_MESSAGE_ID:
            raise _not_found()
        try:
            async with self._engine.begin() as conn:
                conv = (
                    await conn.execute(
                        update(_conversations)
                        .where(_conversations.c.id == conversation_id)
                        .values(change_seq=_conversations.c.change_seq + 1)
                        .returning(
                            _conversations.c.change_seq,
                            _conversations.c.type,
                            _conversations.c.created_by,
                        )
                    )
                ).one()
                row = (
                    await conn.execute(
                        select(_messages).where(
                            _messages.c.id == message_id,
                            _messages.c.conversation_id == conversation_id,
                        )
                    )
                ).first()
                joined = dict(
                    (
                        await conn.execute(
                            select(_participants.c.user_id, _participants.c.joined_seq).where(
                                _participants.c.conversation_id == conversation_id
                            )
                        )
                    ).all()
                )
                if user_id not in joined:  # whatever a node's cache says
                    raise not_a_participant()
                # A message from before the caller joined is none of theirs.
                if row is None or row.seq <= joined[user_id]:
                    raise _not_found()
                recipients = [u for u, seq in joined.items() if seq < row.seq]
                values = await apply(conn, row, conv, conv.change_seq)
                if values is None:
                    raise _Unchanged
                await conn.execute(
                    update(_messages)
                    .where(_messages.c.id == message_id)
                    .values(change_seq=conv.change_seq, **values)
                )
                message = await _message(conn, message_id)
        except _Unchanged:
            async with self._engine.connect() as conn:
                return await _message(conn, message_id)
        frame = dumps({"type": "message.updated", "message": message})
        await self._fanout.publish(recipients, frame)
        return message


async def _message(conn: AsyncConnection, message_id: str) -> dict[str, Any]:
    row = (await conn.execute(select(_messages).where(_messages.c.id == message_id))).one()
    [message] = await with_reactions(conn, [row])
    if row.change_seq is None:  # (never changed: with_reactions did not look)
        message["reactions"] = (await reactions_of(conn, [message_id])).get(message_id, {})
    return message


def _ids(message: dict[str, Any], user_id: int) -> tuple[int, str, str]:
    return user_id, message["conversation_id"], message["id"]


class MessageChangeRoutes:
    """PATCH / DELETE …/messages/{message_id}, PUT / DELETE …/reactions/{emoji}; the
    `changed_after` page of GET …/messages is answered by changes_page."""

    def __init__(self, reader: RequestReader, changes: MessageChanges) -> None:
        self._reader = reader
        self._changes = changes

    @property
    def routes(self) -> list[Route]:
        message = "/api/v1/messenger/conversations/{conversation_id}/messages/{message_id}"
        return [
            Route(message, self.edit, methods=["PATCH"]),
            Route(message, self.delete, methods=["DELETE"]),
            Route(message + "/reactions/{emoji}", self.add_reaction, methods=["PUT"]),
            Route(message + "/reactions/{emoji}", self.remove_reaction, methods=["DELETE"]),
        ]

    @documented(
        "Edit a message (its sender, within the edit window)",
        body=EditBody,
        responses={
            200: schemas.Message,
            403: "not the sender, past the edit window, or not in the conversation",
            404: "no such message in this conversation",
            409: "the message is deleted",
            429: "too many changes",
        },
        tags=["messages"],
    )
    async def edit(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        body = await self._reader.json(request, EditBody)
        cid, mid = request.path_params["conversation_id"], request.path_params["message_id"]
        return JSONResponse(await self._changes.edit(user_id, cid, mid, body.content))

    @documented(
        "Delete a message (its sender, or group admins)",
        responses={
            200: schemas.Message,
            403: "not allowed to delete it",
            404: "no such message in this conversation",
            429: "too many changes",
        },
        tags=["messages"],
    )
    async def delete(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        cid, mid = request.path_params["conversation_id"], request.path_params["message_id"]
        return JSONResponse(await self._changes.delete(user_id, cid, mid))

    @documented(
        "React to a message with an emoji",
        responses={
            200: schemas.Message,
            403: "the caller is not in this conversation",
            404: "no such message in this conversation",
            409: "the message is deleted, or has too many reactions",
            422: "not an emoji",
            429: "too many changes",
        },
        tags=["messages"],
    )
    async def add_reaction(self, request: Request) -> Response:
        return await self._react(request, on=True)

    @documented(
        "Take a reaction back",
        responses={
            200: schemas.Message,
            403: "the caller is not in this conversation",
            404: "no such message in this conversation",
            409: "the message is deleted",
            422: "not an emoji",
            429: "too many changes",
        },
        tags=["messages"],
    )
    async def remove_reaction(self, request: Request) -> Response:
        return await self._react(request, on=False)

    async def _react(self, request: Request, on: bool) -> Response:
        user_id = await self._reader.user_id(request)
        params = request.path_params
        message = await self._changes.react(
            user_id, params["conversation_id"], params["message_id"], params["emoji"], on
        )
        return JSONResponse(message)


async def changes_page(
    request: Request, changes: MessageChanges, conversation_id: str, after_seq: int = 0
) -> Response:
    """GET …/messages?changed_after=<cursor>&limit=: {messages, cursor, has_more} (the
    history route has checked that the caller is a participant, and found the seq they
    joined at: after_seq)."""
    cursor = query_int(request, "changed_after", minimum=0)
    if cursor is None:
        raise ApiError(422, "invalid_field", "changed_after must be an integer")
    limit = query_int(request, "limit", minimum=1, maximum=MAX_CHANGES_LIMIT)
    messages, next_cursor, more = await changes.changed_after(
        conversation_id, cursor, limit or DEFAULT_CHANGES_LIMIT, after_seq
    )
    return JSONResponse({"messages": messages, "cursor": next_cursor, "has_more": more})
