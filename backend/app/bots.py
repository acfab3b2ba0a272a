"""Bots: accounts a user runs for scripts and CI jobs, with their own tokens.

A bot is a users row with is_bot set and bot_owner_id naming its owner, and no
password (it cannot log in). Its token (app/bot_tokens.py) is shown once, when the bot
is made or its token rotated; with it the bot does over REST and WebSocket what a user
does, except making bots and registering devices (a bot is never pushed).

Deleting a bot revokes its tokens (its sockets close), takes it out of its groups and
takes its owner away: the row stays, so its messages still name it, and its username
stays taken, so nobody can pose as it. Since the rows stay, every bot made counts
against its owner's BOT_CREATIONS_PER_DAY, deleted ones included, and against the
client address's registration bucket, like a new account.
Webhooks' bots (app/messenger/webhooks.py) are run by their webhook, not listed here.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import bot_tokens
from app.accounts import Username
from app.auth import AccessClaims
from app.config import Settings
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.messenger.bot_departure import announce_left, leave_groups
from app.messenger.fanout import Fanout
from app.messenger.models import IncomingWebhook
from app.messenger.participants import ParticipantCache
from app.models import MAX_ID, BotToken, User
from app.openapi import schemas
from app.openapi.api import documented
from app.ratelimit import RateLimiter, address_key, too_many_requests
from app.web import RequestReader

log = logging.getLogger(__name__)

_users = User.__table__
_tokens = BotToken.__table__
_hooks = IncomingWebhook.__table__
# Bots one user may make per hour: a deleted bot keeps its row, so the cap on standing
# bots alone would not bound the rows one account can add.
CREATIONS_PER_HOUR = 20

DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class BotBody(BaseModel):
    username: Username
    display_name: DisplayName | None = None


async def take_creation(
    limiter: RateLimiter, settings: Settings, owner_id: int, host: str | None
) -> None:
    """One bot creation (webhooks' bots count too): one of the client address's
    registrations, and one of the owner's this hour and this day (deleted bots stay
    counted: their rows stay); 429 past any of them."""
    client = address_key(host)
    per_day = settings.bot_creations_per_day
    buckets = (
        (
            f"register:{client}",
            settings.registration_rate_per_minute / 60,
            settings.registration_burst,
        ),
        (f"bots:create:{owner_id}", CREATIONS_PER_HOUR / 3600, CREATIONS_PER_HOUR),
        (f"bots:create:day:{owner_id}", per_day / 86400, per_day),
    )
    for key, rate, burst in buckets:
        retry_after = await limiter.hit(key, rate, burst)
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many bots made; try again later")


def not_for_bots(caller: AccessClaims, what: str) -> None:
    """403 when the caller is a bot: some things only a person does."""
    if bot_tokens.is_bot_session(caller.session_id):
        raise ApiError(403, "not_for_bots", f"a bot cannot {what}")


async def add_bot(
    conn: AsyncConnection, owner_id: int, username: str, display_name: str
) -> int | None:
    """Insert a bot row owned by owner_id in the caller's transaction; its id, or None
    when the username is taken."""
    # Looked up first, so a taken name is an answer, not a failed statement; the unique
    # index still refuses one taken meanwhile (an IntegrityError: the caller's 409 too).
    if await conn.scalar(select(_users.c.id).where(_users.c.username == username)) is not None:
        return None
    return int(
        (
            await conn.execute(
                insert(_users)
                .values(
                    username=username,
                    display_name=display_name,
                    password_hash=None,
                    is_bot=True,
                    bot_owner_id=owner_id,
                    created_at=utcnow(),
                )
                .returning(_users.c.id)
            )
        ).scalar_one()
    )


def _listed(owner_id: int) -> Any:
    """The owner's standing bots, those of webhooks left out."""
    return (
        _users.c.bot_owner_id == owner_id,
        _users.c.is_bot.is_(True),
        _users.c.id.not_in(select(_hooks.c.bot_id)),
    )


