"""Conversations, their messages and each participant's settings (REST)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, StrictBool, StrictInt, StringConstraints
from sqlalchemy import String, and_, func, select, update
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse, dumps
from app.messenger.models import Conversation, Message, Participant
from app.messenger.participants import participants_for
from app.messenger.presence import presence_frame
from app.messenger.send import message_dict, send_message
from app.models import MAX_ID, User
from app.web import current_user_id, query_int, read_json

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
    content: str
    client_msg_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


class SettingsBody(BaseModel):
    muted: StrictBool | None = None
    mute_until: AwareDatetime | None = None
    push_enabled: StrictBool | None = None


class ReadBody(BaseModel):
    seq: StrictInt = Field(ge=0, le=MAX_ID)


async def require_participant(request: Request, conversation_id: str) -> frozenset[int]:
    """The conversation's participants, if the caller is one (404 / 403 otherwise)."""
    user_id = current_user_id(request)
    return await participants_for(request.app.state.services.participants, user_id, conversation_id)


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
            last.c.id.label("m_id"),
            last.c.seq.label("m_seq"),
            last.c.sender_id.label("m_sender_id"),
            last.c.content.label("m_content"),
            last.c.client_msg_id.label("m_client_msg_id"),
            last.c.created_at.label("m_created_at"),
        )
        .join(me, and_(me.c.conversation_id == _conversations.c.id, me.c.user_id == user_id))
        .outerjoin(
            last,
            and_(
                last.c.conversation_id == _conversations.c.id,
                last.c.seq == _conversations.c.last_seq,
            ),
        )
        .order_by(func.coalesce(last.c.created_at, _conversations.c.created_at).desc())
    )
    if conversation_id is not None:
        stmt = stmt.where(_conversations.c.id == conversation_id)
    return stmt


def _conversation_dict(row: Any) -> dict[str, Any]:
    last_message = None
    if row.m_id is not None:
        last_message = {
            "id": row.m_id,
            "conversation_id": row.id,
            "seq": row.m_seq,
            "sender_id": row.m_sender_id,
            "content": row.m_content,
            "client_msg_id": row.m_client_msg_id,
            "created_at": row.m_created_at,
        }
    return {
        "id": row.id,
        "type": row.type,
        "title": row.title,
        "participant_ids": sorted(int(u) for u in row.member_ids.split(",")),
        "last_message": last_message,
        "unread_count": row.unread_count,
        "created_at": row.created_at,
    }


async def list_conversations(request: Request) -> Response:
    user_id = current_user_id(request)
    async with request.app.state.services.engine.connect() as conn:
        rows = await conn.execute(_list_query(user_id))
        return JSONResponse({"conversations": [_conversation_dict(r) for r in rows]})


async def create_conversation(request: Request) -> Response:
    user_id = current_user_id(request)
    body = await read_json(request, CreateConversationBody)
    services = request.app.state.services
    members = {user_id, *body.participant_ids}
    if body.type == "direct" and len(members) != 2:
        raise ApiError(
            422, "invalid_field", "a direct conversation has exactly one other participant"
        )
    if body.type == "group" and not 2 <= len(members) <= MAX_GROUP_SIZE:
        raise ApiError(422, "invalid_field", f"a group has 2 to {MAX_GROUP_SIZE} participants")
    direct_key = ":".join(str(u) for u in sorted(members)) if body.type == "direct" else None

    async with services.engine.begin() as conn:
        known = set(
            (await conn.execute(select(_users.c.id).where(_users.c.id.in_(members)))).scalars()
        )
        unknown = sorted(members - known)
        if unknown:
            raise ApiError(422, "unknown_user", f"no such user: {', '.join(map(str, unknown))}")
    if direct_key is not None:
        existing = await _find_direct(services, direct_key)
        if existing is not None:
            return await _answer_conversation(services, user_id, existing, 200)

    conversation_id = str(uuid.uuid4())
    now = utcnow()
    try:
        async with services.engine.begin() as conn:
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
                    {"conversation_id": conversation_id, "user_id": u, "joined_at": now}
                    for u in members
                ],
            )
    except IntegrityError:
        # Someone created the same direct conversation at the same moment.
        existing = await _find_direct(services, direct_key) if direct_key else None
        if existing is None:
            raise
        return await _answer_conversation(services, user_id, existing, 200)
    conversation = await _answer_conversation(services, user_id, conversation_id, 201)
    frame = dumps({"type": "conversation.new", "conversation_id": conversation_id})
    await services.fanout.publish(members - {user_id}, frame)
    # New contacts learn each other's presence: the creator everyone's, the rest the
    # creator's (not every pair: a large group would be a flood of frames).
    online = await services.presence.online(members)
    for member in online - {user_id}:
        await services.fanout.publish([user_id], presence_frame(member, online=True))
    if user_id in online:
        await services.fanout.publish(members - {user_id}, presence_frame(user_id, online=True))
    return conversation


