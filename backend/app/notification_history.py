"""A user's notification history: what they were pushed, on which devices with what
outcome, whether and how they opened it; dismissing; and the test push to their own
devices.

    GET    /api/v1/me/notifications?before=<id>&limit=   newest first, with `unread`
    GET    /api/v1/me/notifications/{id}                 one, with its deliveries
    POST   /api/v1/me/notifications/{id}/opened          {how, action_token?}
    DELETE /api/v1/me/notifications                      dismiss all
    DELETE /api/v1/me/notifications/{id}                 dismiss one
    POST   /api/v1/me/devices/test-push                  202 {id, devices}
    POST   /api/v1/notifications/test                    the same

A notification of another user is answered as unknown (404), never as forbidden.
`opened` takes a bearer token, or, from a service worker that holds none, the token
of the push it clicked: a message's action token (app.messenger.action_tokens), bound
to one user, device and conversation, opens only that user's notifications of that
conversation; a test push's or reminder's open token (push.open_tokens) opens only
its notification. Either way its device must still be the user's, active, and its
session standing. Opens are rate limited per user, as the notification actions are.
The first open wins: later ones answer 200 and change nothing.

`unread` counts what the user has not seen: neither opened, dismissed, nor read in the
app (the conversation's read mark, participants.last_read_seq, has passed the
message's seq); each item says `read` the same way, or opened. Opening stays what it
is, a real open from a notification: a read in the app marks nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, StrictStr
from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import metrics
from app.config import Settings
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.messenger.models import DeviceToken, Message, Notification, Participant, PushAttempt
from app.messenger.notification_actions import MAX_ACTION_TOKEN, NotificationActionRoutes
from app.messenger.push.open_tokens import InvalidOpenToken, decode_open_token
from app.messenger.push.trial import TrialPushes
from app.openapi import schemas
from app.openapi.api import OPTIONAL, documented
from app.ratelimit import RateLimiter, too_many_requests
from app.sessions import SessionStore
from app.web import RequestReader, bearer_token, query_int

log = logging.getLogger(__name__)
_notifications = Notification.__table__
_attempts = PushAttempt.__table__
_messages = Message.__table__
_participants = Participant.__table__
_devices = DeviceToken.__table__

DEFAULT_LIMIT = 50
MAX_LIMIT = 100  # a larger limit is capped to this, not refused
LIMIT_REFUSED = 1_000_000  # past this it is not a page size at all
# Each test push fans out to every device of the caller through the providers.
TEST_PUSH_BURST = 5
TEST_PUSH_RATE = TEST_PUSH_BURST / 60  # per second: 5 a minute
_ID = re.compile(r"[0-9a-f-]{36}")


class OpenedBody(BaseModel):
    how: Literal["click", "foreground", "background"]
    action_token: StrictStr | None = None


def _not_found() -> ApiError:
    return ApiError(404, "notification_not_found", "no such notification")


def _checked_id(raw: str) -> str:
    # Ids are UUIDs: anything else is unknown, and never reaches a query.
    if not _ID.fullmatch(raw):
        raise _not_found()
    return raw


def _ms_between(start: datetime, end: datetime | None) -> int | None:
    return None if end is None else max(0, round((end - start).total_seconds() * 1000))


def _with_read_mark(query: Any) -> Any:
    """The query over notifications joined to their message (seq) and the user's read
    mark of its conversation: both primary-key look-ups."""
    n, m, p = _notifications.c, _messages.c, _participants.c
    return query.select_from(
        _notifications.outerjoin(_messages, m.id == n.message_id).outerjoin(
            _participants, and_(p.conversation_id == n.conversation_id, p.user_id == n.user_id)
        )
    )


def _read_in_app() -> Any:
    """Read in the app: the conversation's read mark has passed the message."""
    m, p = _messages.c, _participants.c
    return and_(m.seq.is_not(None), p.last_read_seq.is_not(None), p.last_read_seq >= m.seq)


def _refused() -> ApiError:
    return ApiError(
        401,
        "invalid_token",
        "the token is invalid or expired, or its device or session has ended",
    )


def _item(row: Row[Any], deliveries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "conversation_id": row.conversation_id,
        "message_id": row.message_id,
        "title": row.title,
        "body": row.body,
        "created_at": row.created_at,
        "opened_at": row.opened_at,
        "opened_how": row.opened_how,
        "time_to_open_ms": _ms_between(row.created_at, row.opened_at),
        "dismissed_at": row.dismissed_at,
        "read": bool(row.read),
        "deliveries": deliveries,
    }


