"""A group's members and roles (REST): rename, add, remove or leave, change a role.

Each change is one transaction under the conversation's row lock, the lock the send
path takes to number messages: a new member's joined_seq (the conversation's last_seq
at that moment) is exact, and they see only the messages after it (history, search and
changed_after leave the earlier ones out). Their read mark starts there too.

Once committed, the conversation leaves the participant cache of every node
(ParticipantCache.changed) before any frame goes out, so a removed member gets none of
its frames and none of its pushes from then on; every route already refuses them, as
they are no longer a participant (403). Then `conversation.updated {conversation}` goes
to every member's sockets, those who just joined and those just removed included (so
their clients add or drop it); new members get `conversation.new` as well.

The frame's conversation is the same for everyone: no unread_count or last_message
(those are each reader's; GET the conversation for them). When the last member leaves,
the group stays, empty: its history is nobody's to read, and nothing refers to it.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse, dumps
from app.messenger.blocks import BLOCKED, Blocks
from app.messenger.conversations import (
    MAX_GROUP_SIZE,
    UserId,
    conversation_view,
    participants_of,
)
from app.messenger.fanout import Fanout
from app.messenger.hook_bots import is_hook_bot, revoke_hooks_of
from app.messenger.models import Conversation, Participant
from app.messenger.participants import ParticipantCache
from app.messenger.roles import (
    ADMIN,
    MEMBER,
    OWNER,
    GroupPolicy,
    may_remove,
    may_set_roles,
)
from app.models import MAX_ID, User
from app.openapi import schemas
from app.openapi.api import documented
from app.web import RequestReader

log = logging.getLogger(__name__)

_conversations = Conversation.__table__
_participants = Participant.__table__
_users = User.__table__

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class TitleBody(BaseModel):
    # null takes the title away.
    title: Title | None


class AddBody(BaseModel):
    user_ids: list[UserId] = Field(min_length=1, max_length=MAX_GROUP_SIZE)


class RoleBody(BaseModel):
    # "owner" hands ownership over: the owner becomes an admin.
    role: Literal["owner", "admin", "member"]


class _Member:
    __slots__ = ("joined_at", "joined_seq", "role", "user_id")

    def __init__(self, row: Any) -> None:
        self.user_id: int = row.user_id
        self.role: str = row.role
        self.joined_at = row.joined_at
        self.joined_seq: int = row.joined_seq


def _not_a_group() -> ApiError:
    return ApiError(409, "not_a_group", "a direct conversation has no members to manage")


def _not_allowed(message: str) -> ApiError:
    return ApiError(403, "not_allowed", message)


def _path_user(request: Request) -> int:
    user_id: int = request.path_params["user_id"]
    if not 1 <= user_id <= MAX_ID:
        raise ApiError(404, "participant_not_found", "no such participant")
    return user_id


async def _lock(conn: AsyncConnection, conversation_id: str) -> Any:
    """The conversation's row, locked for the transaction (type, last_seq)."""
    row = (
        await conn.execute(
            update(_conversations)
            .where(_conversations.c.id == conversation_id)
            .values(last_seq=_conversations.c.last_seq)
            .returning(_conversations.c.type, _conversations.c.last_seq)
        )
    ).first()
    if row is None:
        raise ApiError(404, "conversation_not_found", "no such conversation")
    return row


async def _members(conn: AsyncConnection, conversation_id: str) -> dict[int, _Member]:
    rows = await conn.execute(
        select(
            _participants.c.user_id,
            _participants.c.role,
            _participants.c.joined_at,
            _participants.c.joined_seq,
        ).where(_participants.c.conversation_id == conversation_id)
    )
    return {r.user_id: _Member(r) for r in rows}


def _caller(members: dict[int, _Member], kind: str, user_id: int) -> _Member:
    """The caller's membership of a group they are in (it may have changed since the
    cache said so): 403, or 409 for a direct conversation."""
    me = members.get(user_id)
    if me is None:
        raise ApiError(403, "not_a_participant", "you are not in this conversation")
    if kind != "group":
        raise _not_a_group()
    return me


def _successor(members: dict[int, _Member]) -> _Member | None:
    """Who owns the group after its owner: the longest-standing admin, else the
    longest-standing member."""
    if not members:
        return None
    return min(
        members.values(),
        key=lambda m: (m.role != ADMIN, m.joined_seq, m.joined_at, m.user_id),
    )


def _set_role(conversation_id: str, user_id: int, role: str) -> Any:
    return (
        update(_participants)
        .where(
            _participants.c.conversation_id == conversation_id,
            _participants.c.user_id == user_id,
        )
        .values(role=role)
    )


async def shared_view(conn: AsyncConnection, conversation_id: str) -> dict[str, Any]:
    """The conversation as every member sees it (what `conversation.updated` carries)."""
    row = (
        await conn.execute(
            select(
                _conversations.c.id,
                _conversations.c.type,
                _conversations.c.title,
                _conversations.c.created_by,
                _conversations.c.created_at,
            ).where(_conversations.c.id == conversation_id)
        )
    ).one()
    participants = await participants_of(conn, conversation_id)
    return {
        "id": row.id,
        "type": row.type,
        "title": row.title,
        "created_by": row.created_by,
        "participant_ids": [p["user_id"] for p in participants],
        "created_at": row.created_at,
        "participants": participants,
    }