async def _find_direct(services: Any, direct_key: str) -> str | None:
    async with services.engine.connect() as conn:
        return await conn.scalar(
            select(_conversations.c.id).where(_conversations.c.direct_key == direct_key)
        )


async def _answer_conversation(
    services: Any, user_id: int, conversation_id: str, status: int
) -> Response:
    async with services.engine.connect() as conn:
        row = (await conn.execute(_list_query(user_id, conversation_id))).one()
    return JSONResponse(_conversation_dict(row), status)


async def list_messages(request: Request) -> Response:
    conversation_id = request.path_params["conversation_id"]
    await require_participant(request, conversation_id)
    after_seq = query_int(request, "after_seq", minimum=0)
    before_seq = query_int(request, "before_seq", minimum=0)
    limit = query_int(request, "limit", minimum=1, maximum=200) or 50
    stmt = select(_messages).where(_messages.c.conversation_id == conversation_id)
    if after_seq is not None:
        stmt = stmt.where(_messages.c.seq > after_seq)
    if before_seq is not None:
        stmt = stmt.where(_messages.c.seq < before_seq)
    # With only before_seq (or nothing), the newest page; otherwise the oldest after after_seq.
    newest_first = after_seq is None
    stmt = stmt.order_by(_messages.c.seq.desc() if newest_first else _messages.c.seq).limit(limit)
    async with request.app.state.services.engine.connect() as conn:
        messages = [message_dict(r) for r in await conn.execute(stmt)]
    if newest_first:
        messages.reverse()
    return JSONResponse({"messages": messages})


async def post_message(request: Request) -> Response:
    conversation_id = request.path_params["conversation_id"]
    user_id = current_user_id(request)
    body = await read_json(request, SendBody)
    message, created = await send_message(
        request.app.state.services, user_id, conversation_id, body.content, body.client_msg_id
    )
    return JSONResponse(message, 201 if created else 200)


def _settings_dict(row: Any) -> dict[str, Any]:
    return {"muted": row.muted, "mute_until": row.mute_until, "push_enabled": row.push_enabled}


async def get_settings(request: Request) -> Response:
    conversation_id = request.path_params["conversation_id"]
    await require_participant(request, conversation_id)
    user_id = current_user_id(request)
    async with request.app.state.services.engine.connect() as conn:
        row = (
            await conn.execute(
                select(_participants).where(
                    _participants.c.conversation_id == conversation_id,
                    _participants.c.user_id == user_id,
                )
            )
        ).one()
    return JSONResponse(_settings_dict(row))


async def put_settings(request: Request) -> Response:
    conversation_id = request.path_params["conversation_id"]
    await require_participant(request, conversation_id)
    user_id = current_user_id(request)
    body = await read_json(request, SettingsBody)
    values = body.model_dump(exclude_unset=True)
    if values.get("muted") is None:
        values.pop("muted", None)
    if values.get("push_enabled") is None:
        values.pop("push_enabled", None)
    where = (_participants.c.conversation_id == conversation_id) & (
        _participants.c.user_id == user_id
    )
    async with request.app.state.services.engine.begin() as conn:
        if values:
            await conn.execute(update(_participants).where(where).values(**values))
        row = (await conn.execute(select(_participants).where(where))).one()
    return JSONResponse(_settings_dict(row))


async def mark_read(services: Any, user_id: int, conversation_id: str, seq: int) -> bool:
    """Move the user's read mark forward to `seq`; True if it moved."""
    last_seq = (
        select(_conversations.c.last_seq)
        .where(_conversations.c.id == conversation_id)
        .scalar_subquery()
    )
    async with services.engine.begin() as conn:
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


async def post_read(request: Request) -> Response:
    conversation_id = request.path_params["conversation_id"]
    participants = await require_participant(request, conversation_id)
    user_id = current_user_id(request)
    body = await read_json(request, ReadBody)
    await announce_read(
        request.app.state.services, user_id, conversation_id, body.seq, participants
    )
    return JSONResponse({"conversation_id": conversation_id, "seq": body.seq})


async def announce_read(
    services: Any, user_id: int, conversation_id: str, seq: int, participants: frozenset[int]
) -> None:
    if await mark_read(services, user_id, conversation_id, seq):
        frame = dumps(
            {"type": "read", "conversation_id": conversation_id, "user_id": user_id, "seq": seq}
        )
        await services.fanout.publish(participants, frame)


BASE = "/api/v1/messenger/conversations"
routes = [
    Route(BASE, list_conversations, methods=["GET"]),
    Route(BASE, create_conversation, methods=["POST"]),
    Route(BASE + "/{conversation_id}/messages", list_messages, methods=["GET"]),
    Route(BASE + "/{conversation_id}/messages", post_message, methods=["POST"]),
    Route(BASE + "/{conversation_id}/settings", get_settings, methods=["GET"]),
    Route(BASE + "/{conversation_id}/settings", put_settings, methods=["PUT"]),
    Route(BASE + "/{conversation_id}/read", post_read, methods=["POST"]),
]