async def _deliveries(
    conn: AsyncConnection, notification_ids: Iterable[str]
) -> dict[str, list[dict[str, Any]]]:
    """Each notification's deliveries (push_attempts), in the order recorded."""
    ids = list(notification_ids)
    found: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    if not ids:
        return found
    a = _attempts.c
    rows = await conn.execute(
        select(a.notification_id, a.device_id, a.provider, a.outcome, a.latency_ms, a.created_at)
        .where(a.notification_id.in_(ids))
        .order_by(a.id)
    )
    for r in rows:
        found[r.notification_id].append(
            {
                "device_id": r.device_id,
                "provider": r.provider,
                "outcome": r.outcome,
                "latency_ms": r.latency_ms,
                "at": r.created_at,
            }
        )
    return found


class NotificationHistoryRoutes:
    def __init__(
        self,
        engine: AsyncEngine,
        reader: RequestReader,
        actions: NotificationActionRoutes,
        trial_pushes: TrialPushes,
        limiter: RateLimiter,
        settings: Settings,
        sessions: SessionStore,
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._actions = actions
        self._trials = trial_pushes
        self._limiter = limiter
        self._settings = settings
        self._sessions = sessions

    @property
    def routes(self) -> list[Route]:
        base = "/api/v1/me/notifications"
        return [
            Route(base, self.list_notifications, methods=["GET"]),
            Route(base, self.dismiss_all, methods=["DELETE"]),
            Route(base + "/{id}", self.one, methods=["GET"]),
            Route(base + "/{id}", self.dismiss, methods=["DELETE"]),
            Route(base + "/{id}/opened", self.opened, methods=["POST"]),
            Route("/api/v1/me/devices/test-push", self.test_push, methods=["POST"]),
            Route("/api/v1/notifications/test", self.test_push, methods=["POST"]),
        ]

    @documented(
        "The caller's notifications, newest first",
        query=schemas.NotificationsQuery,
        responses={200: schemas.NotificationList},
        tags=["notifications"],
    )
    async def list_notifications(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        limit = query_int(request, "limit", minimum=1, maximum=LIMIT_REFUSED) or DEFAULT_LIMIT
        limit = min(limit, MAX_LIMIT)
        before = request.query_params.get("before") or None
        n = _notifications.c
        read = or_(n.opened_at.is_not(None), _read_in_app())
        query = (
            _with_read_mark(select(_notifications, case((read, True), else_=False).label("read")))
            .where(n.user_id == user_id, n.dismissed_at.is_(None))
            .order_by(n.created_at.desc(), n.id.desc())
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            if before is not None:
                # The cursor is the last notification of the page before: its own, or
                # not a cursor at all.
                if not _ID.fullmatch(before):
                    raise ApiError(422, "invalid_field", "before must be a notification id")
                cursor = (
                    await conn.execute(
                        select(n.created_at, n.id).where(n.id == before, n.user_id == user_id)
                    )
                ).first()
                if cursor is None:
                    raise ApiError(422, "invalid_field", "before names no notification of yours")
                query = query.where(
                    or_(
                        n.created_at < cursor.created_at,
                        and_(n.created_at == cursor.created_at, n.id < cursor.id),
                    )
                )
            rows = list(await conn.execute(query))
            deliveries = await _deliveries(conn, [r.id for r in rows])
            unread = await conn.scalar(
                _with_read_mark(select(func.count())).where(
                    n.user_id == user_id,
                    n.opened_at.is_(None),
                    n.dismissed_at.is_(None),
                    ~_read_in_app(),
                )
            )
        return JSONResponse(
            {
                "notifications": [_item(r, deliveries[r.id]) for r in rows],
                "unread": int(unread or 0),
            }
        )

    @documented(
        "One notification",
        responses={200: schemas.Notification, 404: "no such notification"},
        tags=["notifications"],
    )
    async def one(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        notification_id = _checked_id(request.path_params["id"])
        async with self._engine.connect() as conn:
            n = _notifications.c
            read = or_(n.opened_at.is_not(None), _read_in_app())
            row = (
                await conn.execute(
                    _with_read_mark(
                        select(_notifications, case((read, True), else_=False).label("read"))
                    ).where(n.id == notification_id, n.user_id == user_id)
                )
            ).first()
            if row is None:
                raise _not_found()
            deliveries = await _deliveries(conn, [row.id])
        return JSONResponse(_item(row, deliveries[row.id]))

    @documented(
        "Record a notification's first open (bearer, or its action or open token in the body)",
        body=OpenedBody,
        responses={200: schemas.Opened, 404: "no such notification", 429: "too many opens"},
        tags=["notifications"],
        auth=OPTIONAL,
    )
    async def opened(self, request: Request) -> Response:
        """The first open of a notification: when, and how (a click on it, the app
        brought to the foreground by it, or opened in the background)."""
        notification_id = _checked_id(request.path_params["id"])
        conversation_id: str | None = None
        if bearer_token(request.headers.get("authorization")) is not None:
            user_id = await self._reader.user_id(request)
            body = await self._reader.json(request, OpenedBody)
        else:
            body = await self._reader.json(request, OpenedBody)
            opened_by = await self._open_claims(body.action_token, notification_id)
            if opened_by is not None:
                user_id = opened_by
            else:
                claims = await self._actions.claims(body.action_token)
                user_id, conversation_id = claims.user_id, claims.conversation_id
        # Each open is a write: one stolen token must not make the node write without
        # end. The same rate as the notification actions, in a bucket of its own.
        retry_after = await self._limiter.hit(
            f"notification-opened:{user_id}",
            self._settings.send_rate_per_second,
            self._settings.send_burst,
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many opens; slow down")
        n = _notifications.c
        mine = [n.id == notification_id, n.user_id == user_id]
        if conversation_id is not None:
            # An action token speaks for one conversation's notifications only.
            mine.append(n.conversation_id == conversation_id)
        now = utcnow()
        async with self._engine.begin() as conn:
            first = await conn.execute(
                update(_notifications)
                .where(*mine, n.opened_at.is_(None))
                .values(opened_at=now, opened_how=body.how)
            )
            row = (
                await conn.execute(
                    select(n.id, n.created_at, n.opened_at, n.opened_how).where(*mine)
                )
            ).first()
        if row is None:
            raise _not_found()
        if first.rowcount:
            metrics.notifications_opened.labels(body.how).inc()
            log.info(
                "notification opened id=%s user=%s how=%s ms=%s",
                notification_id,
                user_id,
                body.how,
                _ms_between(row.created_at, row.opened_at),
            )
        return JSONResponse(
            {
                "id": row.id,
                "opened_at": row.opened_at,
                "opened_how": row.opened_how,
                "time_to_open_ms": _ms_between(row.created_at, row.opened_at),
            }
        )

    async def _open_claims(self, token: str | None, notification_id: str) -> int | None:
        """The user an open token speaks for, if `token` is one: 401 unless it names this
        notification and its device is still the user's, active and bound to the token's
        session, and that session stands. None: not an open token (an action token, or
        nothing), for the action tokens' check to judge."""
        if not token or len(token) > MAX_ACTION_TOKEN:
            return None
        try:
            claims = decode_open_token(token, self._settings.signing_key)
        except InvalidOpenToken:
            return None
        if claims.notification_id != notification_id:
            log.info(
                "notification open refused, another notification's token user=%s device=%s",
                claims.user_id,
                claims.device_id,
            )
            raise _refused()
        d = _devices.c
        async with self._engine.connect() as conn:
            device = (
                await conn.execute(
                    select(d.user_id, d.is_active, d.session_id).where(d.id == claims.device_id)
                )
            ).first()
        if (
            device is None
            or not device.is_active
            or device.user_id != claims.user_id
            or device.session_id != claims.session_id
            or (
                claims.session_id is not None
                and not await self._sessions.stands(claims.user_id, claims.session_id)
            )
        ):
            log.info(
                "notification open refused, device or session ended user=%s device=%s",
                claims.user_id,
                claims.device_id,
            )
            raise _refused()
        return claims.user_id

    @documented(
        "Dismiss a notification",
        responses={200: schemas.Dismissed, 404: "no such notification"},
        tags=["notifications"],
    )
    async def dismiss(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        notification_id = _checked_id(request.path_params["id"])
        n = _notifications.c
        async with self._engine.begin() as conn:
            # Dismissed once: the first time stands.
            await conn.execute(
                update(_notifications)
                .where(n.id == notification_id, n.user_id == user_id, n.dismissed_at.is_(None))
                .values(dismissed_at=utcnow())
            )
            found = await conn.scalar(
                select(n.id).where(n.id == notification_id, n.user_id == user_id)
            )
        if found is None:
            raise _not_found()
        return JSONResponse({"id": notification_id, "dismissed": True})

    @documented(
        "Dismiss every notification", responses={200: schemas.DismissedAll}, tags=["notifications"]
    )
    async def dismiss_all(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        n = _notifications.c
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(_notifications)
                .where(n.user_id == user_id, n.dismissed_at.is_(None))
                .values(dismissed_at=utcnow())
            )
        log.info("notifications dismissed user=%s count=%d", user_id, result.rowcount)
        return JSONResponse({"dismissed": result.rowcount})

    @documented(
        "Send a test notification to each active device",
        responses={202: schemas.TestPush, 409: "no active device", 429: "too many test pushes"},
        tags=["notifications"],
    )
    async def test_push(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        retry_after = await self._limiter.hit(
            f"test-push:{user_id}", TEST_PUSH_RATE, TEST_PUSH_BURST
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many test pushes; wait a minute")
        notification_id, devices = await self._trials.send(user_id)
        if not devices:
            raise ApiError(409, "no_device", "you have no active device to push to")
        log.info(
            "test push started notification=%s user=%s devices=%d",
            notification_id,
            user_id,
            len(devices),
        )
        return JSONResponse(
            {
                "id": notification_id,
                "devices": [{"device_id": d.id, "provider": d.provider} for d in devices],
            },
            202,
        )
