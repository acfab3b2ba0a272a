"""Scheduled messages: a send with `send_at` waits in the database and goes out then.

Scheduling checks the send as a normal send is checked (content, membership, a block,
the quoted message, the sender's flood bucket) and stores it; GET /scheduled lists the
caller's pending ones, DELETE cancels one. At its time the timer loop (timers.py) hands
it here: it is checked again (a sender who left or was blocked meanwhile: `failed`, with
the reason, nothing sent) and given to the message writer with the others due, so it
gets the seq and time of that moment, goes live on every socket and is pushed like any
message. It is written with the client_msg_id "scheduled:<id>": a node that dies after
the commit and before marking it sent leaves a row that, sent again, is a repeat of the
stored message, never a second one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, bindparam, delete, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import metrics
from app.config import Settings
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse, dumps
from app.messenger.blocks import Blocks
from app.messenger.db_clock import database_now
from app.messenger.fanout import Fanout
from app.messenger.mentions import Mentions
from app.messenger.message_text import check_message_text
from app.messenger.models import Message, ScheduledMessage
from app.messenger.participants import ParticipantCache
from app.messenger.timers import cancel_unclaimed, renew_lease
from app.messenger.user_lock import lock_user
from app.messenger.writer import MessageWriter, Written
from app.openapi import schemas
from app.openapi.api import documented
from app.ratelimit import RateLimiter, too_many_requests
from app.web import RequestReader

log = logging.getLogger(__name__)
_scheduled = ScheduledMessage.__table__
_messages = Message.__table__

CHECKS_AT_ONCE = 8  # (sender, conversation) pairs of a batch checked side by side
PREFIX = "scheduled:"  # the client_msg_id of the message a scheduled one becomes
# (conversation_id, message_id, sender_id) -> whether a reply may quote that message.
ReplyExists = Callable[[str, str, int], Awaitable[bool]]


def _view(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A scheduled message as its sender is shown it."""
    return {
        "id": row["id"],
        "scheduled_id": row["id"],
        "conversation_id": row["conversation_id"],
        "content": row["content"],
        "client_msg_id": row["client_msg_id"],
        "reply_to": row["reply_to"],
        "send_at": row["send_at"],
        "status": row["status"],
        "created_at": row["created_at"],
    }


async def check_due_time(engine: AsyncEngine, when: datetime, ahead_days: int, field: str) -> None:
    """422 `invalid_field` unless `when` is in the future (by the database's clock, the
    one timers fire by) and at most `ahead_days` away."""
    now = await database_now(engine)
    if when <= now:
        raise ApiError(422, "invalid_field", f"{field} must be in the future")
    if when > now + timedelta(days=ahead_days):
        raise ApiError(422, "invalid_field", f"{field} may be at most {ahead_days} days from now")


