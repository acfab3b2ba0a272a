"""/api/v1/admin/announcements: admins broadcast to everyone or to a list of users.

Admins only (`require_admin`, as every admin route). Making one costs a row and a
rate-limited hit per admin; the sending is a background job (messenger.broadcast) on
whichever node claims it, so the answer is 202 at once and the progress is read back
with GET. Unknown user ids in a list are not an error: they are counted as `failed`
(an id may be deleted between the request and its chunk anyway). The content is never
logged, only ids and counts.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictInt, StringConstraints
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.admin import require_admin
from app.config import Settings
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.messenger.models import Announcement
from app.models import MAX_ID
from app.openapi import schemas
from app.openapi.api import documented
from app.ratelimit import RateLimiter, too_many_requests
from app.web import RequestReader

log = logging.getLogger(__name__)

_announcements = Announcement.__table__
MAX_RECIPIENTS = 100_000
MAX_TITLE = 200


class AnnouncementBody(BaseModel):
    title: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TITLE)
    ]
    content: str
    # None: everyone. Ids that are no user are counted as failed.
    user_ids: list[Annotated[StrictInt, Field(ge=1, le=MAX_ID)]] | None = Field(
        default=None, min_length=1, max_length=MAX_RECIPIENTS
    )


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "title": row.title,
        "audience": row.audience,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "recipients": row.recipients,
        "delivered_live": row.delivered_live,
        "pushed": row.pushed,
        "failed": row.failed,
        "finished_at": row.finished_at,
    }


class AnnouncementRoutes:
    def __init__(
        self,
        engine: AsyncEngine,
        reader: RequestReader,
        limiter: RateLimiter,
        settings: Settings,
        wake: Callable[[], None],
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._limiter = limiter
        self._settings = settings
        # Tells this node's job loop to look now rather than at its next poll.
        self._wake = wake

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/admin/announcements", self.create, methods=["POST"]),
            Route("/api/v1/admin/announcements/{announcement_id}", self.get, methods=["GET"]),
        ]

    @documented(
        "Send an announcement (to user_ids, or everyone)",
        body=AnnouncementBody,
        responses={
            202: schemas.AnnouncementStarted,
            403: "admins only",
            429: "too many announcements",
        },
        tags=["admin"],
    )
    async def create(self, request: Request) -> Response:
        admin_id = await require_admin(self._engine, self._reader, request)
        body = await self._reader.json(request, AnnouncementBody)
        if not body.content.strip():
            raise ApiError(422, "empty_content", "the announcement is empty")
        if len(body.content) > self._settings.max_message_length:
            raise ApiError(
                422,
                "message_too_long",
                f"the content is over {self._settings.max_message_length} characters",
            )
        s = self._settings
        retry_after = await self._limiter.hit(
            f"announcement:{admin_id}", s.announcement_rate_per_hour / 3600, s.announcement_burst
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many announcements; wait a while")
        announcement_id = str(uuid.uuid4())
        user_ids = sorted(set(body.user_ids)) if body.user_ids is not None else None
        async with self._engine.begin() as conn:
            await conn.execute(
                _announcements.insert().values(
                    id=announcement_id,
                    created_by=admin_id,
                    title=body.title,
                    content=body.content,
                    audience="all" if user_ids is None else "list",
                    user_ids=user_ids,
                    status="sending",
                    created_at=utcnow(),
                )
            )
        log.info(
            "announcement created id=%s admin=%s audience=%s listed=%s",
            announcement_id,
            admin_id,
            "all" if user_ids is None else "list",
            len(user_ids) if user_ids is not None else "-",
        )
        self._wake()
        return JSONResponse({"id": announcement_id, "status": "sending"}, 202)

    @documented(
        "An announcement and how far its sending got",
        responses={200: schemas.Announcement, 403: "admins only", 404: "no such announcement"},
        tags=["admin"],
    )
    async def get(self, request: Request) -> Response:
        await require_admin(self._engine, self._reader, request)
        announcement_id = request.path_params["announcement_id"]
        if len(announcement_id) > 36:
            raise ApiError(404, "announcement_not_found", "no such announcement")
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(_announcements).where(_announcements.c.id == announcement_id)
                )
            ).first()
            if row is None:
                raise ApiError(404, "announcement_not_found", "no such announcement")
        # While it sends, the node sending it counts the pushes once a second; once
        # done, the job's final count.
        return JSONResponse(_view(row))
