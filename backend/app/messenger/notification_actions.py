"""Reply and Mark as read from a Web Push notification, without a session.

The service worker holds no access token; each notification's payload carries an action
token (action_tokens) good for one user, device and conversation. These routes take it
instead of an Authorization header, check that its device is still that user's, active
and bound to the token's session, and that the session stands (the same primary-key
read as every REST call), then go the same way as the REST send and read: the Sender
(participant, blocks, size, flood limits) and the read marks.
"""

from __future__ import annotations

import logging
from typing import Annotated

from pydantic import BaseModel, Field, StrictInt, StrictStr, StringConstraints
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import Settings
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.messenger.action_tokens import ActionClaims, InvalidActionToken, decode_action_token
from app.messenger.models import DeviceToken, Participant
from app.messenger.participants import ParticipantCache
from app.messenger.reads import ReadMarks
from app.messenger.send import Sender
from app.models import MAX_ID
from app.openapi import schemas
from app.openapi.api import documented
from app.ratelimit import RateLimiter, too_many_requests
from app.sessions import SessionStore
from app.web import RequestReader

log = logging.getLogger(__name__)
_devices = DeviceToken.__table__
_participants = Participant.__table__

# Far longer than any token we issue: a longer one is not ours, and is not decoded.
MAX_ACTION_TOKEN = 2048


class _ActionBody(BaseModel):
    action_token: StrictStr | None = None


class ReplyBody(_ActionBody):
    content: StrictStr
    client_msg_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


class ReadActionBody(_ActionBody):
    seq: StrictInt = Field(ge=0, le=MAX_ID)


def _refused() -> ApiError:
    return ApiError(
        401,
        "invalid_token",
        "the action token is invalid or expired, or its device or session has ended",
    )


class NotificationActionRoutes:
    """/api/v1/messenger/notification-actions/{reply,read}."""

    def __init__(
        self,
        engine: AsyncEngine,
        reader: RequestReader,
        participants: ParticipantCache,
        sender: Sender,
        reads: ReadMarks,
        limiter: RateLimiter,
        settings: Settings,
        sessions: SessionStore,
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._participants = participants
        self._sender = sender
        self._reads = reads
        self._limiter = limiter
        self._settings = settings
        self._sessions = sessions

    @property
    def routes(self) -> list[Route]:
        base = "/api/v1/messenger/notification-actions"
        return [
            Route(base + "/reply", self.reply, methods=["POST"]),
            Route(base + "/read", self.read, methods=["POST"]),
        ]

    async def _claims(self, token: str | None) -> ActionClaims:
        """Who may act, and on which conversation: 401 unless the token is ours, unexpired,
        its device is still active, the same user's and bound to the token's session, and
        that session stands."""
        if not token:
            raise ApiError(401, "unauthorized", "missing action token")
        if len(token) > MAX_ACTION_TOKEN:
            raise _refused()
        try:
            claims = decode_action_token(token, self._settings.signing_key)
        except InvalidActionToken:
            raise _refused() from None
        async with self._engine.connect() as conn:
            device = (
                await conn.execute(
                    select(_devices.c.user_id, _devices.c.is_active, _devices.c.session_id).where(
                        _devices.c.id == claims.device_id
                    )
                )
            ).first()
        if device is None or not device.is_active or device.user_id != claims.user_id:
            log.info(
                "notification action refused, device gone device=%s user=%s",
                claims.device_id,
                claims.user_id,
            )
            raise _refused()
        # A token names the session its device was bound to when it was issued: once the
        # device is registered again from another session, the earlier tokens are done.
        # A device from before devices had sessions has none, nor have its tokens.
        if device.session_id != claims.session_id or (
            claims.session_id is not None
            and not await self._sessions.stands(claims.user_id, claims.session_id)
        ):
            log.info(
                "notification action refused, session ended device=%s user=%s session=%s",
                claims.device_id,
                claims.user_id,
                claims.session_id,
            )
            raise _refused()
        return claims

    async def claims(self, token: str | None) -> ActionClaims:
        """The token checked as the actions check it, for other routes that take it (a
        notification's open, app.notification_history)."""
        return await self._claims(token)

    @documented(
        "Reply from a notification (its action token, no bearer)",
        body=ReplyBody,
        responses={
            200: schemas.Message,
            201: schemas.Message,
            401: "the action token is invalid or expired, or its device or session ended",
            403: "blocked, read-only, or no longer a participant",
            404: "the token's conversation is gone",
            429: "too many messages",
        },
        tags=["notification actions"],
        auth=False,
    )
    async def reply(self, request: Request) -> Response:
        body = await self._reader.json(request, ReplyBody)
        claims = await self._claims(body.action_token)
        message, created = await self._sender.send(
            claims.user_id, claims.conversation_id, body.content, body.client_msg_id
        )
        if created:
            log.info(
                "notification reply user=%s device=%s conversation=%s message=%s",
                claims.user_id,
                claims.device_id,
                claims.conversation_id,
                message["id"],
            )
        return JSONResponse(message, 201 if created else 200)

    @documented(
        "Mark read from a notification (its action token, no bearer)",
        body=ReadActionBody,
        responses={
            200: schemas.ReadMark,
            401: "the action token is invalid or expired, or its device or session ended",
            403: "no longer a participant",
            404: "the token's conversation is gone",
            429: "too many actions",
        },
        tags=["notification actions"],
        auth=False,
    )
    async def read(self, request: Request) -> Response:
        body = await self._reader.json(request, ReadActionBody)
        claims = await self._claims(body.action_token)
        participants = await self._participants.of_member(claims.user_id, claims.conversation_id)
        # Marks are not sends, but one stolen token must not make the node write without
        # end: the same rate as sends, in a bucket of their own.
        retry_after = await self._limiter.hit(
            f"notification-read:{claims.user_id}",
            self._settings.send_rate_per_second,
            self._settings.send_burst,
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many read marks; slow down")
        # The device that acted closed its notification itself: no clearing push for it.
        await self._reads.mark(
            claims.user_id, claims.conversation_id, body.seq, participants, claims.device_id
        )
        # The mark as it now is: not past the last message, never moved back.
        async with self._engine.connect() as conn:
            mark = await conn.scalar(
                select(_participants.c.last_read_seq).where(
                    _participants.c.conversation_id == claims.conversation_id,
                    _participants.c.user_id == claims.user_id,
                )
            )
        return JSONResponse({"conversation_id": claims.conversation_id, "seq": mark or 0})
