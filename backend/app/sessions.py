"""Sign-in sessions: short-lived access tokens minted by rotating refresh tokens.

A refresh token is "<session id>.<secret>", the secret being "<nonce>.<mac>": the MAC
(of the session id and nonce, under the signing key) tells a spent token of ours from
a made-up one. Only the SHA-256 of the current secret is stored. A spent token that
comes back (stolen, or replayed) revokes its whole session; a forged one naming
someone's session id is only refused, so knowing an id is not enough to end a session.

A device registered for push is bound to the session that registered it: however a
session ends (logout, revoked from the list or with all the others, a reused refresh
token, pushed out past the cap, or expired and swept), its devices are switched off in
the same transaction, so they get no more pushes and their action tokens are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import bot_tokens
from app.auth import AccessClaims, InvalidToken, create_access_token, decode_access_token
from app.config import Settings
from app.db import one_of, utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.messenger.models import DeviceToken
from app.models import Session
from app.openapi import schemas
from app.openapi.api import documented
from app.web import RequestReader

log = logging.getLogger(__name__)

_sessions = Session.__table__
_devices = DeviceToken.__table__
_REFRESH_TOKEN = re.compile(
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"\.([A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{22})"
)


@dataclass(frozen=True, slots=True)
class Issued:
    """A fresh pair of tokens for a session."""

    session_id: str
    access_token: str
    refresh_token: str
    expires_in: int  # the access token's life, in seconds

    def body(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "session_id": self.session_id,
        }


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def switch_off_devices(conn: AsyncConnection, session_ids: Collection[str]) -> int:
    """Switch off the devices these sessions registered, in the caller's transaction
    (the one that ends the sessions); how many were on."""
    if not session_ids:
        return 0
    result = await conn.execute(
        update(_devices)
        .where(
            one_of(_devices.c.session_id, list(session_ids), conn.dialect.name),
            _devices.c.is_active.is_(True),
        )
        .values(is_active=False)
    )
    return int(result.rowcount)


async def switch_off_devices_of_ended_sessions(conn: AsyncConnection) -> int:
    """The sweep: switch off devices whose session expired (or ended any other way and
    somehow kept its devices on); how many. For the daily cleanup's transaction."""
    ended = select(_sessions.c.id).where(
        or_(_sessions.c.revoked_at.is_not(None), _sessions.c.expires_at <= utcnow())
    )
    result = await conn.execute(
        update(_devices)
        .where(_devices.c.session_id.in_(ended), _devices.c.is_active.is_(True))
        .values(is_active=False)
    )
    return int(result.rowcount)


