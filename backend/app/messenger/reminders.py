"""Reminders: "remind me about this message at ...".

A user may set one on any message they can see (a conversation they are in, from after
they joined); anything else is 404, as if it did not exist. At its time the timer loop
(timers.py) hands it here: a user with a socket anywhere gets a `reminder {id, message}`
frame on every socket (through the fan-out), a user with none a push on each active
device (title "Reminder", the message as their preview setting allows), recorded in the
notification history with kind "reminder". Mute and quiet hours do not hold it back: the
user asked for it. A message deleted meanwhile still fires, shown deleted (no text); a
user who left the conversation meanwhile gets nothing (the reminder is cancelled).

A reminder is marked `firing` under its node's lease before anything goes out and
`fired` once every push has its outcome recorded: a node dying in between leaves it to
be fired again by another node once the lease runs out, and a device that already has an
outcome for its notification id is not pushed again (the frame may come twice; clients
know it by its id).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints
from sqlalchemy import Row, and_, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import Settings
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse, dumps
from app.messenger.db_clock import db_later, db_now
from app.messenger.fanout import Fanout
from app.messenger.message_store import FIELDS, message_dict
from app.messenger.models import DeviceToken, Message, Participant, PushAttempt, Reminder
from app.messenger.presence import Presence
from app.messenger.push.base import Device, Notification, Outcome
from app.messenger.push.delivery import Delivery, RetryPolicy, deactivate_dead
from app.messenger.push.history import attempt_row, notification_row, write_notifications
from app.messenger.push.notification import (
    PREVIEWS,
    attachments_line,
    conversation_url,
    preview,
)
from app.messenger.push.service import PushService
from app.messenger.scheduled import check_due_time
from app.messenger.timers import cancel_unclaimed, renew_lease
from app.messenger.user_lock import lock_user
from app.models import NotificationSettings, User
from app.openapi import schemas
from app.openapi.api import documented
from app.ratelimit import RateLimiter, too_many_requests
from app.web import RequestReader, UTCDatetime

log = logging.getLogger(__name__)
_reminders = Reminder.__table__
_messages = Message.__table__
_participants = Participant.__table__
_devices = DeviceToken.__table__
_users = User.__table__
_settings = NotificationSettings.__table__
_attempts = PushAttempt.__table__
# The reminder's user's row in its conversation (none once they left).
_their_place = and_(
    _participants.c.conversation_id == _reminders.c.conversation_id,
    _participants.c.user_id == _reminders.c.user_id,
)

# Any fixed UUID: a reminder's notification id is derived from the reminder's, so a
# reminder fired again after a crash writes no second history entry.
_NAMESPACE = uuid.UUID("0f6c4f0e-8d1e-4d0a-9f57-72656d696e64")
TITLE = "Reminder"


class ReminderBody(BaseModel):
    message_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    remind_at: UTCDatetime


def reminder_notification_id(reminder_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, reminder_id))


def _message_columns() -> list[Any]:
    return [_messages.c[name].label(f"m_{name}") for name in FIELDS]


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "remind_at": row.remind_at,
        "message_id": row.message_id,
        "conversation_id": row.conversation_id,
        "status": row.status,
        "created_at": row.created_at,
        "message": message_dict(row, prefix="m_") if _visible(row) else None,
    }


def _visible(row: Any) -> bool:
    """Whether the user still sees the message (in the conversation, from after joining)."""
    return row.r_joined_seq is not None and row.m_seq > row.r_joined_seq


def reminder_text(message: Mapping[str, Any], sender_name: str, mode: str) -> str:
    """What the push says of the message, as the user's preview setting allows."""
    if mode not in PREVIEWS or mode == "none":
        return "You asked to be reminded of a message"
    if message.get("deleted_at") is not None:
        return f"A message from {preview(sender_name, 120)} (deleted)"
    if mode == "sender":
        return f"A message from {preview(sender_name, 120)}"
    return preview(str(message["content"])) or attachments_line("en", message.get("attachments"))


