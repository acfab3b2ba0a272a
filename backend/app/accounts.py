"""Accounts: register, log in, who am I, and finding other users."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.auth import PasswordPool
from app.config import Settings
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.models import MAX_ID, User
from app.openapi import schemas
from app.openapi.api import documented
from app.ratelimit import RateLimiter, address_key, too_many_requests
from app.sessions import SessionStore
from app.web import RequestReader

log = logging.getLogger(__name__)

Username = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=3, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$"
    ),
]


class RegisterBody(BaseModel):
    username: Username
    password: str = Field(min_length=8, max_length=256)
    display_name: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)] | None
    ) = None


class LoginBody(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=256)


class AccountRoutes:
    """/api/v1/auth, /api/v1/me and /api/v1/users."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        reader: RequestReader,
        limiter: RateLimiter,
        settings: Settings,
        passwords: PasswordPool,
        session_store: SessionStore,
    ) -> None:
        self._sessions = sessions
        self._reader = reader
        self._limiter = limiter
        self._settings = settings
        self._passwords = passwords
        self._session_store = session_store

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/auth/register", self.register, methods=["POST"]),
            Route("/api/v1/auth/login", self.login, methods=["POST"]),
            Route("/api/v1/me", self.me, methods=["GET"]),
            Route("/api/v1/users", self.search_users, methods=["GET"]),
            Route("/api/v1/users/{user_id:int}", self.get_user, methods=["GET"]),
        ]

    @documented(
        "Register an account",
        body=RegisterBody,
        responses={
            201: schemas.User,
            409: "the username is taken",
            429: "too many registrations from this address",
            503: "password hashing is saturated; retry after Retry-After",
        },
        tags=["accounts"],
        auth=False,
    )
    async def register(self, request: Request) -> Response:
        settings = self._settings
        client = address_key(request.client.host if request.client else None)
        retry_after = await self._limiter.hit(
            f"register:{client}",
            settings.registration_rate_per_minute / 60,
            settings.registration_burst,
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many registrations; try again later")
        body = await self._reader.json(request, RegisterBody)
        username = body.username.lower()
        user = User(
            username=username,
            display_name=body.display_name or body.username,
            password_hash=await self._passwords.hash(body.password),
        )
        async with self._sessions() as session:
            session.add(user)
            try:
                await session.commit()
            except IntegrityError:
                raise ApiError(409, "username_taken", "that username is taken") from None
        log.info("user registered user=%s", user.id)
        return JSONResponse(user.public(), 201)

    @documented(
        "Log in: a new session",
        body=LoginBody,
        responses={
            200: schemas.Login,
            401: "wrong username or password",
            429: "too many login attempts",
            503: "password hashing is saturated; retry after Retry-After",
        },
        tags=["accounts"],
        auth=False,
    )
    async def login(self, request: Request) -> Response:
        body = await self._reader.json(request, LoginBody)
        settings = self._settings
        username = body.username.strip().lower()
        client = request.client.host if request.client else "-"
        async with self._sessions() as session:
            user = await session.scalar(select(User).where(User.username == username))
        # Two buckets: guessing one account's password from many addresses, and trying
        # many accounts from one address, each run out. An address the user already holds
        # a live session from has the account's bucket to itself: whoever floods the
        # account with wrong passwords from elsewhere cannot lock its owner out there.
        address_rate, address_burst = settings.login_address_limit
        account = f"login:user:{username}"
        if user is not None and await self._session_store.known_address(user.id, client):
            account += f":{address_key(client)}"
        waits = await asyncio.gather(
            self._limiter.start_hit(
                account, settings.login_rate_per_minute / 60, settings.login_burst
            ),
            self._limiter.start_hit(
                f"login:addr:{address_key(client)}", address_rate / 60, address_burst
            ),
        )
        if max(waits) > 0:
            raise too_many_requests(max(waits), "too many login attempts; try again later")
        if (
            not await self._passwords.verify(user.password_hash if user else None, body.password)
            or not user
        ):
            log.info("login failed client=%s", client)
            raise ApiError(401, "invalid_credentials", "wrong username or password")
        issued = await self._session_store.open(user.id, request.headers.get("user-agent"), client)
        log.info("login user=%s session=%s client=%s", user.id, issued.session_id, client)
        return JSONResponse({**issued.body(), "user": user.public()})

    @documented("The caller's account", responses={200: schemas.Me}, tags=["accounts"])
    async def me(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        async with self._sessions() as session:
            user = await session.get(User, user_id)
        if user is None:
            raise ApiError(401, "invalid_token", "the account no longer exists")
        return JSONResponse({**user.public(), "is_admin": user.is_admin})

    @documented(
        "Find users by name",
        query=schemas.UserSearch,
        responses={200: schemas.UserList},
        tags=["accounts"],
    )
    async def search_users(self, request: Request) -> Response:
        """Users whose username or display name starts with the query (at most 20)."""
        await self._reader.user_id(request)
        query = request.query_params.get("query", "").strip().lower()
        if not query:
            return JSONResponse({"users": []})
        if len(query) > 64:
            raise ApiError(422, "invalid_field", "query is over 64 characters")
        escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = (
            select(User)
            .where(
                User.username.like(escaped, escape="\\")
                | func.lower(User.display_name).like(escaped, escape="\\")
            )
            .order_by(User.username)
            .limit(20)
        )
        async with self._sessions() as session:
            users = (await session.scalars(stmt)).all()
        return JSONResponse({"users": [u.public() for u in users]})

    @documented("One user", responses={200: schemas.User, 404: "no such user"}, tags=["accounts"])
    async def get_user(self, request: Request) -> Response:
        await self._reader.user_id(request)
        user_id = request.path_params["user_id"]
        user = None
        if user_id <= MAX_ID:
            async with self._sessions() as session:
                user = await session.get(User, user_id)
        if user is None:
            raise ApiError(404, "user_not_found", "no such user")
        return JSONResponse(user.public())
