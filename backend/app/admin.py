"""/api/v1/admin: push statistics, the push log and user lookup, for admins only.

Every route starts with `require_admin`, which reads users.is_admin from the database
on each request (one primary-key lookup): an admin whose role is revoked loses access
with their next request, and nothing is cached to go stale. Each admin request is
logged in one line with the admin's id and the route; the query string is not (a
lookup names users).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.admin_push_log import MAX_LIMIT, Cursor, push_log
from app.admin_stats import MAX_DAYS, stats
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.messenger.models import DeviceToken
from app.models import MAX_ID, User
from app.openapi import schemas
from app.openapi.api import documented
from app.web import RequestReader, query_int

log = logging.getLogger(__name__)

_users = User.__table__
_devices = DeviceToken.__table__
MAX_LOOKUP = 20
USER_LOG_ENTRIES = 50


async def require_admin(engine: AsyncEngine, reader: RequestReader, request: Request) -> int:
    """The caller's id if they are an admin: 401 without a valid token, 403 otherwise."""
    user_id = await reader.user_id(request)
    route = f"{request.method} {request.url.path}"
    async with engine.connect() as conn:
        is_admin = await conn.scalar(select(_users.c.is_admin).where(_users.c.id == user_id))
    if not is_admin:
        log.info("admin access refused user=%s route=%s", user_id, route)
        raise ApiError(403, "forbidden", "this is for admins only")
    log.info("admin access admin=%s route=%s", user_id, route)
    return user_id


def _user(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "username": row.username,
        "display_name": row.display_name,
        "is_admin": row.is_admin,
        "created_at": row.created_at,
    }


class AdminRoutes:
    def __init__(self, engine: AsyncEngine, reader: RequestReader) -> None:
        self._engine = engine
        self._reader = reader

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/admin/stats", self.stats, methods=["GET"]),
            Route("/api/v1/admin/push-log", self.push_log, methods=["GET"]),
            Route("/api/v1/admin/users", self.find_users, methods=["GET"]),
            Route("/api/v1/admin/users/{user_id:int}", self.get_user, methods=["GET"]),
        ]

    @documented(
        "Daily push statistics",
        query=schemas.StatsQuery,
        responses={200: schemas.AdminStats, 403: "admins only"},
        tags=["admin"],
    )
    async def stats(self, request: Request) -> Response:
        await require_admin(self._engine, self._reader, request)
        days = query_int(request, "days", minimum=1, maximum=MAX_DAYS) or 30
        async with self._engine.connect() as conn:
            return JSONResponse(await stats(conn, days))

    @documented(
        "Every push decision and delivery, newest first",
        query=schemas.PushLogQuery,
        responses={200: schemas.PushLog, 403: "admins only"},
        tags=["admin"],
    )
    async def push_log(self, request: Request) -> Response:
        await require_admin(self._engine, self._reader, request)
        user_id = query_int(request, "user_id", minimum=1)
        # Past the cap is not an error: a client asking for more gets the most there is.
        limit = min(query_int(request, "limit", minimum=1, maximum=MAX_ID) or 100, MAX_LIMIT)
        raw = request.query_params.get("before")
        before = Cursor.parse(raw) if raw else None
        async with self._engine.connect() as conn:
            entries, next_before = await push_log(conn, user_id, before, limit)
        return JSONResponse({"entries": entries, "next_before": next_before})

    @documented(
        "Find users by username",
        query=schemas.AdminUserSearch,
        responses={200: schemas.AdminUserList, 403: "admins only"},
        tags=["admin"],
    )
    async def find_users(self, request: Request) -> Response:
        """Users whose username starts with `q` (at most MAX_LOOKUP, by username)."""
        await require_admin(self._engine, self._reader, request)
        q = request.query_params.get("q", "").strip().lower()
        if len(q) > 64:
            raise ApiError(422, "invalid_field", "q is over 64 characters")
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = (
            select(_users)
            .where(_users.c.username.like(escaped, escape="\\"))
            .order_by(_users.c.username)
            .limit(MAX_LOOKUP)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return JSONResponse({"users": [_user(row) for row in rows]})

    @documented(
        "A user, their devices and push log",
        responses={200: schemas.AdminUserDetail, 403: "admins only", 404: "no such user"},
        tags=["admin"],
    )
    async def get_user(self, request: Request) -> Response:
        """One user, their devices (never the token) and their latest push log."""
        await require_admin(self._engine, self._reader, request)
        user_id = request.path_params["user_id"]
        if user_id > MAX_ID:
            raise ApiError(404, "user_not_found", "no such user")
        d = _devices.c
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(_users).where(_users.c.id == user_id))).first()
            if row is None:
                raise ApiError(404, "user_not_found", "no such user")
            devices = (
                await conn.execute(
                    select(
                        d.id,
                        d.platform,
                        d.provider,
                        d.device_name,
                        d.is_active,
                        d.created_at,
                        d.last_used_at,
                    )
                    .where(d.user_id == user_id)
                    .order_by(d.last_used_at.desc())
                )
            ).all()
            entries, next_before = await push_log(conn, user_id, None, USER_LOG_ENTRIES)
        return JSONResponse(
            {
                "user": _user(row),
                "devices": [
                    {
                        "id": device.id,
                        "platform": device.platform,
                        "provider": device.provider,
                        "name": device.device_name,
                        "is_active": device.is_active,
                        "created_at": device.created_at,
                        "last_used_at": device.last_used_at,
                    }
                    for device in devices
                ],
                "push_log": entries,
                "next_before": next_before,
            }
        )