class SessionStore:
    """The sessions table: opening, refreshing, checking and revoking sessions."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    # -- tokens -------------------------------------------------------------------------

    def _mac(self, session_id: str, nonce: str) -> str:
        key = self._settings.signing_key.encode()
        mac = hmac.new(key, f"refresh:{session_id}:{nonce}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode()

    def _new_secret(self, session_id: str) -> str:
        nonce = secrets.token_urlsafe(32)
        return f"{nonce}.{self._mac(session_id, nonce)}"

    def _is_ours(self, session_id: str, secret: str) -> bool:
        nonce, _, mac = secret.partition(".")
        return hmac.compare_digest(mac, self._mac(session_id, nonce))

    def _issue(self, user_id: int, session_id: str, secret: str) -> Issued:
        ttl = self._settings.access_token_ttl_seconds
        token = create_access_token(user_id, self._settings.signing_key, ttl, session_id=session_id)
        return Issued(session_id, token, f"{session_id}.{secret}", ttl)

    # -- the store ------------------------------------------------------------------------

    async def open(self, user_id: int, user_agent: str | None, ip: str | None) -> Issued:
        """A new session for a user who just proved who they are."""
        session_id = str(uuid.uuid4())
        secret = self._new_secret(session_id)
        now = utcnow()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(_sessions).values(
                    id=session_id,
                    user_id=user_id,
                    refresh_hash=_digest(secret),
                    created_at=now,
                    last_used_at=now,
                    expires_at=now + timedelta(seconds=self._settings.refresh_token_ttl_seconds),
                    user_agent=(user_agent or "")[:256] or None,
                    ip=(ip or "")[:64] or None,
                )
            )
            # Past the cap, the least recently used sessions end.
            stale = (
                await conn.scalars(
                    select(_sessions.c.id)
                    .where(
                        _sessions.c.user_id == user_id,
                        _sessions.c.id != session_id,
                        _sessions.c.revoked_at.is_(None),
                        _sessions.c.expires_at > now,
                    )
                    .order_by(_sessions.c.last_used_at.desc(), _sessions.c.id)
                    .offset(self._settings.max_sessions_per_user - 1)
                )
            ).all()
            devices = 0
            if stale:
                await conn.execute(
                    update(_sessions).where(_sessions.c.id.in_(stale)).values(revoked_at=now)
                )
                devices = await switch_off_devices(conn, stale)
        if stale:
            log.info(
                "sessions over the cap revoked user=%s count=%d devices_off=%d",
                user_id,
                len(stale),
                devices,
            )
        return self._issue(user_id, session_id, secret)

    async def refresh(
        self, refresh_token: str, user_agent: str | None = None, ip: str | None = None
    ) -> Issued:
        """New tokens for the session, whose refresh token then changes; InvalidToken
        if this one is not its current one. A spent one revokes the session, except the
        one spent last, within REFRESH_REUSE_GRACE_SECONDS: a client whose answer was
        lost on the way retries with it, and gets new tokens (those it never received
        stop working)."""
        match = _REFRESH_TOKEN.fullmatch(refresh_token)
        if match is None:
            raise InvalidToken("malformed refresh token")
        session_id, secret = match.groups()
        now = utcnow()
        reused = False
        devices = 0
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(
                        _sessions.c.user_id,
                        _sessions.c.refresh_hash,
                        _sessions.c.previous_hash,
                        _sessions.c.rotated_at,
                        _sessions.c.revoked_at,
                        _sessions.c.expires_at,
                    ).where(_sessions.c.id == session_id)
                )
            ).first()
            if row is None or row.revoked_at is not None:
                raise InvalidToken("no such session")
            presented = _digest(secret)
            current = hmac.compare_digest(row.refresh_hash, presented)
            retried = not current and self._lost_answer(row, presented, now)
            if not current and not retried:
                if not self._is_ours(session_id, secret):
                    raise InvalidToken("not a refresh token of this session")
                reused = True
            elif row.expires_at <= now:
                raise InvalidToken("the session has expired")
            else:
                new_secret = self._new_secret(session_id)
                # A retry keeps the spent token and its time: the grace does not stretch.
                previous = {} if retried else {"previous_hash": row.refresh_hash, "rotated_at": now}
                rotated = await conn.execute(
                    update(_sessions)
                    .where(
                        _sessions.c.id == session_id,
                        _sessions.c.refresh_hash == row.refresh_hash,
                        _sessions.c.revoked_at.is_(None),
                    )
                    .values(
                        refresh_hash=_digest(new_secret),
                        last_used_at=now,
                        expires_at=now
                        + timedelta(seconds=self._settings.refresh_token_ttl_seconds),
                        user_agent=(user_agent or "")[:256] or None,
                        ip=(ip or "")[:64] or None,
                        **previous,
                    )
                )
                # Another refresh with this same token got there first: spent twice.
                reused = rotated.rowcount != 1
            if reused:
                await conn.execute(
                    update(_sessions)
                    .where(_sessions.c.id == session_id, _sessions.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                devices = await switch_off_devices(conn, [session_id])
        if reused:
            log.warning(
                "refresh token reused, session revoked session=%s user=%s devices_off=%d",
                session_id,
                row.user_id,
                devices,
            )
            raise InvalidToken("refresh token reused")
        return self._issue(row.user_id, session_id, new_secret)

    def _lost_answer(self, row: Any, presented: str, now: datetime) -> bool:
        """Whether the token presented is the one spent by the latest refresh, back
        within the grace: its answer was lost, not its token stolen (or so we allow)."""
        grace = self._settings.refresh_reuse_grace_seconds
        return (
            grace > 0
            and row.previous_hash is not None
            and row.rotated_at is not None
            and (now - row.rotated_at).total_seconds() <= grace
            and hmac.compare_digest(row.previous_hash, presented)
        )

    async def known_address(self, user_id: int, ip: str) -> bool:
        """Whether the user holds a live session last used from this address."""
        async with self._engine.connect() as conn:
            found = await conn.scalar(
                select(_sessions.c.id)
                .where(
                    _sessions.c.user_id == user_id,
                    _sessions.c.ip == ip[:64],
                    _sessions.c.revoked_at.is_(None),
                    _sessions.c.expires_at > utcnow(),
                )
                .limit(1)
            )
        return found is not None

    async def verify(self, access_token: str) -> AccessClaims:
        """The token's claims if it is valid and its session still stands; else InvalidToken."""
        if bot_tokens.is_bot_token(access_token):
            return await bot_tokens.verify(self._engine, access_token)
        claims = decode_access_token(access_token, self._settings.signing_key)
        if not await self.stands(claims.user_id, claims.session_id):
            raise InvalidToken("the session has ended")
        return claims

    async def stands(self, user_id: int, session_id: str) -> bool:
        """Whether this session of the user is neither revoked nor expired: one
        primary-key read, made for every REST call and notification action."""
        if bot_tokens.is_bot_session(session_id):
            return await bot_tokens.stands(self._engine, user_id, session_id)
        async with self._engine.connect() as conn:
            standing = await conn.scalar(
                select(_sessions.c.id).where(
                    _sessions.c.id == session_id,
                    _sessions.c.user_id == user_id,
                    _sessions.c.revoked_at.is_(None),
                    _sessions.c.expires_at > utcnow(),
                )
            )
        return standing is not None

    async def revoke(self, user_id: int, session_id: str) -> bool:
        """End one of the user's sessions (and switch its devices off); False if they
        have no such standing session. A bot's "session" is its token: it is revoked, so
        a CI job's logout ends what it used."""
        if bot_tokens.is_bot_session(session_id):
            ended = await bot_tokens.revoke_session(self._engine, user_id, session_id)
            if ended:
                log.info("bot token revoked user=%s session=%s", user_id, session_id)
            return ended
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(_sessions)
                .where(
                    _sessions.c.id == session_id,
                    _sessions.c.user_id == user_id,
                    _sessions.c.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow())
            )
            ended = result.rowcount == 1
            devices = await switch_off_devices(conn, [session_id]) if ended else 0
        if ended:
            log.info(
                "session ended, devices off user=%s session=%s devices_off=%d",
                user_id,
                session_id,
                devices,
            )
        return ended

    async def revoke_others(self, user_id: int, keep: str) -> int:
        """End every session of the user but `keep` (and switch their devices off); how
        many ended."""
        async with self._engine.begin() as conn:
            others = list(
                await conn.scalars(
                    select(_sessions.c.id).where(
                        _sessions.c.user_id == user_id,
                        _sessions.c.id != keep,
                        _sessions.c.revoked_at.is_(None),
                    )
                )
            )
            if not others:
                return 0
            result = await conn.execute(
                update(_sessions)
                .where(
                    one_of(_sessions.c.id, others, conn.dialect.name),
                    _sessions.c.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow())
            )
            devices = await switch_off_devices(conn, others)
        log.info(
            "sessions ended, devices off user=%s kept=%s sessions=%d devices_off=%d",
            user_id,
            keep,
            int(result.rowcount),
            devices,
        )
        return int(result.rowcount)

    async def standing(self, user_id: int) -> list[dict[str, Any]]:
        """The user's sessions that are neither revoked nor expired, most recent first."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        _sessions.c.id,
                        _sessions.c.created_at,
                        _sessions.c.last_used_at,
                        _sessions.c.user_agent,
                        _sessions.c.ip,
                    )
                    .where(
                        _sessions.c.user_id == user_id,
                        _sessions.c.revoked_at.is_(None),
                        _sessions.c.expires_at > utcnow(),
                    )
                    .order_by(_sessions.c.last_used_at.desc(), _sessions.c.id)
                )
            ).all()
        return [dict(row._mapping) for row in rows]

    async def revoked_since(self, since: datetime) -> list[str]:
        """Sessions revoked after `since` (by any node), bot tokens' "bot:<id>" included."""
        async with self._engine.connect() as conn:
            revoked = list(
                await conn.scalars(select(_sessions.c.id).where(_sessions.c.revoked_at > since))
            )
            return revoked + await bot_tokens.revoked_since(conn, since)


