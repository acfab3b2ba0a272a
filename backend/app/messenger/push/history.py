"""The notification history as the push service writes it: one `notifications` row per
(user, message) pushed, however many devices, and the reasons `failed` and
`dead_token` once every delivery of a notification is known to have gone nowhere.

A message notification's id is derived from (user, message), not drawn at random: it
is known while planning, before any send, so every provider's payload carries it
(`data.notification_id`), and a job taken up again after a crash pushes under the
same id. The row itself is written by the record loop in the transaction that writes
the deliveries (push_attempts), so the send path gains no round trip: an insert that
finds the row already there (a later device's outcome, a job taken up again) does
nothing.

The history keeps the text the user was shown: an edit of the message leaves it. A
deletion does not: the deleting transaction blanks title and body of the message's
notifications (blank_notifications_of), and a flush that writes one for a message
deleted meanwhile blanks it in its own transaction (blank_deleted).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.messenger.models import Message, Notification
from app.messenger.push.base import Device, Outcome
from app.messenger.push.decision_log import DEAD_TOKEN, FAILED
from app.messenger.push.delivery import Delivery

_notifications = Notification.__table__
_messages = Message.__table__
# Any fixed UUID: the namespace of message notification ids.
_NAMESPACE = uuid.UUID("6d3f0a52-2b0e-4c55-9a0b-6e6f74696679")

KINDS = ("message", "test", "announcement", "reminder")
OPENED_HOW = ("click", "foreground", "background")


def message_notification_id(user_id: int, message_id: str) -> str:
    """The id of `user_id`'s notification of `message_id`: the same on every node."""
    return str(uuid.uuid5(_NAMESPACE, f"{user_id}:{message_id}"))


def insert_ignoring_duplicates(conn: AsyncConnection) -> Insert:
    """INSERT into notifications that skips rows already there (by id or by
    (user, message)), in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(_notifications).on_conflict_do_nothing()
    return sqlite.insert(_notifications).on_conflict_do_nothing()


async def write_notifications(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert these notifications unless already there: one statement for all, its rows
    in id order, so two nodes writing overlapping rows lock them in the same order and
    never deadlock."""
    if rows:
        await conn.execute(insert_ignoring_duplicates(conn), sorted(rows, key=lambda r: r["id"]))


async def blank_deleted(conn: AsyncConnection, rows: list[dict[str, Any]]) -> int:
    """Blank the text of these just-written notifications whose message is deleted: a
    push in flight while its message was deleted must not leave the text in the history.

    Run after the insert, in its transaction. On PostgreSQL the messages are read FOR
    SHARE: a deletion under way (it holds its message FOR UPDATE, then blanks the
    notifications there are) is waited for and then seen; one that comes later waits for
    this transaction and blanks these rows itself. SQLite runs one writer at a time."""
    message_ids = sorted({r["message_id"] for r in rows if r["message_id"] is not None})
    if not message_ids:
        return 0
    m = _messages.c
    # Every one of them is read (and locked), not only those deleted as of this
    # transaction's snapshot: a lock waited for gives the row as its deletion left it.
    query = select(m.id, m.deleted_at).where(m.id.in_(message_ids)).order_by(m.id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    deleted = [row.id for row in await conn.execute(query) if row.deleted_at is not None]
    if not deleted:
        return 0
    n = _notifications.c
    result = await conn.execute(
        update(_notifications)
        .where(n.message_id.in_(deleted), n.id.in_([r["id"] for r in rows]))
        .values(title="", body="")
    )
    return int(result.rowcount or 0)


async def blank_notifications_of(conn: AsyncConnection, message_id: str) -> int:
    """A message is deleted: its notifications keep no text (in the deleting transaction,
    with the message's row locked first; see blank_deleted)."""
    n = _notifications.c
    result = await conn.execute(
        update(_notifications)
        .where(n.message_id == message_id, or_(n.title != "", n.body != ""))
        .values(title="", body="")
    )
    return int(result.rowcount or 0)


def accepted_time(delivery: Delivery) -> datetime | None:
    """When the provider accepted the delivery (push_attempts.accepted_at): the end of
    commit-to-accepted, not the flush that writes the row up to RECORD_DELAY later."""
    if delivery.accepted_at is None:
        return None
    return datetime.fromtimestamp(delivery.accepted_at, UTC)


def attempt_row(
    message_id: str, device: Device, delivery: Delivery, created_at: datetime
) -> dict[str, Any]:
    """The push_attempts row of one delivery to one device; callers add the columns of
    their kind (conversation, seq, notification, accepted_at)."""
    return {
        "message_id": message_id,
        "device_id": device.id,
        "user_id": device.user_id,
        "provider": device.provider,
        "outcome": delivery.outcome.value,
        "attempts": delivery.attempts,
        "latency_ms": delivery.latency_ms,
        "error": delivery.error[:500] if delivery.error else None,
        "created_at": created_at,
    }


def notification_row(
    notification_id: str,
    user_id: int,
    kind: str,
    title: str,
    body: str,
    created_at: datetime,
    conversation_id: str | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": notification_id,
        "user_id": user_id,
        "kind": kind,
        "conversation_id": conversation_id,
        "message_id": message_id,
        "title": title[:255],
        "body": body,
        "created_at": created_at,
        "opened_at": None,
        "opened_how": None,
        "dismissed_at": None,
    }


@dataclass(slots=True)
class _Pending:
    user_id: int
    conversation_id: str
    seq: int
    message_id: str
    left: int  # deliveries without an outcome yet
    delivered: bool = False
    dead: bool = False


class Unreached:
    """Which notifications reached none of their devices, told once all their deliveries
    have an outcome. In memory, for the deliveries under way only."""

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def planned(
        self,
        notification_id: str,
        user_id: int,
        conversation_id: str,
        seq: int,
        message_id: str,
        deliveries: int = 1,
    ) -> None:
        """`deliveries` more deliveries of this notification are under way."""
        pending = self._pending.get(notification_id)
        if pending is None:
            self._pending[notification_id] = _Pending(
                user_id, conversation_id, seq, message_id, deliveries
            )
        else:
            pending.left += deliveries

    def outcome(self, notification_id: str, outcome: Outcome) -> _Pending | None:
        """One delivery's outcome; the notification when it was its last and none of its
        deliveries went through (see `reason`), else None."""
        pending = self._pending.get(notification_id)
        if pending is None:
            return None
        pending.left -= 1
        pending.delivered |= outcome == Outcome.DELIVERED
        pending.dead |= outcome == Outcome.DEAD_TOKEN
        if pending.left > 0:
            return None
        del self._pending[notification_id]
        return None if pending.delivered else pending

    def cancel(self, notification_id: str) -> None:
        """A delivery planned and not started (its job let go): no outcome will come."""
        pending = self._pending.get(notification_id)
        if pending is not None:
            pending.left -= 1
            if pending.left <= 0:
                del self._pending[notification_id]

    @staticmethod
    def reason(pending: _Pending) -> str:
        return DEAD_TOKEN if pending.dead else FAILED


def unique_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per notification id (a flush may hold several devices' outcomes)."""
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        seen.setdefault(row["id"], row)
    return list(seen.values())
