"""Blocks: who refuses whom, and the /api/v1/me/blocks routes.

A blocked user cannot start a direct conversation with the blocker, put them in a
group, or send to them in a direct conversation; presence flows between neither of
the two (see contacts). Sends ask on every message, so a direct conversation's answer
is cached: dropped at once on this node when either of its two blocks or unblocks,
and re-read after `block_cache_seconds` everywhere else.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import Settings
from app.db import one_of, utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.messenger.contacts import Contacts, presence_frame
from app.messenger.fanout import Fanout
from app.messenger.models import Conversation
from app.messenger.presence import Presence
from app.models import MAX_ID, Block, User
from app.openapi import schemas
from app.openapi.api import documented
from app.web import RequestReader

log = logging.getLogger(__name__)

_blocks = Block.__table__
_conversations = Conversation.__table__
_users = User.__table__

BLOCKED = "blocked"


@dataclass(slots=True, frozen=True)
class _Direct:
    """What a conversation's sends must know: for a direct one, which of its two
    participants the other blocked (their sends are refused), until when that holds."""

    pair: tuple[int, int] | None  # None: not a direct conversation (never changes)
    refused: frozenset[int]
    until: float


class Blocks:
    """The blocks table, and the cached answer the send path asks for."""

    def __init__(self, engine: AsyncEngine, settings: Settings, max_cached: int = 100_000) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._ttl = settings.block_cache_seconds
        self._max_per_user = settings.max_blocks_per_user
        self._max_cached = max_cached
        self._direct: OrderedDict[str, _Direct] = OrderedDict()
        self._by_pair: dict[tuple[int, int], str] = {}
        # Bumped by every change made here: a read that started before one is not cached.
        self._generation = 0

    async def add(self, blocker_id: int, blocked_id: int) -> tuple[datetime, bool]:
        """Block; (when the block was made, whether it is new). 404 / 422 / 409."""
        await self._check_target(blocker_id, blocked_id)
        created_at = utcnow()
        try:
            async with self._engine.begin() as conn:
                existing = await conn.scalar(
                    select(_blocks.c.created_at).where(_pair_is(blocker_id, blocked_id))
                )
                if existing is not None:
                    return existing, False
                count = await conn.scalar(
                    select(func.count())
                    .select_from(_blocks)
                    .where(_blocks.c.blocker_id == blocker_id)
                )
                if (count or 0) >= self._max_per_user:
                    raise ApiError(
                        409, "too_many_blocks", f"you can block at most {self._max_per_user} users"
                    )
                await conn.execute(
                    _blocks.insert().values(
                        blocker_id=blocker_id, blocked_id=blocked_id, created_at=created_at
                    )
                )
        except IntegrityError:
            # The same block, made at the same moment by another request.
            async with self._engine.connect() as conn:
                made = await conn.scalar(
                    select(_blocks.c.created_at).where(_pair_is(blocker_id, blocked_id))
                )
            if made is None:
                raise ApiError(404, "user_not_found", "no such user") from None
            return made, False
        self._forget(blocker_id, blocked_id)
        log.info("user blocked user=%s blocked=%s", blocker_id, blocked_id)
        return created_at, True

    async def remove(self, blocker_id: int, blocked_id: int) -> bool:
        """Unblock; whether there was a block. 404 / 422 as for add."""
        await self._check_target(blocker_id, blocked_id)
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(_blocks).where(_pair_is(blocker_id, blocked_id)))
        removed = bool(result.rowcount)
        if removed:
            self._forget(blocker_id, blocked_id)
            log.info("user unblocked user=%s unblocked=%s", blocker_id, blocked_id)
        return removed

    async def of(self, blocker_id: int) -> list[dict[str, Any]]:
        """The users this one blocked, newest first."""
        stmt = (
            select(_blocks.c.blocked_id, _blocks.c.created_at)
            .where(_blocks.c.blocker_id == blocker_id)
            .order_by(_blocks.c.created_at.desc(), _blocks.c.blocked_id)
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(stmt)
            return [{"user_id": r.blocked_id, "created_at": r.created_at} for r in rows]

    async def blockers_among(self, user_id: int, others: Collection[int]) -> set[int]:
        """Which of these users blocked this one."""
        if not others:
            return set()
        stmt = select(_blocks.c.blocker_id).where(
            _blocks.c.blocked_id == user_id, one_of(_blocks.c.blocker_id, others, self._dialect)
        )
        async with self._engine.connect() as conn:
            return set((await conn.execute(stmt)).scalars())

    async def severed(self, user_id: int, others: Collection[int]) -> set[int]:
        """Which of these users blocked this one or were blocked by them."""
        if not others:
            return set()
        stmt = select(_blocks.c.blocker_id, _blocks.c.blocked_id).where(
            or_(
                and_(
                    _blocks.c.blocker_id == user_id,
                    one_of(_blocks.c.blocked_id, others, self._dialect),
                ),
                and_(
                    _blocks.c.blocked_id == user_id,
                    one_of(_blocks.c.blocker_id, others, self._dialect),
                ),
            )
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(stmt)
            return {r.blocked_id if r.blocker_id == user_id else r.blocker_id for r in rows}

    async def check_send(
        self, sender_id: int, conversation_id: str, participants: frozenset[int]
    ) -> None:
        """403 when this is a direct conversation whose other participant blocked the
        sender. Groups are never refused, so only two-member conversations are looked at."""
        if len(participants) != 2:
            return
        entry = self._direct.get(conversation_id)
        if entry is None or entry.until < time.monotonic():
            entry = await self._load(conversation_id, participants)
        else:
            self._direct.move_to_end(conversation_id)
        if sender_id in entry.refused:
            raise ApiError(403, BLOCKED, "this person does not accept messages from you")

    async def _load(self, conversation_id: str, participants: frozenset[int]) -> _Direct:
        generation = self._generation
        low, high = sorted(participants)
        async with self._engine.connect() as conn:
            kind = await conn.scalar(
                select(_conversations.c.type).where(_conversations.c.id == conversation_id)
            )
            refused: frozenset[int] = frozenset()
            if kind == "direct":
                rows = await conn.execute(
                    select(_blocks.c.blocked_id).where(
                        or_(_pair_is(low, high), _pair_is(high, low))
                    )
                )
                refused = frozenset(rows.scalars())
        if kind == "direct":
            entry = _Direct((low, high), refused, time.monotonic() + self._ttl)
        else:
            entry = _Direct(None, frozenset(), float("inf"))
        if generation == self._generation:
            self._remember(conversation_id, entry)
        return entry

    def _remember(self, conversation_id: str, entry: _Direct) -> None:
        self._direct[conversation_id] = entry
        self._direct.move_to_end(conversation_id)
        if entry.pair is not None:
            self._by_pair[entry.pair] = conversation_id
        if len(self._direct) > self._max_cached:
            _, evicted = self._direct.popitem(last=False)
            if evicted.pair is not None:
                self._by_pair.pop(evicted.pair, None)

    def _forget(self, a: int, b: int) -> None:
        """Drop the cached answer for the direct conversation of these two."""
        self._generation += 1
        conversation_id = self._by_pair.pop((min(a, b), max(a, b)), None)
        if conversation_id is not None:
            self._direct.pop(conversation_id, None)

    async def _check_target(self, blocker_id: int, blocked_id: int) -> None:
        if not 1 <= blocked_id <= MAX_ID:
            raise ApiError(404, "user_not_found", "no such user")
        if blocked_id == blocker_id:
            raise ApiError(422, "invalid_field", "you cannot block yourself")
        async with self._engine.connect() as conn:
            found = await conn.scalar(select(_users.c.id).where(_users.c.id == blocked_id))
        if found is None:
            raise ApiError(404, "user_not_found", "no such user")


def _pair_is(blocker_id: int, blocked_id: int) -> Any:
    return and_(_blocks.c.blocker_id == blocker_id, _blocks.c.blocked_id == blocked_id)


class BlockRoutes:
    """/api/v1/me/blocks. A block (or unblock) also tells the two, if they share a
    conversation, what presence they may see of each other from now on."""

    def __init__(
        self,
        reader: RequestReader,
        blocks: Blocks,
        contacts: Contacts,
        presence: Presence,
        fanout: Fanout,
    ) -> None:
        self._reader = reader
        self._blocks = blocks
        self._contacts = contacts
        self._presence = presence
        self._fanout = fanout

    @property
    def routes(self) -> list[Route]:
        base = "/api/v1/me/blocks"
        return [
            Route(base, self.list_blocks, methods=["GET"]),
            Route(base + "/{user_id:int}", self.block, methods=["PUT"]),
            Route(base + "/{user_id:int}", self.unblock, methods=["DELETE"]),
        ]

    @documented("The users the caller blocked", responses={200: schemas.BlockList}, tags=["blocks"])
    async def list_blocks(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        return JSONResponse({"blocks": await self._blocks.of(user_id)})

    @documented(
        "Block a user",
        responses={
            200: schemas.Block,
            404: "no such user",
            409: "too many blocks",
            422: "the caller cannot block themselves",
        },
        tags=["blocks"],
    )
    async def block(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        other: int = request.path_params["user_id"]
        created_at, new = await self._blocks.add(user_id, other)
        if new and await self._contacts.share_a_conversation(user_id, other):
            # Whatever either last saw of the other, it is offline from now on.
            await self._fanout.publish([other], presence_frame(user_id, online=False))
            await self._fanout.publish([user_id], presence_frame(other, online=False))
        return JSONResponse({"user_id": other, "created_at": created_at})

    @documented(
        "Unblock a user",
        responses={
            200: schemas.Unblocked,
            404: "no such user",
            422: "the caller cannot block themselves",
        },
        tags=["blocks"],
    )
    async def unblock(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        other: int = request.path_params["user_id"]
        removed = await self._blocks.remove(user_id, other)
        if (
            removed
            and not await self._blocks.severed(user_id, [other])
            and await self._contacts.share_a_conversation(user_id, other)
        ):
            online = await self._presence.online([user_id, other])
            if user_id in online:
                await self._fanout.publish([other], presence_frame(user_id, online=True))
            if other in online:
                await self._fanout.publish([user_id], presence_frame(other, online=True))
        return JSONResponse({"user_id": other, "blocked": False})