class RefreshBody(BaseModel):
    refresh_token: str = Field(max_length=512)


class SessionRoutes:
    """/api/v1/auth/refresh, /api/v1/auth/logout and /api/v1/me/sessions."""

    def __init__(self, store: SessionStore, reader: RequestReader) -> None:
        self._store = store
        self._reader = reader

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/auth/refresh", self.refresh, methods=["POST"]),
            Route("/api/v1/auth/logout", self.logout, methods=["POST"]),
            Route("/api/v1/me/sessions", self.list_sessions, methods=["GET"]),
            Route("/api/v1/me/sessions", self.revoke_others, methods=["DELETE"]),
            Route("/api/v1/me/sessions/{session_id}", self.revoke, methods=["DELETE"]),
        ]

    @documented(
        "New tokens for a refresh token (rotation)",
        body=RefreshBody,
        responses={
            200: schemas.Tokens,
            401: "the refresh token is invalid or spent, or its session ended",
        },
        tags=["sessions"],
        auth=False,
    )
    async def refresh(self, request: Request) -> Response:
        body = await self._reader.json(request, RefreshBody)
        try:
            issued = await self._store.refresh(
                body.refresh_token,
                request.headers.get("user-agent"),
                request.client.host if request.client else None,
            )
        except InvalidToken:
            raise ApiError(
                401, "invalid_token", "the refresh token is invalid, spent or expired"
            ) from None
        return JSONResponse(issued.body())

    @documented("Revoke the caller's session", responses={200: schemas.Success}, tags=["sessions"])
    async def logout(self, request: Request) -> Response:
        caller = await self._reader.caller(request)
        await self._store.revoke(caller.user_id, caller.session_id)
        log.info("logout user=%s session=%s", caller.user_id, caller.session_id)
        return JSONResponse({"success": True})

    @documented(
        "The caller's open sessions", responses={200: schemas.SessionList}, tags=["sessions"]
    )
    async def list_sessions(self, request: Request) -> Response:
        caller = await self._reader.caller(request)
        sessions = await self._store.standing(caller.user_id)
        for session in sessions:
            session["current"] = session["id"] == caller.session_id
        return JSONResponse({"sessions": sessions})

    @documented(
        "Revoke one of the caller's sessions",
        responses={200: schemas.Success, 404: "you have no such session"},
        tags=["sessions"],
    )
    async def revoke(self, request: Request) -> Response:
        caller = await self._reader.caller(request)
        session_id = request.path_params["session_id"]
        # Someone else's session is as unknown as one that never was.
        if len(session_id) > 64 or not await self._store.revoke(caller.user_id, session_id):
            raise ApiError(404, "session_not_found", "you have no such session")
        log.info("session revoked user=%s session=%s", caller.user_id, session_id)
        return JSONResponse({"success": True})

    @documented(
        "Revoke every other session of the caller",
        responses={200: schemas.RevokedOthers},
        tags=["sessions"],
    )
    async def revoke_others(self, request: Request) -> Response:
        caller = await self._reader.caller(request)
        count = await self._store.revoke_others(caller.user_id, caller.session_id)
        log.info(
            "other sessions revoked user=%s kept=%s count=%d",
            caller.user_id,
            caller.session_id,
            count,
        )
        return JSONResponse({"success": True, "revoked": count})