class BotRoutes:
    """/api/v1/me/bots: make, list, rotate the token of, and delete the caller's bots."""

    def __init__(
        self,
        engine: AsyncEngine,
        reader: RequestReader,
        limiter: RateLimiter,
        settings: Settings,
        participants: ParticipantCache,
        fanout: Fanout,
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._limiter = limiter
        self._settings = settings
        self._participants = participants
        self._fanout = fanout

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/me/bots", self.create, methods=["POST"]),
            Route("/api/v1/me/bots", self.list_bots, methods=["GET"]),
            Route("/api/v1/me/bots/{bot_id:int}/token", self.rotate, methods=["POST"]),
            Route("/api/v1/me/bots/{bot_id:int}", self.delete, methods=["DELETE"]),
        ]

    @documented(
        "Make a bot account owned by the caller",
        body=BotBody,
        responses={
            201: schemas.BotCreated,
            403: "a bot cannot manage bots",
            409: "the username is taken, or the caller runs too many bots",
            429: "too many bots made",
        },
        tags=["bots"],
    )
    async def create(self, request: Request) -> Response:
        caller = await self._reader.caller(request)
        not_for_bots(caller, "make bots")
        owner = caller.user_id
        body = await self._reader.json(request, BotBody)
        await take_creation(
            self._limiter, self._settings, owner, request.client.host if request.client else None
        )
        cap = self._settings.max_bots_per_user
        try:
            bot_id, token = await self._create(owner, body, cap)
        except IntegrityError:
            raise ApiError(409, "username_taken", "that username is taken") from None
        log.info("bot created owner=%s bot=%s", owner, bot_id)
        return JSONResponse({"id": bot_id, "username": body.username.lower(), "token": token}, 201)

    async def _create(self, owner: int, body: BotBody, cap: int) -> tuple[int, str]:
        async with self._engine.begin() as conn:
            # The owner's row, locked (PostgreSQL): two creations at once cannot both
            # slip past the cap.
            await conn.execute(
                select(_users.c.id).where(_users.c.id == owner).with_for_update(key_share=True)
            )
            standing = await conn.scalar(select(func.count()).where(*_listed(owner)))
            if (standing or 0) >= cap:
                raise ApiError(409, "too_many_bots", f"a user may run at most {cap} bots")
            bot_id = await add_bot(
                conn, owner, body.username.lower(), body.display_name or body.username
            )
            if bot_id is None:
                raise ApiError(409, "username_taken", "that username is taken")
            token = await bot_tokens.issue(conn, bot_id)
        return bot_id, token

    @documented(
        "The caller's bots",
        responses={200: schemas.BotList, 403: "a bot cannot manage bots"},
        tags=["bots"],
    )
    async def list_bots(self, request: Request) -> Response:
        caller = await self._reader.caller(request)
        not_for_bots(caller, "manage bots")
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        _users.c.id,
                        _users.c.username,
                        _users.c.display_name,
                        _users.c.created_at,
                        select(func.max(_tokens.c.last_used_at))
                        .where(_tokens.c.bot_id == _users.c.id)
                        .scalar_subquery()
                        .label("last_used_at"),
                    )
                    .where(*_listed(caller.user_id))
                    .order_by(_users.c.id)
                )
            ).all()
        bots = [{**dict(row._mapping), "is_bot": True} for row in rows]
        return JSONResponse({"bots": bots})

    async def _owned(self, conn: AsyncConnection, owner_id: int, request: Request) -> int:
        """The path's bot if the caller runs it (locked for the transaction); 404 for any
        other id, someone else's bot included."""
        bot_id: int = request.path_params["bot_id"]
        found = None
        if 1 <= bot_id <= MAX_ID:
            found = await conn.scalar(
                select(_users.c.id)
                .where(_users.c.id == bot_id, *_listed(owner_id))
                .with_for_update()
            )
        if found is None:
            raise ApiError(404, "bot_not_found", "you run no such bot")
        return bot_id

    @documented(
        "A new token for a bot (its old tokens stop working)",
        responses={
            200: schemas.BotToken,
            403: "a bot cannot manage bots",
            404: "you run no such bot",
        },
        tags=["bots"],
    )
    async def rotate(self, request: Request) -> Response:
        caller = await self._reader.caller(request)
        not_for_bots(caller, "manage bots")
        async with self._engine.begin() as conn:
            bot_id = await self._owned(conn, caller.user_id, request)
            revoked = await bot_tokens.revoke_all(conn, bot_id)
            token = await bot_tokens.issue(conn, bot_id)
        log.info("bot token rotated owner=%s bot=%s revoked=%d", caller.user_id, bot_id, revoked)
        return JSONResponse({"id": bot_id, "token": token})

    @documented(
        "Delete a bot",
        responses={
            200: schemas.Success,
            403: "a bot cannot manage bots",
            404: "you run no such bot",
        },
        tags=["bots"],
    )
    async def delete(self, request: Request) -> Response:
        caller = await self._reader.caller(request)
        not_for_bots(caller, "manage bots")
        async with self._engine.begin() as conn:
            bot_id = await self._owned(conn, caller.user_id, request)
            revoked = await bot_tokens.revoke_all(conn, bot_id)
            await conn.execute(
                update(_users).where(_users.c.id == bot_id).values(bot_owner_id=None)
            )
            groups = await leave_groups(conn, bot_id)
        log.info(
            "bot deleted owner=%s bot=%s revoked=%d groups_left=%d",
            caller.user_id,
            bot_id,
            revoked,
            len(groups),
        )
        await announce_left(self._engine, self._participants, self._fanout, bot_id, groups)
        return JSONResponse({"success": True})