class Reminders:
    """The REST routes, and firing at the time (a timers.TimerKind)."""

    name = "reminders"
    table = _reminders
    # A `firing` row whose node died is claimed again once its lease runs out.
    claimable: tuple[str, ...] = ("pending", "firing")

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        presence: Presence,
        fanout: Fanout,
        push: PushService,
        limiter: RateLimiter,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._node = settings.node_id
        self._presence = presence
        self._fanout = fanout
        self._push = push
        self._limiter = limiter
        self._lease = settings.timer_lease_seconds
        self._policy = RetryPolicy.from_settings(settings)

    @property
    def due(self) -> Any:
        return _reminders.c.remind_at

    # -- REST ---------------------------------------------------------------------

    def routes(self, reader: RequestReader) -> list[Route]:
        @documented(
            "Set a reminder about a message",
            body=ReminderBody,
            responses={
                201: schemas.ReminderCreated,
                404: "no such message",
                409: "too many reminders",
                429: "too many reminders at once",
            },
            tags=["reminders"],
        )
        async def create(request: Request) -> Response:
            user_id = await reader.user_id(request)
            body = await reader.json(request, ReminderBody)
            await check_due_time(
                self._engine, body.remind_at, self._settings.max_schedule_ahead_days, "remind_at"
            )
            settings = self._settings
            wait = await self._limiter.hit(
                f"reminder:{user_id}",
                settings.reminder_rate_per_minute / 60,
                settings.reminder_burst,
            )
            if wait > 0:
                raise too_many_requests(wait, "too many reminders; slow down")
            return JSONResponse(await self.create(user_id, body), 201)

        @documented(
            "The caller's pending reminders",
            responses={200: schemas.ReminderList},
            tags=["reminders"],
        )
        async def list_pending(request: Request) -> Response:
            user_id = await reader.user_id(request)
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(
                            _reminders,
                            _participants.c.joined_seq.label("r_joined_seq"),
                            *_message_columns(),
                        )
                        .join(_messages, _messages.c.id == _reminders.c.message_id)
                        # The user's current place in the conversation: one they left (or
                        # joined again after the message) shows no text of it.
                        .outerjoin(_participants, _their_place)
                        .where(_reminders.c.user_id == user_id, _reminders.c.status == "pending")
                        .order_by(_reminders.c.remind_at, _reminders.c.id)
                        .limit(max(1, self._settings.max_reminders_per_user))
                    )
                ).all()
            return JSONResponse({"reminders": [_view(row) for row in rows]})

        @documented(
            "Cancel a reminder",
            responses={
                200: schemas.StatusChange,
                404: "no such reminder",
                409: "the reminder is no longer pending",
            },
            tags=["reminders"],
        )
        async def cancel(request: Request) -> Response:
            user_id = await reader.user_id(request)
            return JSONResponse(await self.cancel(user_id, request.path_params["reminder_id"]))

        base = "/api/v1/me/reminders"
        return [
            Route(base, create, methods=["POST"]),
            Route(base, list_pending, methods=["GET"]),
            Route(base + "/{reminder_id}", cancel, methods=["DELETE"]),
        ]

    async def create(self, user_id: int, body: ReminderBody) -> dict[str, Any]:
        limit = self._settings.max_reminders_per_user
        async with self._engine.begin() as conn:
            # Visible to the caller: in a conversation they are in, from after they joined.
            found = (
                await conn.execute(
                    select(_messages.c.id, _messages.c.conversation_id)
                    .join(
                        _participants,
                        and_(
                            _participants.c.conversation_id == _messages.c.conversation_id,
                            _participants.c.user_id == user_id,
                        ),
                    )
                    .where(
                        _messages.c.id == body.message_id,
                        _messages.c.seq > _participants.c.joined_seq,
                    )
                )
            ).first()
            if found is None:
                raise ApiError(404, "message_not_found", "no such message")
            # Two requests at once must not both count under the cap and both insert.
            await lock_user(conn, user_id)
            pending = await conn.scalar(
                select(func.count())
                .select_from(_reminders)
                .where(_reminders.c.user_id == user_id, _reminders.c.status == "pending")
            )
            if (pending or 0) >= limit:
                raise ApiError(
                    409,
                    "too_many_reminders",
                    f"you have {limit} reminders already; cancel one or wait until one fires",
                )
            row = {
                "id": str(uuid.uuid4()),
                "user_id": user_id,
                "message_id": found.id,
                "conversation_id": found.conversation_id,
                "remind_at": body.remind_at,
                "status": "pending",
                "created_at": utcnow(),
            }
            await conn.execute(insert(_reminders), row)
        log.info(
            "reminder set id=%s user=%d message=%s remind_at=%s",
            row["id"],
            user_id,
            found.id,
            body.remind_at.isoformat(),
        )
        return {
            "id": row["id"],
            "remind_at": row["remind_at"],
            "message_id": found.id,
            "conversation_id": found.conversation_id,
        }

    async def cancel(self, user_id: int, reminder_id: str) -> dict[str, Any]:
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(_reminders.c.status).where(
                        _reminders.c.id == reminder_id, _reminders.c.user_id == user_id
                    )
                )
            ).first()
            if row is None:  # unknown, or someone else's: the same answer
                raise ApiError(404, "reminder_not_found", "no such reminder")
            # Claimed by a node firing it now: too late.
            cancelled = await cancel_unclaimed(conn, _reminders, reminder_id)
        if not cancelled:
            status = "firing" if row.status == "pending" else row.status
            raise ApiError(409, "reminder_not_pending", f"the reminder is {status} already")
        log.info("reminder cancelled id=%s user=%d", reminder_id, user_id)
        return {"id": reminder_id, "status": "cancelled"}

    # -- at the time --------------------------------------------------------------

    async def fire(self, rows: Sequence[Row[Any]]) -> None:
        """Frames to those online, pushes to the others, then marked fired.

        Marked `firing` (still under this node's lease, renewed while the pushes go out)
        before anything is delivered, `fired` once every push has its outcome recorded. A
        node that dies in between leaves a `firing` row that another node fires again
        once the lease runs out, with the same notification id: a device that has an
        outcome for it is not pushed again."""
        ids = [row.id for row in rows]
        dialect = self._engine.dialect.name
        mine = and_(_reminders.c.claimed_by == self._node, _reminders.c.status.in_(self.claimable))
        async with self._engine.connect() as conn:
            found = (
                await conn.execute(
                    select(
                        _reminders.c.id.label("r_id"),
                        _reminders.c.user_id.label("r_user_id"),
                        _participants.c.joined_seq.label("r_joined_seq"),
                        _users.c.display_name.label("r_sender_name"),
                        *_message_columns(),
                    )
                    .join(_messages, _messages.c.id == _reminders.c.message_id)
                    .join(_users, _users.c.id == _messages.c.sender_id)
                    .outerjoin(_participants, _their_place)
                    .where(_reminders.c.id.in_(ids), mine)
                )
            ).all()
        # Left the conversation, or left and joined again after the message: not theirs.
        gone = [r.r_id for r in found if r.r_joined_seq is None or r.m_seq <= r.r_joined_seq]
        async with self._engine.begin() as conn:
            if gone:
                await conn.execute(
                    update(_reminders)
                    .where(_reminders.c.id.in_(gone), mine)
                    .values(status="cancelled", lease_until=None)
                )
            firing: set[str] = set()
            wanted = [r.r_id for r in found if r.r_id not in set(gone)]
            if wanted:
                # Only the rows still ours: a row another node took over is left to it.
                firing = set(
                    (
                        await conn.execute(
                            update(_reminders)
                            .where(_reminders.c.id.in_(wanted), mine)
                            .values(status="firing", lease_until=db_later(dialect, self._lease))
                            .returning(_reminders.c.id)
                        )
                    ).scalars()
                )
        for rid in gone:
            log.info("reminder dropped: the message is not the user's to see id=%s", rid)
        due = [r for r in found if r.r_id in firing]
        if not due:
            return
        online = await self._presence.online({r.r_user_id for r in due})
        live = [r for r in due if r.r_user_id in online]
        plans = await self._plan_pushes([r for r in due if r.r_user_id not in online])
        now = utcnow()
        async with self._engine.begin() as conn:
            await write_notifications(
                conn,
                [
                    notification_row(
                        reminder_notification_id(r.r_id),
                        r.r_user_id,
                        "reminder",
                        n.title,
                        n.body,
                        now,
                        conversation_id=r.m_conversation_id,
                    )
                    for r, n, _ in plans
                ],
            )
        for r in live:
            frame = dumps({"type": "reminder", "id": r.r_id, "message": message_dict(r, "m_")})
            await self._fanout.publish([r.r_user_id], frame)
        renewing = asyncio.create_task(self._keep_leased(list(firing)), name="reminder-lease")
        try:
            await asyncio.gather(
                *(self._deliver_all(r.r_id, n, devices) for r, n, devices in plans if devices)
            )
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
        async with self._engine.begin() as conn:
            fired = (
                await conn.execute(
                    update(_reminders)
                    .where(
                        _reminders.c.id.in_(firing),
                        _reminders.c.claimed_by == self._node,
                        _reminders.c.status == "firing",
                    )
                    .values(status="fired", fired_at=db_now(dialect), lease_until=None)
                    .returning(_reminders.c.id)
                )
            ).all()
        log.info(
            "reminders fired node=%s live=%d pushed=%d dropped=%d marked=%d",
            self._node,
            len(live),
            len(plans),
            len(gone),
            len(fired),
        )

    async def _keep_leased(self, ids: list[str]) -> None:
        """Renew the lease of rows being fired while their pushes are under way."""
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                async with self._engine.begin() as conn:
                    await renew_lease(conn, _reminders, ids, self._node, "firing", self._lease)
            except Exception as exc:  # the next round tries again, well within the lease
                log.warning("reminder lease not renewed node=%s error=%r", self._node, exc)

    async def _plan_pushes(
        self, rows: Sequence[Row[Any]]
    ) -> list[tuple[Row[Any], Notification, list[Device]]]:
        """Each offline user's reminder notification and active devices (one query each
        for all of them)."""
        if not rows:
            return []
        users = {r.r_user_id for r in rows}
        async with self._engine.connect() as conn:
            devices: dict[int, list[Device]] = {}
            for d in await conn.execute(
                select(_devices).where(
                    _devices.c.user_id.in_(users), _devices.c.is_active.is_(True)
                )
            ):
                devices.setdefault(d.user_id, []).append(
                    Device(d.id, d.user_id, d.token, d.platform, d.provider, d.session_id)
                )
            modes = {
                s.user_id: (s.preview, s.locale)
                for s in await conn.execute(
                    select(_settings.c.user_id, _settings.c.preview, _settings.c.locale).where(
                        _settings.c.user_id.in_(users)
                    )
                )
            }
        base = self._settings.public_base_url
        plans = []
        for r in rows:
            mode, locale = modes.get(r.r_user_id, ("full", "en"))
            message = message_dict(r, "m_")
            notification_id = reminder_notification_id(r.r_id)
            notification = Notification(
                title=TITLE,
                body=reminder_text(message, r.r_sender_name, mode),
                data={
                    "type": "reminder",
                    "reminder_id": r.r_id,
                    "conversation_id": r.m_conversation_id,
                    "message_id": r.m_id,
                    "notification_id": notification_id,
                },
                conversation_id=r.m_conversation_id,
                message_id=r.m_id,
                url=conversation_url(base, r.m_conversation_id),
                kind="reminder",
                preview=mode if mode in PREVIEWS else "none",
                locale=locale or "en",
            )
            plans.append((r, notification, devices.get(r.r_user_id, [])))
        return plans

    async def _deliver_all(
        self, reminder_id: str, notification: Notification, devices: list[Device]
    ) -> None:
        """Push each device that has no outcome for this reminder yet (one fired again
        after a crash skips those), through the push service's room and provider limits,
        recording each outcome as it comes."""
        notification_id = reminder_notification_id(reminder_id)
        async with self._engine.connect() as conn:
            done = set(
                (
                    await conn.execute(
                        select(_attempts.c.device_id).where(
                            _attempts.c.notification_id == notification_id
                        )
                    )
                ).scalars()
            )
        await asyncio.gather(
            *(
                self._deliver_one(notification_id, d, notification)
                for d in devices
                if d.id not in done
            )
        )

    async def _deliver_one(
        self, notification_id: str, device: Device, notification: Notification
    ) -> None:
        if device.provider not in self._push.providers:
            delivery = Delivery(Outcome.FAILED, 0, 0.0, "provider is off", None)
        else:
            delivery = await self._push.deliver_single(device, notification, self._policy)
        log.info(
            "reminder push %s provider=%s device=%s user=%d notification=%s",
            delivery.outcome,
            device.provider,
            device.id,
            device.user_id,
            notification_id,
        )
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(PushAttempt),
                # A reminder's deliveries are found by its notification.
                attempt_row(notification_id, device, delivery, utcnow())
                | {"notification_id": notification_id},
            )
            if delivery.outcome == Outcome.DEAD_TOKEN:
                await deactivate_dead(conn, {device.id})