class Members:
    """What changes a group's members, roles and title (see the module's note)."""

    def __init__(
        self,
        engine: AsyncEngine,
        participants: ParticipantCache,
        fanout: Fanout,
        blocks: Blocks,
        policy: GroupPolicy,
    ) -> None:
        self._policy = policy
        self._engine = engine
        self._participants = participants
        self._fanout = fanout
        self._blocks = blocks

    async def rename(self, user_id: int, conversation_id: str, title: str | None) -> None:
        await self._participants.of_member(user_id, conversation_id)
        async with self._engine.begin() as conn:
            conv = await _lock(conn, conversation_id)
            members = await _members(conn, conversation_id)
            if not self._policy.may_rename(_caller(members, conv.type, user_id).role):
                raise _not_allowed("only a group admin may rename it")
            await conn.execute(
                update(_conversations)
                .where(_conversations.c.id == conversation_id)
                .values(title=title)
            )
        log.info("group renamed user=%s conversation=%s", user_id, conversation_id)
        await self._announce(conversation_id, set(members), membership_changed=False)

    async def add(self, user_id: int, conversation_id: str, user_ids: list[int]) -> None:
        """Add these users as members (those already in are left as they are). Every
        refusal refuses the whole call."""
        await self._participants.of_member(user_id, conversation_id)
        wanted = set(user_ids)
        async with self._engine.begin() as conn:
            conv = await _lock(conn, conversation_id)
            members = await _members(conn, conversation_id)
            if not self._policy.may_add(_caller(members, conv.type, user_id).role):
                raise _not_allowed("only a group admin may add members")
            # Only those who would join, read under the lock: members already in are left
            # as they are, and no one checked can be deleted before they are written.
            new = sorted(wanted - set(members))
            known = set(
                (
                    await conn.execute(
                        # FOR SHARE (PostgreSQL): no one found is deleted before the insert.
                        select(_users.c.id).where(_users.c.id.in_(new)).with_for_update(read=True)
                    )
                ).scalars()
            )
            unknown = sorted(set(new) - known)
            if unknown:
                raise ApiError(422, "unknown_user", f"no such user: {', '.join(map(str, unknown))}")
            if await self._blocks.severed(user_id, new):
                raise ApiError(
                    403, BLOCKED, "you and someone you are adding have blocked each other"
                )
            if len(members) + len(new) > MAX_GROUP_SIZE:
                raise ApiError(
                    422, "too_many_members", f"a group has at most {MAX_GROUP_SIZE} members"
                )
            if new:
                now = utcnow()
                # They read from here on: nothing before is theirs, so nothing is unread.
                await conn.execute(
                    _participants.insert(),
                    [
                        {
                            "conversation_id": conversation_id,
                            "user_id": u,
                            "joined_at": now,
                            "role": MEMBER,
                            "joined_seq": conv.last_seq,
                            "last_read_seq": conv.last_seq,
                        }
                        for u in new
                    ],
                )
        if not new:
            return
        log.info(
            "members added user=%s conversation=%s added=%d at_seq=%s",
            user_id,
            conversation_id,
            len(new),
            conv.last_seq,
        )
        await self._announce(conversation_id, set(members) | set(new), new_members=new)

    async def remove(self, user_id: int, conversation_id: str, target: int) -> None:
        """Remove target from the group; target == user_id: leave it."""
        await self._participants.of_member(user_id, conversation_id)
        successor: _Member | None = None
        async with self._engine.begin() as conn:
            conv = await _lock(conn, conversation_id)
            members = await _members(conn, conversation_id)
            me = _caller(members, conv.type, user_id)
            them = members.get(target)
            if them is None:
                raise ApiError(404, "participant_not_found", "no such participant")
            if target != user_id and not may_remove(me.role, them.role):
                raise _not_allowed(
                    "the owner cannot be removed"
                    if them.role == OWNER
                    else "only the owner may remove an admin"
                    if them.role == ADMIN
                    else "only a group admin may remove members"
                )
            await conn.execute(
                delete(_participants).where(
                    _participants.c.conversation_id == conversation_id,
                    _participants.c.user_id == target,
                )
            )
            hooks_revoked = await revoke_hooks_of(conn, conversation_id, target)
            if them.role == OWNER:
                successor = _successor({u: m for u, m in members.items() if u != target})
                if successor is not None:
                    await conn.execute(_set_role(conversation_id, successor.user_id, OWNER))
        log.info(
            "member removed user=%s conversation=%s target=%s new_owner=%s hooks_revoked=%d",
            user_id,
            conversation_id,
            target,
            successor.user_id if successor else None,
            hooks_revoked,
        )
        await self._announce(conversation_id, set(members))

    async def set_role(self, user_id: int, conversation_id: str, target: int, role: str) -> None:
        """The owner makes target an admin or a member, or hands them ownership."""
        await self._participants.of_member(user_id, conversation_id)
        async with self._engine.begin() as conn:
            conv = await _lock(conn, conversation_id)
            members = await _members(conn, conversation_id)
            me = _caller(members, conv.type, user_id)
            if not may_set_roles(me.role):
                raise _not_allowed("only the owner may change roles")
            them = members.get(target)
            if them is None:
                raise ApiError(404, "participant_not_found", "no such participant")
            if target == user_id:
                if role == OWNER:
                    return
                raise ApiError(
                    409, "last_owner", "a group keeps its owner: hand ownership to someone first"
                )
            if them.role == role:
                return
            if role != MEMBER and await is_hook_bot(conn, target):
                raise _not_allowed("a webhook's bot cannot run a group")
            await conn.execute(_set_role(conversation_id, target, role))
            if role == OWNER:
                await conn.execute(_set_role(conversation_id, user_id, ADMIN))
        log.info(
            "role changed user=%s conversation=%s target=%s role=%s",
            user_id,
            conversation_id,
            target,
            role,
        )
        await self._announce(conversation_id, set(members), membership_changed=False)

    async def _announce(
        self,
        conversation_id: str,
        recipients: set[int],
        new_members: list[int] | None = None,
        membership_changed: bool = True,
    ) -> None:
        """After a commit: caches first (on every node), then the frames."""
        if membership_changed:
            await self._participants.changed(conversation_id)
        async with self._engine.connect() as conn:
            conversation = await shared_view(conn, conversation_id)
        frame = dumps({"type": "conversation.updated", "conversation": conversation})
        await self._fanout.publish(recipients, frame)
        if new_members:
            new = dumps({"type": "conversation.new", "conversation_id": conversation_id})
            await self._fanout.publish(new_members, new)


