"""Who gets a push for a message, and why not. No provider is spoken to here.

For each message and each participant but the sender, the first of these that holds
is the decision, recorded with its reason (push.decision_log):

1. `online`: they are looking (an active socket on any node). Asked of presence by the
   push service before anything here; the re-check remembers them (push.recheck).
2. `muted`: the conversation is muted, snoozed (`mute_until` ahead) or push-disabled.
3. `notify_level`: the conversation's notify level is `none`, or `mentions` and the
   message does not name them.
4. `quiet_hours`: now is inside their quiet hours, in their time zone (unless the
   message names them and they let mentions through).
5. `read_before_delay`: they have read it already (on a socket gone since, or while
   the push waited out their delay).
6. a push delay not over yet: no decision; a delayed job is written (push.jobs), and
   when it comes due all of this is decided again, without the delay.
7. `no_device`: no active device whose provider is on.
8. `sent`: every such device gets it (their outcomes go to push_attempts), except one
   that already has an outcome for the message (a job taken up again after a crash).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import and_, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import one_of, utcnow
from app.messenger.models import Conversation, DeviceToken, Participant, PushAttempt
from app.messenger.presence import Presence
from app.messenger.push import decision_log as reasons
from app.messenger.push.base import Device, Notification
from app.messenger.push.notification import Recipient, message_notification
from app.messenger.push.quiet_hours import is_quiet
from app.models import User
from app.notification_settings import load_settings

_participants = Participant.__table__
_devices = DeviceToken.__table__
_attempts = PushAttempt.__table__
_users = User.__table__
_conversations = Conversation.__table__

CHUNK = 500  # values per IN list
ALL_PROVIDERS = ("fcm", "apns", "web_push")


@dataclass(frozen=True, slots=True)
class PlannedPush:
    message_id: str
    device: Device
    notification: Notification
    # The message's conversation and seq: a read up to a seq finds what to clear by them.
    conversation_id: str | None = None
    seq: int | None = None


class Candidate(NamedTuple):
    """A message and one recipient of it who is not looking."""

    message: Mapping[str, Any]
    user_id: int
    # Taken up again (recovered, re-checked, delayed): devices with an outcome are skipped.
    skip_done: bool = False
    # A delayed push come due: the recipient's delay is not applied again.
    delay_over: bool = False


class Decision(NamedTuple):
    user_id: int
    conversation_id: str
    seq: int
    message_id: str
    reason: str


@dataclass(slots=True)
class Decided:
    """What planning a batch of candidates came to."""

    # (candidate index, the push for one device)
    pushes: list[tuple[int, PlannedPush]] = field(default_factory=list)
    # Final decisions, one per candidate decided (a delayed one has none yet).
    decisions: list[Decision] = field(default_factory=list)
    # (candidate index, when the push is due): to be written as delayed jobs.
    delayed: list[tuple[int, datetime]] = field(default_factory=list)


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
    """Those of the (conversation, user) pairs whose user is not looking (no active
    socket on any node): one presence round trip for all of them."""
    if not wanted:
        return set()
    online = await presence.online({user_id for _, user_id in wanted})
    return {(c, u) for c, u in wanted if u not in online}


def mentioned(message: Mapping[str, Any], user_id: int) -> bool:
    return user_id in (message.get("mentions") or ())


async def decide(
    conn: AsyncConnection,
    candidates: list[Candidate],
    base_url: str,
    providers: Collection[str] = ALL_PROVIDERS,
    now: datetime | None = None,
) -> Decided:
    """Decide for every candidate (see the module's docstring): a fixed number of
    queries for the whole batch, whatever its size."""
    decided = Decided()
    if not candidates:
        return decided
    now = now or utcnow()

    def final(i: int, reason: str) -> None:
        m = candidates[i].message
        decided.decisions.append(
            Decision(candidates[i].user_id, m["conversation_id"], m["seq"], m["id"], reason)
        )

    states = await _participant_states(
        conn, {(c.message["conversation_id"], c.user_id) for c in candidates}
    )
    left: list[int] = []
    for i, c in enumerate(candidates):
        state = states.get((c.message["conversation_id"], c.user_id))
        if state is None:
            continue  # no longer a participant: nothing to decide
        if (
            not state.push_enabled
            or state.muted
            or (state.mute_until is not None and state.mute_until > now)
        ):
            final(i, reasons.MUTED)
        elif state.notify == "none" or (
            state.notify == "mentions" and not mentioned(c.message, c.user_id)
        ):
            final(i, reasons.NOTIFY_LEVEL)
        else:
            left.append(i)
    if not left:
        return decided

    settings = await load_settings(conn, {candidates[i].user_id for i in left})
    due: list[int] = []
    for i in left:
        c = candidates[i]
        s = settings[c.user_id]
        m = c.message
        if is_quiet(s.quiet_start, s.quiet_end, s.time_zone, now) and not (
            s.quiet_allow_mentions and mentioned(m, c.user_id)
        ):
            final(i, reasons.QUIET_HOURS)
        elif m["seq"] <= states[(m["conversation_id"], c.user_id)].last_read_seq:
            final(i, reasons.READ_BEFORE_DELAY)
        elif (
            s.push_delay_seconds > 0
            and not c.delay_over
            and (at := m["created_at"] + timedelta(seconds=s.push_delay_seconds)) > now
        ):
            decided.delayed.append((i, at))
        else:
            due.append(i)
    if not due:
        return decided

    devices = await _devices_of(conn, {candidates[i].user_id for i in due}, providers)
    done = await _done(conn, {candidates[i].message["id"] for i in due if candidates[i].skip_done})
    to_push: list[tuple[int, list[Device]]] = []
    for i in due:
        c = candidates[i]
        mine = devices.get(c.user_id)
        if not mine:
            final(i, reasons.NO_DEVICE)
            continue
        if c.skip_done:
            mine = [d for d in mine if (c.message["id"], d.id) not in done]
            if not mine:
                continue  # every device has its outcome already (decided before)
        final(i, reasons.SENT)
        to_push.append((i, mine))
    if not to_push:
        return decided

    messages = [candidates[i].message for i, _ in to_push]
    names = await _display_names(conn, {m["sender_id"] for m in messages})
    titles = await _titles(conn, {m["conversation_id"] for m in messages})
    badges = await unread_totals(conn, {candidates[i].user_id for i, _ in to_push})
    for i, mine in to_push:
        c = candidates[i]
        m = c.message
        s = settings[c.user_id]
        read_up_to = states[(m["conversation_id"], c.user_id)].last_read_seq
        recipient = Recipient(
            c.user_id,
            badge=badges.get(c.user_id, 0),
            # Own messages move the sender's read mark: what lies beyond it is others'.
            unread_here=max(1, m["seq"] - read_up_to),
            preview=s.preview,
            locale=s.locale,
        )
        sender_name = names.get(m["sender_id"], "Someone")
        title = titles.get(m["conversation_id"])
        for device in mine:
            notification = message_notification(m, sender_name, title, base_url, recipient, device)
            decided.pushes.append(
                (i, PlannedPush(m["id"], device, notification, m["conversation_id"], m["seq"]))
            )
    return decided


async def plan_for_offline(
    conn: AsyncConnection,
    messages: Collection[Mapping[str, Any]],
    participants: Mapping[str, Collection[int]],
    wanted: set[tuple[str, int]],
    base_url: str,
    skip_done: bool = False,
) -> list[PlannedPush]:
    """The pushes `decide` plans for the recipients `wanted` (not looking) of these
    messages; a delayed push is left out."""
    candidates = [
        Candidate(m, user_id, skip_done)
        for m in messages
        for user_id in participants[m["conversation_id"]]
        if (m["conversation_id"], user_id) in wanted and user_id != m["sender_id"]
    ]
    decided = await decide(conn, candidates, base_url)
    return [plan for _, plan in decided.pushes]


class _State(NamedTuple):
    last_read_seq: int
    muted: bool
    mute_until: datetime | None
    push_enabled: bool
    notify: str


async def _participant_states(
    conn: AsyncConnection, pairs: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], _State]:
    pairs = list(pairs)
    found: dict[tuple[str, int], _State] = {}
    p = _participants.c
    for i in range(0, len(pairs), CHUNK):
        rows = await conn.execute(
            select(
                p.conversation_id,
                p.user_id,
                p.last_read_seq,
                p.muted,
                p.mute_until,
                p.push_enabled,
                p.notify,
            ).where(tuple_(p.conversation_id, p.user_id).in_(pairs[i : i + CHUNK]))
        )
        for r in rows:
            found[(r.conversation_id, r.user_id)] = _State(
                r.last_read_seq, r.muted, r.mute_until, r.push_enabled, r.notify
            )
    return found


async def _devices_of(
    conn: AsyncConnection, user_ids: Collection[int], providers: Collection[str]
) -> dict[int, list[Device]]:
    """Each user's active devices whose provider is on."""
    found: dict[int, list[Device]] = {}
    ids = list(user_ids)
    dialect = conn.dialect.name
    for i in range(0, len(ids), CHUNK):
        rows = await conn.execute(
            select(_devices).where(
                one_of(_devices.c.user_id, ids[i : i + CHUNK], dialect),
                _devices.c.is_active.is_(True),
            )
        )
        for r in rows:
            # A device whose provider is off is left alone (that was said once, at start).
            if r.provider in providers:
                found.setdefault(r.user_id, []).append(
                    Device(r.id, r.user_id, r.token, r.platform, r.provider)
                )
    return found


async def _done(conn: AsyncConnection, message_ids: Collection[str]) -> set[tuple[str, str]]:
    """(message, device) of every outcome recorded for these messages."""
    ids = list(message_ids)
    done: set[tuple[str, str]] = set()
    for i in range(0, len(ids), CHUNK):
        rows = await conn.execute(
            select(_attempts.c.message_id, _attempts.c.device_id).where(
                _attempts.c.message_id.in_(ids[i : i + CHUNK])
            )
        )
        done.update((r.message_id, r.device_id) for r in rows)
    return done


async def _display_names(conn: AsyncConnection, user_ids: Collection[int]) -> dict[int, str]:
    rows = await conn.execute(
        select(_users.c.id, _users.c.display_name).where(_users.c.id.in_(list(user_ids)))
    )
    return {r.id: r.display_name for r in rows}


async def _titles(
    conn: AsyncConnection, conversation_ids: Collection[str]
) -> dict[str, str | None]:
    rows = await conn.execute(
        select(_conversations.c.id, _conversations.c.title).where(
            _conversations.c.id.in_(list(conversation_ids))
        )
    )
    return {r.id: r.title for r in rows}


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


async def unread_totals(conn: AsyncConnection, user_ids: Collection[int]) -> dict[int, int]:
    """Each user's unread messages over all conversations (the app icon's badge)."""
    if not user_ids:
        return {}
    ids = list(user_ids)
    totals: dict[int, int] = {}
    for i in range(0, len(ids), CHUNK):
        rows = await conn.execute(
            select(
                _participants.c.user_id,
                func.sum(_conversations.c.last_seq - _participants.c.last_read_seq),
            )
            .join(_conversations, and_(_conversations.c.id == _participants.c.conversation_id))
            .where(_participants.c.user_id.in_(ids[i : i + CHUNK]))
            .group_by(_participants.c.user_id)
        )
        totals.update({user_id: int(total or 0) for user_id, total in rows})
    return totals
