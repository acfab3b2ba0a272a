"""Conversations, their messages and each participant's settings (REST)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StringConstraints
from sqlalchemy import ColumnElement, String, and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import Settings
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse, dumps
from app.messenger.attachments import MAX_IDS
from app.messenger.blocks import BLOCKED, Blocks
from app.messenger.contacts import presence_frame
from app.messenger.fanout import Fanout
from app.messenger.message_changes import MessageChanges, changes_page
from app.messenger.message_store import FIELDS, message_dict, page_of_messages
from app.messenger.models import Conversation, Message, Participant
from app.messenger.participants import ParticipantCache, joined_seq, not_a_participant
from app.messenger.presence import Presence
from app.messenger.reads import ReadMarks
from app.messenger.roles import MEMBER, OWNER
from app.messenger.scheduled import ScheduledMessages
from app.messenger.send import Sender
from app.models import MAX_ID, User
from app.openapi import schemas
from app.openapi.api import documented
from app.ratelimit import RateLimiter, too_many_requests
from app.web import RequestReader, UTCDatetime, query_int

_conversations = Conversation.__table__
_participants = Participant.__table__
_messages = Message.__table__
_users = User.__table__

MAX_GROUP_SIZE = 1000
UserId = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]


class CreateConversationBody(BaseModel):
    type: Literal["direct", "group"]
    participant_ids: list[UserId] = Field(max_length=MAX_GROUP_SIZE)
    title: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None


class SendBody(BaseModel):
    content: str  # may be empty when it carries attachments
    client_msg_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    # The id of a message of the same conversation this one answers.
    reply_to: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    # Upload ids sent with it (the Sender checks how many, and whose).
    attachments: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=MAX_IDS
    )
    # Send later: stored and sent at this time (scheduled.py); 202 {scheduled_id, send_at}.
    send_at: UTCDatetime | None = None


class SettingsBody(BaseModel):
    muted: StrictBool | None = None
    mute_until: UTCDatetime | None = None
    push_enabled: StrictBool | None = None
    # Which messages push: all, only those that mention the caller, or none.
    notify: Literal["all", "mentions", "none"] | None = None


class ReadBody(BaseModel):
    seq: StrictInt = Field(ge=0, le=MAX_ID)


def _list_query(user_id: int, conversation_id: str | None = None) -> Any:
    """Every conversation of the user with its last message and unread count, one query."""
    me = _participants.alias("me")
    others = _participants.alias("others")
    last = _messages.alias("last")
    member_ids = (
        select(func.aggregate_strings(others.c.user_id.cast(String), ","))
        .where(others.c.conversation_id == _conversations.c.id)
        .scalar_subquery()
    )
    # The sender's own read mark moves with each send, so this counts others' messages.
    unread_count = _conversations.c.last_seq - me.c.last_read_seq
    stmt = (
        select(
            _conversations,
            member_ids.label("member_ids"),
            unread_count.label("unread_count"),
            *(last.c[name].label(f"m_{name}") for name in FIELDS),
        )
        .join(me, and_(me.c.conversation_id == _conversations.c.id, me.c.user_id == user_id))
        .outerjoin(
            last,
            and_(
                last.c.conversation_id == _conversations.c.id,
                last.c.seq == _conversations.c.last_seq,
                # A member who joined after it has no last message yet.
                last.c.seq > me.c.joined_seq,
            ),
        )
        .order_by(func.coalesce(last.c.created_at, _conversations.c.created_at).desc())
    )
    if conversation_id is not None:
        stmt = stmt.where(_conversations.c.id == conversation_id)
    return stmt


def _conversation_dict(row: Any) -> dict[str, Any]:
    last_message = message_dict(row, prefix="m_") if row.m_id is not None else None
    return {
        "id": row.id,
        "type": row.type,
        "title": row.title,
        "created_by": row.created_by,
        "participant_ids": sorted(int(u) for u in row.member_ids.split(",")),
        "last_message": last_message,
        "unread_count": row.unread_count,
        "created_at": row.created_at,
    }


class ConversationRoutes:
    """/api/v1/messenger/conversations and what is under it."""

    def __init__(
        self,
        engine: AsyncEngine,
        reader: RequestReader,
        participants: ParticipantCache,
        sender: Sender,
        reads: ReadMarks,
        fanout: Fanout,
        presence: Presence,
        blocks: Blocks,
        limiter: RateLimiter,
        settings: Settings,
        changes: MessageChanges,
        scheduled: ScheduledMessages | None = None,
    ) -> None:
        self._changes = changes
        self._scheduled = scheduled
        self._engine = engine
        self._limiter = limiter
        self._settings = settings
        self._reader = reader
        self._participants = participants
        self._sender = sender
        self._reads = reads
        self._fanout = fanout
        self._presence = presence
        self._blocks = blocks

    @property
    def routes(self) -> list[Route]:
        base = "/api/v1/messenger/conversations"
        return [
            Route(base, self.list_conversations, methods=["GET"]),
            Route(base, self.create_conversation, methods=["POST"]),
            Route(base + "/{conversation_id}", self.get_conversation, methods=["GET"]),
            Route(base + "/{conversation_id}/messages", self.list_messages, methods=["GET"]),
            Route(base + "/{conversation_id}/messages", self.post_message, methods=["POST"]),
            Route(base + "/{conversation_id}/settings", self.get_settings, methods=["GET"]),
            Route(base + "/{conversation_id}/settings", self.put_settings, methods=["PUT"]),
            Route(base + "/{conversation_id}/read", self.post_read, methods=["POST"]),
        ]

    async def _member(self, request: Request) -> tuple[int, str, frozenset[int]]:
        """(caller, conversation, its participants), if the caller is one (404 / 403)."""
        user_id = await self._reader.user_id(request)
        conversation_id = request.path_params["conversation_id"]
        participants = await self._participants.of_member(user_id, conversation_id)
        return user_id, conversation_id, participants

    @documented(
        "The caller's conversations",
        responses={200: schemas.ConversationList},
        tags=["conversations"],
    )
    async def list_conversations(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        async with self._engine.connect() as conn:
            rows = await conn.execute(_list_query(user_id))
            return JSONResponse({"conversations": [_conversation_dict(r) for r in rows]})

    @documented(
        "One conversation with its members",
        responses={
            200: schemas.ConversationDetail,
            403: "the caller is not in this conversation",
            404: "no such conversation",
        },
        tags=["conversations"],
    )
    async def get_conversation(self, request: Request) -> Response:
        user_id, conversation_id, _ = await self._member(request)
        async with self._engine.connect() as conn:
            return JSONResponse(await conversation_view(conn, user_id, conversation_id))

    @documented(
        "Start a conversation (a direct one with the same person answers the existing one)",
        body=CreateConversationBody,
        responses={
            200: schemas.Conversation,
            201: schemas.Conversation,
            403: "the other side blocked the caller",
            422: "an unknown user, or a bad type or title",
            429: "too many new conversations",
        },
        tags=["conversations"],
    )
    async def create_conversation(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        body = await self._reader.json(request, CreateConversationBody)
        members = {user_id, *body.participant_ids}
        if body.type == "direct" and len(members) != 2:
            raise ApiError(
                422, "invalid_field", "a direct conversation has exactly one other participant"
            )
        if body.type == "group" and not 2 <= len(members) <= MAX_GROUP_SIZE:
            raise ApiError(422, "invalid_field", f"a group has 2 to {MAX_GROUP_SIZE} participants")
        direct_key = ":".join(str(u) for u in sorted(members)) if body.type == "direct" else None

        async with self._engine.begin() as conn:
            known = set(
                (await conn.execute(select(_users.c.id).where(_users.c.id.in_(members)))).scalars()
            )
            unknown = sorted(members - known)
            if unknown:
                raise ApiError(422, "unknown_user", f"no such user: {', '.join(map(str, unknown))}")
        if await self._blocks.blockers_among(user_id, members - {user_id}):
            raise ApiError(403, BLOCKED, "someone in this conversation has blocked you")
        if direct_key is not None:
            existing = await self._find_direct(direct_key)
            if existing is not None:
                return await self._answer_conversation(user_id, existing, 200)
        # Only what creates a conversation counts (opening an existing direct one is free).
        retry_after = await self._limiter.hit(
            f"conversation:{user_id}",
            self._settings.conversation_rate_per_minute / 60,
            self._settings.conversation_burst,
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many new conversations; try again later")

        conversation_id = str(uuid.uuid4())
        now = utcnow()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    _conversations.insert().values(
                        id=conversation_id,
                        type=body.type,
                        title=body.title or None if body.type == "group" else None,
                        created_by=user_id,
                        created_at=now,
                        last_seq=0,
                        direct_key=direct_key,
                    )
                )
                await conn.execute(
                    _participants.insert(),
                    [
                        {
                            "conversation_id": conversation_id,
                            "user_id": u,
                            "joined_at": now,
                            "role": OWNER if body.type == "group" and u == user_id else MEMBER,
                        }
                        for u in members
                    ],
                )
        except IntegrityError:
            # Someone created the same direct conversation at the same moment.
            existing = await self._find_direct(direct_key) if direct_key else None
            if existing is None:
                raise
            return await self._answer_conversation(user_id, existing, 200)
        conversation = await self._answer_conversation(user_id, conversation_id, 201)
        frame = dumps({"type": "conversation.new", "conversation_id": conversation_id})
        await self._fanout.publish(members - {user_id}, frame)
        # New contacts learn each other's presence: the creator everyone's, the rest the
        # creator's (not every pair: a large group would be a flood of frames); none
        # between the creator and someone they blocked.
        contacts = members - {user_id} - await self._blocks.severed(user_id, members - {user_id})
        online = await self._presence.online(contacts | {user_id})
        for member in online - {user_id}:
            await self._fanout.publish([user_id], presence_frame(member, online=True))
        if user_id in online:
            await self._fanout.publish(contacts, presence_frame(user_id, online=True))
        return conversation

    async def _find_direct(self, direct_key: str) -> str | None:
        async with self._engine.connect() as conn:
            found: str | None = await conn.scalar(
                select(_conversations.c.id).where(_conversations.c.direct_key == direct_key)
            )
            return found

    async def _answer_conversation(
        self, user_id: int, conversation_id: str, status: int
    ) -> Response:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_list_query(user_id, conversation_id))).one()
        return JSONResponse(_conversation_dict(row), status)

    @documented(
        "Messages in ascending seq, or those changed since a cursor",
        query=schemas.MessagesQuery,
        responses={
            200: schemas.MessageList,
            403: "the caller is not in this conversation",
            404: "no such conversation",
        },
        tags=["messages"],
    )
    async def list_messages(self, request: Request) -> Response:
        user_id, conversation_id, _ = await self._member(request)
        # A member sees the history from when they joined: what came before is left out.
        async with self._engine.connect() as conn:
            joined = await joined_seq(conn, conversation_id, user_id)
        if joined is None:  # the cache still says member; the database does not
            raise not_a_participant()
        if "changed_after" in request.query_params:
            return await changes_page(request, self._changes, conversation_id, joined)
        after_seq = query_int(request, "after_seq", minimum=0)
        before_seq = query_int(request, "before_seq", minimum=0)
        limit = query_int(request, "limit", minimum=1, maximum=200) or 50
        messages, cursor = await page_of_messages(
            self._engine, conversation_id, after_seq, before_seq, limit, joined
        )
        # cursor: where this client's changed_after starts (message_changes).
        return JSONResponse({"messages": messages, "cursor": cursor})

    @documented(
        "Send a message, or schedule it with send_at",
        body=SendBody,
        responses={
            200: schemas.Message,
            201: schemas.Message,
            202: schemas.Scheduled,
            403: "not in this conversation, blocked, or read-only",
            404: "no such conversation",
            409: "too many scheduled messages pending",
            429: "too many messages",
            503: "the node is overloaded; retry after Retry-After",
        },
        tags=["messages"],
    )
    async def post_message(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        conversation_id = request.path_params["conversation_id"]
        body = await self._reader.json(request, SendBody)
        if body.send_at is not None:
            if self._scheduled is None:  # never sent now instead of later
                raise ApiError(503, "unavailable", "scheduled messages are not available here")
            return await self._scheduled.schedule(
                user_id,
                conversation_id,
                body.content,
                body.client_msg_id,
                body.reply_to,
                body.attachments,
                body.send_at,
            )
        message, created = await self._sender.send(
            user_id,
            conversation_id,
            body.content,
            body.client_msg_id,
            body.reply_to,
            body.attachments,
        )
        return JSONResponse(message, 201 if created else 200)

    @documented(
        "The caller's settings for a conversation",
        responses={
            200: schemas.ConversationSettings,
            403: "the caller is not in this conversation",
            404: "no such conversation",
        },
        tags=["conversations"],
    )
    async def get_settings(self, request: Request) -> Response:
        user_id, conversation_id, _ = await self._member(request)
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(_participants).where(_me(conversation_id, user_id)))
            ).one()
        return JSONResponse(_settings_dict(row))

    @documented(
        "Change the caller's settings for a conversation",
        body=SettingsBody,
        responses={
            200: schemas.ConversationSettings,
            403: "the caller is not in this conversation",
            404: "no such conversation",
        },
        tags=["conversations"],
    )
    async def put_settings(self, request: Request) -> Response:
        user_id, conversation_id, _ = await self._member(request)
        body = await self._reader.json(request, SettingsBody)
        values = body.model_dump(exclude_unset=True)
        if values.get("muted") is None:
            values.pop("muted", None)
        if values.get("push_enabled") is None:
            values.pop("push_enabled", None)
        if values.get("notify") is None:
            values.pop("notify", None)
        where = _me(conversation_id, user_id)
        async with self._engine.begin() as conn:
            if values:
                await conn.execute(update(_participants).where(where).values(**values))
            row = (await conn.execute(select(_participants).where(where))).one()
        return JSONResponse(_settings_dict(row))

    @documented(
        "Mark the conversation read up to seq",
        body=ReadBody,
        responses={
            200: schemas.ReadMark,
            403: "the caller is not in this conversation",
            404: "no such conversation",
        },
        tags=["messages"],
    )
    async def post_read(self, request: Request) -> Response:
        user_id, conversation_id, participants = await self._member(request)
        body = await self._reader.json(request, ReadBody)
        await self._reads.mark(user_id, conversation_id, body.seq, participants)
        return JSONResponse({"conversation_id": conversation_id, "seq": body.seq})


async def participants_of(conn: AsyncConnection, conversation_id: str) -> list[dict[str, Any]]:
    """[{user_id, role, last_read_seq}] of a conversation, by user id."""
    members = await conn.execute(
        select(_participants.c.user_id, _participants.c.role, _participants.c.last_read_seq)
        .where(_participants.c.conversation_id == conversation_id)
        .order_by(_participants.c.user_id)
    )
    # Read receipts ("Seen by") survive a reload from here.
    return [
        {"user_id": m.user_id, "role": m.role, "last_read_seq": m.last_read_seq} for m in members
    ]


async def conversation_view(
    conn: AsyncConnection, user_id: int, conversation_id: str
) -> dict[str, Any]:
    """The conversation as its participant user_id sees it, with its participants."""
    row = (await conn.execute(_list_query(user_id, conversation_id))).first()
    if row is None:  # just removed, though a cache still says member
        raise not_a_participant()
    return {**_conversation_dict(row), "participants": await participants_of(conn, row.id)}


def _me(conversation_id: str, user_id: int) -> ColumnElement[bool]:
    """The caller's own participant row."""
    return (_participants.c.conversation_id == conversation_id) & (
        _participants.c.user_id == user_id
    )


def _settings_dict(row: Any) -> dict[str, Any]:
    return {
        "muted": row.muted,
        "mute_until": row.mute_until,
        "push_enabled": row.push_enabled,
        "notify": row.notify,
    }