class ScheduledMessages:
    """Scheduling (REST) and sending at the time (a timers.TimerKind)."""

    name = "scheduled"
    table = _scheduled
    claimable: tuple[str, ...] = ("pending",)

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        participants: ParticipantCache,
        blocks: Blocks,
        limiter: RateLimiter,
        writer: MessageWriter,
        fanout: Fanout,
        mentions: Mentions,
        reply_exists: ReplyExists,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._node = settings.node_id
        self._lease = settings.timer_lease_seconds
        self._participants = participants
        self._blocks = blocks
        self._limiter = limiter
        self._writer = writer
        self._fanout = fanout
        self._mentions = mentions
        self._reply_exists = reply_exists

    @property
    def due(self) -> Any:
        return _scheduled.c.send_at

    # -- scheduling ---------------------------------------------------------------

    async def schedule(
        self,
        sender_id: int,
        conversation_id: str,
        content: str,
        client_msg_id: str | None,
        reply_to: str | None,
        attachments: Sequence[str],
        send_at: datetime,
    ) -> Response:
        """Check the send as a normal one and store it: 202 {scheduled_id, send_at}."""
        settings = self._settings
        await check_due_time(self._engine, send_at, settings.max_schedule_ahead_days, "send_at")
        if attachments:
            # An upload not sent within a day is removed: it could not wait for send_at.
            raise ApiError(422, "invalid_field", "a scheduled message cannot carry attachments")
        check_message_text(content, settings.max_message_length)
        participants = await self._participants.of_sender(sender_id, conversation_id)
        await self._blocks.check_send(sender_id, conversation_id, participants)
        # Scheduling takes from the sender's flood bucket as a send does: sending at the
        # time takes nothing more (it may not be refused then for a burst it never made).
        wait = await self._limiter.hit(
            f"send:{sender_id}", settings.send_rate_per_second, settings.send_burst
        )
        if wait > 0:
            raise too_many_requests(wait, "too many messages; slow down")
        # Stored rows cost more than sends: scheduling has a bucket of its own too.
        wait = await self._limiter.hit(
            f"schedule:{sender_id}", settings.schedule_rate_per_minute / 60, settings.schedule_burst
        )
        if wait > 0:
            raise too_many_requests(wait, "too many scheduled messages; slow down")
        if reply_to is not None and not await self._reply_exists(
            conversation_id, reply_to, sender_id
        ):
            raise ApiError(404, "reply_to_not_found", "reply_to is no message of this conversation")
        if client_msg_id is not None and (
            existing := await self._by_client_id(sender_id, conversation_id, client_msg_id)
        ):
            return JSONResponse(_view(existing._mapping), 202)
        row = {
            "id": str(uuid.uuid4()),
            "conversation_id": conversation_id,
            "sender_id": sender_id,
            "content": content,
            "client_msg_id": client_msg_id,
            "reply_to": reply_to,
            "send_at": send_at,
            "status": "pending",
            "created_at": utcnow(),
        }
        try:
            async with self._engine.begin() as conn:
                # Two requests at once must not both count under the cap and both insert.
                await lock_user(conn, sender_id)
                pending = await conn.scalar(
                    select(func.count())
                    .select_from(_scheduled)
                    .where(_scheduled.c.sender_id == sender_id, _scheduled.c.status == "pending")
                )
                if (pending or 0) >= settings.max_scheduled_per_user:
                    raise ApiError(
                        409,
                        "too_many_scheduled",
                        f"you have {settings.max_scheduled_per_user} scheduled messages"
                        " already; cancel one or wait until one is sent",
                    )
                await conn.execute(insert(_scheduled), row)
        except IntegrityError:
            # The same client_msg_id scheduled at the same moment: answer the first one.
            assert client_msg_id is not None
            existing = await self._by_client_id(sender_id, conversation_id, client_msg_id)
            if existing is None:
                raise
            return JSONResponse(_view(existing._mapping), 202)
        log.info(
            "message scheduled id=%s conversation=%s sender=%d send_at=%s",
            row["id"],
            conversation_id,
            sender_id,
            send_at.isoformat(),
        )
        return JSONResponse(_view(row), 202)

    async def _by_client_id(
        self, sender_id: int, conversation_id: str, client_msg_id: str
    ) -> Row[Any] | None:
        async with self._engine.connect() as conn:
            return (
                await conn.execute(
                    select(_scheduled).where(
                        _scheduled.c.conversation_id == conversation_id,
                        _scheduled.c.sender_id == sender_id,
                        _scheduled.c.client_msg_id == client_msg_id,
                    )
                )
            ).first()

    # -- REST ---------------------------------------------------------------------

    def routes(self, reader: RequestReader) -> list[Route]:
        @documented(
            "The caller's pending scheduled messages",
            responses={200: schemas.ScheduledList},
            tags=["scheduled"],
        )
        async def list_scheduled(request: Request) -> Response:
            user_id = await reader.user_id(request)
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(_scheduled)
                        # Failed ones stay listed (with their error) until dismissed.
                        .where(
                            _scheduled.c.sender_id == user_id,
                            _scheduled.c.status.in_(("pending", "failed")),
                        )
                        .order_by(_scheduled.c.send_at, _scheduled.c.id)
                        .limit(max(1, 2 * self._settings.max_scheduled_per_user))
                    )
                ).all()
            return JSONResponse({"scheduled": [_view(row._mapping) for row in rows]})

        @documented(
            "Cancel a scheduled message",
            responses={
                200: schemas.StatusChange,
                404: "no such scheduled message",
                409: "the scheduled message is being sent, or was sent, already",
            },
            tags=["scheduled"],
        )
        async def cancel(request: Request) -> Response:
            user_id = await reader.user_id(request)
            scheduled_id = request.path_params["scheduled_id"]
            async with self._engine.begin() as conn:
                row = (
                    await conn.execute(
                        select(_scheduled).where(
                            _scheduled.c.id == scheduled_id, _scheduled.c.sender_id == user_id
                        )
                    )
                ).first()
                if row is None:  # unknown, or someone else's: the same answer
                    raise ApiError(404, "scheduled_not_found", "no such scheduled message")
                if row.status == "failed":  # seen: dismissed
                    await conn.execute(
                        delete(_scheduled).where(
                            _scheduled.c.id == scheduled_id, _scheduled.c.status == "failed"
                        )
                    )
                    log.info("failed scheduled message dismissed id=%s sender=%d", row.id, user_id)
                    return JSONResponse({"id": scheduled_id, "status": "dismissed"})
                # Claimed by a node that is sending it now: too late.
                cancelled = await cancel_unclaimed(conn, _scheduled, scheduled_id)
            if not cancelled:
                status = "sending" if row.status == "pending" else row.status
                raise ApiError(
                    409, "scheduled_not_pending", f"the scheduled message is {status} already"
                )
            log.info("scheduled message cancelled id=%s sender=%d", scheduled_id, user_id)
            return JSONResponse({"id": scheduled_id, "status": "cancelled"})

        base = "/api/v1/messenger/scheduled"
        return [
            Route(base, list_scheduled, methods=["GET"]),
            Route(base + "/{scheduled_id}", cancel, methods=["DELETE"]),
        ]

    # -- at the time --------------------------------------------------------------

    async def fire(self, rows: Sequence[Row[Any]]) -> None:
        """Send claimed rows through the writer together; mark each sent or failed, and
        let go of those the database could not take now (they are tried again)."""
        submitted: list[tuple[Row[Any], frozenset[int], asyncio.Future[Written]]] = []
        failed: list[dict[str, Any]] = []
        retry: list[str] = []
        checked = await self._check_senders(rows)
        # Still ours? A claim whose lease ran out meanwhile may have been cancelled or taken
        # over; those that are, are renewed here, so a cancel is refused until they are done.
        rows = await self._reassert(rows)
        for row in rows:
            try:
                participants, future = await self._submit(row, checked)
            except ApiError as exc:
                if exc.status == 503:
                    retry.append(row.id)
                else:
                    failed.append({"b_id": row.id, "b_error": exc.code})
                continue
            submitted.append((row, participants, future))
        results = await asyncio.gather(*(f for _, _, f in submitted), return_exceptions=True)
        sent: list[str] = []
        for (row, participants, _), result in zip(submitted, results, strict=True):
            if isinstance(result, ApiError) and result.status == 503:
                retry.append(row.id)
            elif isinstance(result, BaseException):
                code = result.code if isinstance(result, ApiError) else "internal"
                if not isinstance(result, ApiError):
                    log.error("scheduled message not sent id=%s error=%r", row.id, result)
                failed.append({"b_id": row.id, "b_error": code})
            else:
                message, created = result
                if created:
                    metrics.messages_sent.inc()
                    frame = dumps({"type": "message.new", "message": message})
                    await self._fanout.publish(participants, frame)
                sent.append(row.id)
        await self._mark(sent, failed, retry)
        senders = {row.id: row.sender_id for row in rows}
        for item in failed:
            log.info("scheduled message failed id=%s reason=%s", item["b_id"], item["b_error"])
            # The sender hears of it at once (and sees it listed as failed until dismissed).
            failure = {"type": "scheduled.failed", "id": item["b_id"], "error": item["b_error"]}
            await self._fanout.publish([senders[item["b_id"]]], dumps(failure))
        log.info(
            "scheduled messages fired node=%s sent=%d failed=%d retry=%d",
            self._node,
            len(sent),
            len(failed),
            len(retry),
        )

    async def _reassert(self, rows: Sequence[Row[Any]]) -> list[Row[Any]]:
        """The rows still pending and claimed by this node, their lease renewed."""
        ids = [row.id for row in rows]
        async with self._engine.begin() as conn:
            kept = await renew_lease(conn, _scheduled, ids, self._node, "pending", self._lease)
        if len(kept) < len(ids):
            log.warning(
                "scheduled messages no longer ours node=%s dropped=%d",
                self._node,
                len(ids) - len(kept),
            )
        return [row for row in rows if row.id in kept]

    async def _check_senders(
        self, rows: Sequence[Row[Any]]
    ) -> dict[tuple[int, str], frozenset[int] | ApiError]:
        """Whether each (sender, conversation) of the batch may send now: its participants,
        or the error. Once per pair, a few at a time (each may cost a query or two)."""
        pairs = list({(row.sender_id, row.conversation_id) for row in rows})
        limit = asyncio.Semaphore(CHECKS_AT_ONCE)

        async def check(sender_id: int, conversation_id: str) -> frozenset[int] | ApiError:
            async with limit:
                try:
                    participants = await self._participants.of_sender(sender_id, conversation_id)
                    await self._blocks.check_send(sender_id, conversation_id, participants)
                except ApiError as exc:
                    return exc
                return participants

        results = await asyncio.gather(*(check(*pair) for pair in pairs))
        return dict(zip(pairs, results, strict=True))

    async def _submit(
        self, row: Row[Any], checked: Mapping[tuple[int, str], frozenset[int] | ApiError]
    ) -> tuple[frozenset[int], asyncio.Future[Written]]:
        """Queue a checked send for the writer (no flood check: it was taken when
        scheduled)."""
        participants = checked[(row.sender_id, row.conversation_id)]
        if isinstance(participants, ApiError):
            raise participants
        if row.reply_to is not None and not await self._reply_exists(
            row.conversation_id, row.reply_to, row.sender_id
        ):
            raise ApiError(404, "reply_to_not_found", "the quoted message is gone")
        mentions = None
        if "@" in row.content:
            mentions = await self._mentions.resolve(
                row.sender_id, row.conversation_id, row.content, participants
            )
        future = self._writer.submit(
            row.conversation_id,
            row.sender_id,
            row.content,
            PREFIX + row.id,
            participants,
            mentions=mentions,
            reply_to=row.reply_to,
        )
        return participants, future

    async def _mark(self, sent: list[str], failed: list[dict[str, Any]], retry: list[str]) -> None:
        mine = and_(_scheduled.c.id == bindparam("b_id"), _scheduled.c.claimed_by == self._node)
        # The message each became: the one written with its client_msg_id (one statement
        # for the batch, through the messages' unique key).
        message_id = (
            select(_messages.c.id)
            .where(
                _messages.c.conversation_id == _scheduled.c.conversation_id,
                _messages.c.sender_id == _scheduled.c.sender_id,
                _messages.c.client_msg_id == literal(PREFIX) + _scheduled.c.id,
            )
            .scalar_subquery()
        )
        async with self._engine.begin() as conn:
            if sent:
                await conn.execute(
                    update(_scheduled)
                    .where(_scheduled.c.id.in_(sent), _scheduled.c.claimed_by == self._node)
                    # Its text lives on in the message: only the ids are kept.
                    .values(status="sent", content="", message_id=message_id, lease_until=None)
                )
            if failed:
                await conn.execute(
                    update(_scheduled)
                    .where(mine)
                    .values(status="failed", error=bindparam("b_error"), lease_until=None),
                    failed,
                )
            if retry:
                await conn.execute(
                    update(_scheduled)
                    .where(_scheduled.c.id.in_(retry), _scheduled.c.claimed_by == self._node)
                    .values(claimed_by=None, lease_until=None)
                )