class MemberRoutes:
    """PATCH …/conversations/{id}; POST …/participants; DELETE and PATCH (or PUT)
    …/participants/{user_id}."""

    def __init__(self, engine: AsyncEngine, reader: RequestReader, members: Members) -> None:
        self._engine = engine
        self._reader = reader
        self._members = members

    @property
    def routes(self) -> list[Route]:
        base = "/api/v1/messenger/conversations/{conversation_id}"
        member = base + "/participants/{user_id:int}"
        return [
            Route(base, self.rename, methods=["PATCH"]),
            Route(base + "/participants", self.add, methods=["POST"]),
            Route(member, self.remove, methods=["DELETE"]),
            Route(member, self.set_role, methods=["PATCH", "PUT"]),
        ]

    async def _answer(self, user_id: int, conversation_id: str) -> Response:
        """The conversation as the caller sees it; after leaving, as its members do."""
        async with self._engine.connect() as conn:
            still_in = await conn.scalar(
                select(_participants.c.user_id).where(
                    _participants.c.conversation_id == conversation_id,
                    _participants.c.user_id == user_id,
                )
            )
            if still_in is not None:
                return JSONResponse(await conversation_view(conn, user_id, conversation_id))
            return JSONResponse(await shared_view(conn, conversation_id))

    @documented(
        "Rename a group",
        body=TitleBody,
        responses={
            200: schemas.ConversationDetail,
            403: "only group admins may, or the caller is not in it",
            404: "no such conversation",
            409: "not a group",
        },
        tags=["members"],
    )
    async def rename(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        conversation_id = request.path_params["conversation_id"]
        body = await self._reader.json(request, TitleBody)
        await self._members.rename(user_id, conversation_id, body.title)
        return await self._answer(user_id, conversation_id)

    @documented(
        "Add people to a group",
        body=AddBody,
        responses={
            200: schemas.ConversationDetail,
            403: "only group admins may, or the caller is not in it",
            404: "no such conversation",
            409: "not a group, or it would be too large",
            422: "an unknown user",
        },
        tags=["members"],
    )
    async def add(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        conversation_id = request.path_params["conversation_id"]
        body = await self._reader.json(request, AddBody)
        await self._members.add(user_id, conversation_id, body.user_ids)
        return await self._answer(user_id, conversation_id)

    @documented(
        "Remove a member (yourself: leave)",
        responses={
            200: schemas.ConversationAfterRemoval,
            403: "only group admins may, or the caller is not in it",
            404: "no such conversation or participant",
            409: "not a group",
        },
        tags=["members"],
    )
    async def remove(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        conversation_id = request.path_params["conversation_id"]
        await self._members.remove(user_id, conversation_id, _path_user(request))
        return await self._answer(user_id, conversation_id)

    @documented(
        "Set a member's role (owner hands ownership over)",
        body=RoleBody,
        responses={
            200: schemas.ConversationDetail,
            403: "only group admins may, or the caller is not in it",
            404: "no such conversation or participant",
            409: "not a group",
        },
        tags=["members"],
    )
    async def set_role(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        conversation_id = request.path_params["conversation_id"]
        target = _path_user(request)
        body = await self._reader.json(request, RoleBody)
        await self._members.set_role(user_id, conversation_id, target, body.role)
        return await self._answer(user_id, conversation_id)
