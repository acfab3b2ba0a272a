"""Who gets a push for a message, and what it says. No provider is spoken to here.

A participant gets one when they are not the sender, have no socket on any node,
have not muted the conversation (now), have push enabled, and have not read it (on
a socket that has gone since). Then every active device of theirs gets one, unless
a device already has an outcome for the message (a job taken up again after a
crash). A recipient skipped because they looked online may get it later, once they
are gone with the message still unread (push.recheck).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import utcnow
from app.messenger.models import Conversation, DeviceToken, Participant, PushAttempt
from app.messenger.presence import Presence
from app.messenger.push.base import Device, Notification
from app.messenger.push.notification import Recipient, message_notification
from app.models import User

_participants = Participant.__table__
_devices = DeviceToken.__table__
_attempts = PushAttempt.__table__
_users = User.__table__
_conversations = Conversation.__table__

CHUNK = 500  # values per IN list


@dataclass(frozen=True, slots=True)
class PlannedPush:
    message_id: str
    device: Device
    notification: Notification


def recipients(
    messages: Collection[Mapping[str, Any]], participants: Mapping[str, Collection[int]]
) -> set[tuple[str, int]]:
    """(conversation, user) of each participant of these messages who is not the sender."""
    return {
        (m["conversation_id"], user_id)
        for m in messages
        for user_id in participants[m["conversation_id"]]
        if user_id != m["sender_id"]
    }


async def offline_recipients(
    presence: Presence, wanted: Collection[tuple[str, int]]
) -> set[tuple[str, int]]:
    """Those of the (conversation, user) pairs whose user has no socket on any node: one
    presence round trip for all of them."""
    if not wanted:
        return set()
    online = await presence.online({user_id for _, user_id in wanted})
    return {(c, u) for c, u in wanted if u not in online}


async def unread(
    conn: AsyncConnection, wanted: Collection[tuple[str, int, int]]
) -> set[tuple[str, int, int]]:
    """Those of the (conversation, user, seq) whose user is still a participant and has not
    read that far."""
    marks: dict[tuple[str, int], int] = {}
    pairs = list({(c, u) for c, u, _ in wanted})
    for i in range(0, len(pairs), CHUNK):
        rows = await conn.execute(
            select(
                _participants.c.conversation_id,
                _participants.c.user_id,
                _participants.c.last_read_seq,
            ).where(
                tuple_(_participants.c.conversation_id, _participants.c.user_id).in_(
                    pairs[i : i + CHUNK]
                )
            )
        )
        marks.update({(r.conversation_id, r.user_id): r.last_read_seq for r in rows})
    return {(c, u, seq) for c, u, seq in wanted if (c, u) in marks and marks[(c, u)] < seq}


async def pushed(
    conn: AsyncConnection, wanted: Collection[tuple[str, int]]
) -> set[tuple[str, int]]:
    """Those of the (message, user) pairs with a push outcome on any device of the user."""
    message_ids = list({m for m, _ in wanted})
    done: set[tuple[str, int]] = set()
    for i in range(0, len(message_ids), CHUNK):
        rows = await conn.execute(
            select(_attempts.c.message_id, _attempts.c.user_id).where(
                _attempts.c.message_id.in_(message_ids[i : i + CHUNK])
            )
        )
        done.update((r.message_id, r.user_id) for r in rows)
    return done & set(wanted)


async def plan_for_offline(
    conn: AsyncConnection,
    messages: Collection[Mapping[str, Any]],
    participants: Mapping[str, Collection[int]],
    wanted: set[tuple[str, int]],
    base_url: str,
    skip_done: bool = False,
) -> list[PlannedPush]:
    """The rest of the decision for the offline recipients `wanted`: settings, what they
    have read already (on a socket that has gone since), devices."""
    if not wanted:
        return []
    now = utcnow()
    rows = await conn.execute(
        select(
            _participants.c.conversation_id,
            _participants.c.user_id,
            _participants.c.last_read_seq,
        ).where(
            tuple_(_participants.c.conversation_id, _participants.c.user_id).in_(wanted),
            _participants.c.push_enabled.is_(True),
            _participants.c.muted.is_(False),
            or_(_participants.c.mute_until.is_(None), _participants.c.mute_until <= now),
        )
    )
    read_up_to = {(r.conversation_id, r.user_id): r.last_read_seq for r in rows}
    pushable = set(read_up_to)
    if not pushable:
        return []
    users = {u for _, u in pushable}

    devices_by_user: dict[int, list[Device]] = {}
    for r in await conn.execute(
        select(_devices).where(_devices.c.user_id.in_(users), _devices.c.is_active.is_(True))
    ):
        devices_by_user.setdefault(r.user_id, []).append(
            Device(r.id, r.user_id, r.token, r.platform, r.provider)
        )
    if not devices_by_user:
        return []

    done: set[tuple[str, str]] = set()
    if skip_done:
        done = {
            (r.message_id, r.device_id)
            for r in await conn.execute(
                select(_attempts.c.message_id, _attempts.c.device_id).where(
                    _attempts.c.message_id.in_([m["id"] for m in messages])
                )
            )
        }

    senders = {m["sender_id"] for m in messages}
    names = dict(
        (
            await conn.execute(
                select(_users.c.id, _users.c.display_name).where(_users.c.id.in_(senders))
            )
        ).all()
    )
    conversation_ids = {m["conversation_id"] for m in messages}
    titles = dict(
        (
            await conn.execute(
                select(_conversations.c.id, _conversations.c.title).where(
                    _conversations.c.id.in_(conversation_ids)
                )
            )
        ).all()
    )
    badges = await unread_totals(
        conn, {d.user_id for ds in devices_by_user.values() for d in ds if d.provider == "apns"}
    )

    planned: list[PlannedPush] = []
    for m in messages:
        sender_name = names.get(m["sender_id"], "Someone")
        for user_id in participants[m["conversation_id"]]:
            key = (m["conversation_id"], user_id)
            if key not in pushable or m["seq"] <= read_up_to[key]:
                continue
            for device in devices_by_user.get(user_id, ()):
                if (m["id"], device.id) in done:
                    continue
                notification = message_notification(
                    m,
                    sender_name,
                    titles.get(m["conversation_id"]),
                    base_url,
                    Recipient(user_id, badge=badges.get(user_id)),
                    device,
                )
                planned.append(PlannedPush(m["id"], device, notification))
    return planned


async def unread_totals(conn: AsyncConnection, user_ids: Collection[int]) -> dict[int, int]:
    """Each user's unread messages over all conversations (the app icon's badge)."""
    if not user_ids:
        return {}
    rows = await conn.execute(
        select(
            _participants.c.user_id,
            func.sum(_conversations.c.last_seq - _participants.c.last_read_seq),
        )
        .join(_conversations, and_(_conversations.c.id == _participants.c.conversation_id))
        .where(_participants.c.user_id.in_(user_ids))
        .group_by(_participants.c.user_id)
    )
    return {user_id: int(total or 0) for user_id, total in rows}
