"""Who gets a push for a message, and why not. No provider is spoken to here.

For each message and each participant but the sender, the first of these that holds
is the decision, recorded with its reason (push.decision_log):

1. `online`: they are looking (an active socket on any node). Asked of attention by
   the push service before anything here; the re-check remembers them (push.recheck).
2. `blocked`: they blocked the sender (a group both are in). Before the rest, so a
   mention from someone blocked gets past neither a notify level nor quiet hours.
3. `muted`: the conversation is muted, snoozed (`mute_until` ahead) or push-disabled.
4. `notify_level`: the conversation's notify level is `none`, or `mentions` and the
   message does not name them.
5. `quiet_hours`: now is inside their quiet hours, in their time zone (unless the
   message names them and they let mentions through).
6. `read_before_delay`: they have read it already (on a socket gone since, or while
   the push waited out their delay).
7. a push delay not over yet: no decision; a delayed job is written (push.jobs), and
   when it comes due all of this is decided again, without the delay.
8. `no_device`: no active device whose provider is on.
9. `sent`: every such device gets it (their outcomes go to push_attempts). One
   notification stands for all of a conversation's unread messages, so of the
   messages of a batch for one recipient's conversation only the newest is pushed to
   a device (saying how many are unread): the older ones are `sent` too, covered by
   it, with no push of their own that could race it and land last. A device that
   already has an outcome for the message or a newer one of the conversation (a job
   taken up again after a crash, a re-check, a delayed job) is not pushed again.

An announcement's push (its job marks it) skips 2, 4, 5 and 7: muting the Announcements
conversation is the one way to silence it; those looking still get no push.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import one_of, utcnow
from app.messenger.models import Conversation, DeviceToken, Participant, PushAttempt
from app.messenger.presence import Presence
from app.messenger.push import decision_log as reasons
from app.messenger.push.base import Device, Notification
from app.messenger.push.history import message_notification_id
from app.messenger.push.image_links import ImageLinks, push_images
from app.messenger.push.notification import Recipient, message_notification
from app.messenger.push.quiet_hours import is_quiet
from app.messenger.push.recipient_facts import ParticipantState, RecipientFacts, recipient_facts
from app.models import Block, User
from app.notification_settings import load_settings

_participants = Participant.__table__
_devices = DeviceToken.__table__
_attempts = PushAttempt.__table__
_users = User.__table__
_conversations = Conversation.__table__
_blocks = Block.__table__

CHUNK = 500  # values per IN list
ARRAY_CHUNK = 10_000  # values per array parameter (PostgreSQL)
ALL_PROVIDERS = ("fcm", "apns", "web_push")


@dataclass(frozen=True, slots=True)
class PlannedPush:
    message_id: str
    device: Device
    notification: Notification
    # The message's conversation and seq: a read up to a seq finds what to clear by them.
    conversation_id: str | None = None
    seq: int | None = None
    # The recipient's notification of the message (push.history), the same on every device.
    notification_id: str | None = None


class Candidate(NamedTuple):
    """A message and one recipient of it who is not looking."""

    message: Mapping[str, Any]
    user_id: int
    # Taken up again (recovered, re-checked, delayed): devices with an outcome for it
    # (or a newer message of the conversation) are skipped.
    skip_done: bool = False
    # A delayed push come due: the recipient's delay is not applied again.
    delay_over: bool = False
    # An announcement's (its job says so): muting its conversation is the one way to
    # silence it, so blocks, the notify level, quiet hours and the delay do not hold it.
    announcement: bool = False


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


async def inattentive_recipients(
    attention: Presence, wanted: Collection[tuple[str, int]]
) -> set[tuple[str, int]]:
    """Those of the (conversation, user) pairs whose user is not looking (no active
    socket on any node): one round trip to attention for all of them."""
    if not wanted:
        return set()
    looking = await attention.online({user_id for _, user_id in wanted})
    return {(c, u) for c, u in wanted if u not in looking}


def mentioned(message: Mapping[str, Any], user_id: int) -> bool:
    return user_id in (message.get("mentions") or ())


async def decide(
    conn: AsyncConnection,
    candidates: list[Candidate],
    base_url: str,
    providers: Collection[str] = ALL_PROVIDERS,
    now: datetime | None = None,
    images: ImageLinks | None = None,
) -> Decided:
    """Decide for every candidate (see the module's docstring): a fixed number of
    queries for the whole batch, whatever its size. On PostgreSQL what is read of the
    recipients comes in one statement (push.recipient_facts); SQLite, where a query
    costs no round trip, asks each kind only when a candidate still needs it."""
    decided = Decided()
    if not candidates:
        return decided
    now = now or utcnow()
    facts: RecipientFacts | None = None
    if conn.dialect.name == "postgresql":
        facts = await recipient_facts(
            conn,
            [(c.message["conversation_id"], c.user_id, c.message["sender_id"]) for c in candidates],
            now,
        )

    def final(i: int, reason: str) -> None:
        m = candidates[i].message
        decided.decisions.append(
            Decision(candidates[i].user_id, m["conversation_id"], m["seq"], m["id"], reason)
        )

    if facts is not None:
        states, blocked = facts.states, facts.blocked
    else:
        states = await participant_states(
            conn, {(c.message["conversation_id"], c.user_id) for c in candidates}
        )
        blocked = await _blocked(conn, {(c.user_id, c.message["sender_id"]) for c in candidates})
    left: list[int] = []
    for i, c in enumerate(candidates):
        state = states.get((c.message["conversation_id"], c.user_id))
        if state is None:
            continue  # no longer a participant: nothing to decide
        if (c.user_id, c.message["sender_id"]) in blocked and not c.announcement:
            final(i, reasons.BLOCKED)
        elif (
            not state.push_enabled
            or state.muted
            or (state.mute_until is not None and state.mute_until > now)
        ):
            final(i, reasons.MUTED)
        elif not c.announcement and (
            state.notify == "none"
            or (state.notify == "mentions" and not mentioned(c.message, c.user_id))
        ):
            final(i, reasons.NOTIFY_LEVEL)
        else:
            left.append(i)
    if not left:
        return decided

    settings = (
        facts.settings
        if facts is not None
        else await load_settings(conn, {candidates[i].user_id for i in left})
    )
    due: list[int] = []
    for i in left:
        c = candidates[i]
        s = settings[c.user_id]
        m = c.message
        if (
            not c.announcement
            and is_quiet(s.quiet_start, s.quiet_end, s.time_zone, now)
            and not (s.quiet_allow_mentions and mentioned(m, c.user_id))
        ):
            final(i, reasons.QUIET_HOURS)
        elif m["seq"] <= states[(m["conversation_id"], c.user_id)].last_read_seq:
            final(i, reasons.READ_BEFORE_DELAY)
        elif (
            s.push_delay_seconds > 0
            and not c.delay_over
            and not c.announcement
            and (at := m["created_at"] + timedelta(seconds=s.push_delay_seconds)) > now
        ):
            decided.delayed.append((i, at))
        else:
            due.append(i)
    if not due:
        return decided

    devices = (
        _with_providers(facts.devices, providers)
        if facts is not None
        else await _devices_of(conn, {candidates[i].user_id for i in due}, providers)
    )
    shown = await _pushed_up_to(
        conn,
        {
            (candidates[i].user_id, candidates[i].message["conversation_id"])
            for i in due
            if candidates[i].skip_done
        },
    )
    to_push: list[tuple[int, list[Device]]] = []
    for i in due:
        c = candidates[i]
        mine = devices.get(c.user_id)
        if not mine:
            final(i, reasons.NO_DEVICE)
            continue
        if c.skip_done:
            # Devices with an outcome for this message or a newer one of the
            # conversation (which shows it already) are not pushed it again.
            conversation_id, seq = c.message["conversation_id"], c.message["seq"]
            up_to = [shown.get((d.id, conversation_id), 0) for d in mine]
            mine = [d for d, done in zip(mine, up_to, strict=True) if done < seq]
            if not mine and seq in up_to:
                continue  # pushed itself, so decided before (a job taken up again)
        final(i, reasons.SENT)
        if mine:
            to_push.append((i, mine))
    to_push = _newest_per_device(candidates, to_push)
    if not to_push:
        return decided

    messages = [candidates[i].message for i, _ in to_push]
    if facts is not None:
        names, titles, badges = facts.names, facts.titles, facts.badges
    else:
        names = await _display_names(conn, {m["sender_id"] for m in messages})
        titles = await _titles(conn, {m["conversation_id"] for m in messages})
        badges = await unread_totals(conn, {candidates[i].user_id for i, _ in to_push}, now)
    # Thumbnails' signed links: one query and one signature per message, not per device.
    image_urls = await push_images(conn, messages, images) if images is not None else {}
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
        notification_id = message_notification_id(c.user_id, m["id"])
        for device in mine:
            notification = message_notification(
                m,
                sender_name,
                title,
                base_url,
                recipient,
                device,
                image_urls.get(m["id"]),
                replyable=not c.announcement,
            )
            # Every provider carries it: a click or an app reports the open by it.
            notification.data["notification_id"] = notification_id
            decided.pushes.append(
                (
                    i,
                    PlannedPush(
                        m["id"],
                        device,
                        notification,
                        m["conversation_id"],
                        m["seq"],
                        notification_id,
                    ),
                )
            )
    return decided


def _newest_per_device(
    candidates: list[Candidate], to_push: list[tuple[int, list[Device]]]
) -> list[tuple[int, list[Device]]]:
    """Of these pushes (candidate, devices), each device keeps only the newest message
    of each conversation: its notification says how many are unread, and stands for
    the older ones (which are decided `sent` all the same)."""
    newest: dict[tuple[str, str], int] = {}  # (conversation, device) -> candidate
    for i, mine in to_push:
        m = candidates[i].message
        for d in mine:
            key = (m["conversation_id"], d.id)
            found = newest.get(key)
            if found is None or candidates[found].message["seq"] < m["seq"]:
                newest[key] = i
    kept: list[tuple[int, list[Device]]] = []
    for i, mine in to_push:
        conversation_id = candidates[i].message["conversation_id"]
        mine = [d for d in mine if newest[(conversation_id, d.id)] == i]
        if mine:
            kept.append((i, mine))
    return kept


async def participant_states(
    conn: AsyncConnection, pairs: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], ParticipantState]:
    """The participants among these (conversation, user) pairs: their read mark and
    push settings (a pair that is not a participant is left out)."""
    wanted = set(pairs)
    found: dict[tuple[str, int], ParticipantState] = {}
    p = _participants.c
    dialect = conn.dialect.name
    conversations = list({c for c, _ in wanted})
    users = list({u for _, u in wanted})
    # Conversations and users as two lists, not a list of pairs: on PostgreSQL two array
    # parameters, one prepared statement whatever the count. What it finds beyond the
    # pairs (a sender, say) is bounded by the participants of these conversations.
    for i in range(0, len(users), _chunk(dialect)):
        rows = await conn.execute(
            select(
                p.conversation_id,
                p.user_id,
                p.last_read_seq,
                p.muted,
                p.mute_until,
                p.push_enabled,
                p.notify,
            ).where(
                one_of(p.conversation_id, conversations, dialect),
                one_of(p.user_id, users[i : i + _chunk(dialect)], dialect),
            )
        )
        for r in rows:
            if (r.conversation_id, r.user_id) in wanted:
                found[(r.conversation_id, r.user_id)] = ParticipantState(
                    r.last_read_seq, r.muted, r.mute_until, r.push_enabled, r.notify
                )
    return found


async def read_marks(
    conn: AsyncConnection, pairs: Collection[tuple[str, int]], at_least: int
) -> dict[tuple[str, int], int]:
    """The read marks of those of these (conversation, user) pairs who have read up to
    `at_least` or further: most often none, and then nothing is built row by row."""
    wanted = set(pairs)
    found: dict[tuple[str, int], int] = {}
    p = _participants.c
    dialect = conn.dialect.name
    conversations = list({c for c, _ in wanted})
    users = list({u for _, u in wanted})
    for i in range(0, len(users), _chunk(dialect)):
        rows = await conn.execute(
            select(p.conversation_id, p.user_id, p.last_read_seq).where(
                one_of(p.conversation_id, conversations, dialect),
                one_of(p.user_id, users[i : i + _chunk(dialect)], dialect),
                p.last_read_seq >= at_least,
            )
        )
        for conversation_id, user_id, seq in rows:
            if (conversation_id, user_id) in wanted:
                found[(conversation_id, user_id)] = seq
    return found


def _chunk(dialect: str) -> int:
    """Values per query: PostgreSQL takes them as one array parameter; SQLite binds
    each one."""
    return ARRAY_CHUNK if dialect == "postgresql" else CHUNK


async def _blocked(
    conn: AsyncConnection, pairs: Collection[tuple[int, int]]
) -> set[tuple[int, int]]:
    """Those of the (recipient, sender) pairs where the recipient blocked the sender."""
    wanted = set(pairs)
    found: set[tuple[int, int]] = set()
    b = _blocks.c
    dialect = conn.dialect.name
    recipients = list({r for r, _ in wanted})
    senders = list({s for _, s in wanted})
    for i in range(0, len(recipients), _chunk(dialect)):
        rows = await conn.execute(
            select(b.blocker_id, b.blocked_id).where(
                one_of(b.blocker_id, recipients[i : i + _chunk(dialect)], dialect),
                one_of(b.blocked_id, senders, dialect),
            )
        )
        found.update((r.blocker_id, r.blocked_id) for r in rows)
    return found & wanted


async def _devices_of(
    conn: AsyncConnection, user_ids: Collection[int], providers: Collection[str]
) -> dict[int, list[Device]]:
    """Each user's active devices whose provider is on."""
    found: dict[int, list[Device]] = {}
    ids = list(user_ids)
    dialect = conn.dialect.name
    for i in range(0, len(ids), _chunk(dialect)):
        rows = await conn.execute(
            select(_devices).where(
                one_of(_devices.c.user_id, ids[i : i + _chunk(dialect)], dialect),
                _devices.c.is_active.is_(True),
            )
        )
        for r in rows:
            # A device whose provider is off is left alone (that was said once, at start).
            if r.provider in providers:
                found.setdefault(r.user_id, []).append(
                    Device(r.id, r.user_id, r.token, r.platform, r.provider, r.session_id)
                )
    return found


def _with_providers(
    devices: Mapping[int, list[Device]], providers: Collection[str]
) -> dict[int, list[Device]]:
    """Of each user's active devices, those whose provider is on (as _devices_of)."""
    found: dict[int, list[Device]] = {}
    for user_id, mine in devices.items():
        on = [d for d in mine if d.provider in providers]
        if on:
            found[user_id] = on
    return found


async def _pushed_up_to(
    conn: AsyncConnection, pairs: Collection[tuple[int, str]]
) -> dict[tuple[str, str], int]:
    """(device, conversation) -> the newest seq of the conversation with an outcome on
    that device, for these (user, conversation) pairs."""
    pairs = list(pairs)
    found: dict[tuple[str, str], int] = {}
    a = _attempts.c
    for i in range(0, len(pairs), CHUNK):
        rows = await conn.execute(
            select(a.device_id, a.conversation_id, func.max(a.seq))
            .where(tuple_(a.user_id, a.conversation_id).in_(pairs[i : i + CHUNK]))
            .group_by(a.device_id, a.conversation_id)
        )
        found.update(((device_id, c), seq) for device_id, c, seq in rows if seq is not None)
    return found


async def _display_names(conn: AsyncConnection, user_ids: Collection[int]) -> dict[int, str]:
    rows = await conn.execute(
        select(_users.c.id, _users.c.display_name).where(
            one_of(_users.c.id, list(user_ids), conn.dialect.name)
        )
    )
    return {r.id: r.display_name for r in rows}


async def _titles(
    conn: AsyncConnection, conversation_ids: Collection[str]
) -> dict[str, str | None]:
    rows = await conn.execute(
        select(_conversations.c.id, _conversations.c.title).where(
            one_of(_conversations.c.id, list(conversation_ids), conn.dialect.name)
        )
    )
    return {r.id: r.title for r in rows}


async def unread(
    conn: AsyncConnection, wanted: Collection[tuple[str, int, int]]
) -> set[tuple[str, int, int]]:
    """Those of the (conversation, user, seq) whose user is still a participant and has not
    read that far."""
    states = await participant_states(conn, {(c, u) for c, u, _ in wanted})
    return {
        (c, u, seq)
        for c, u, seq in wanted
        if (c, u) in states and states[(c, u)].last_read_seq < seq
    }


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


async def unread_totals(
    conn: AsyncConnection, user_ids: Collection[int], now: datetime | None = None
) -> dict[int, int]:
    """Each user's unread messages over their conversations (the app icon's badge),
    leaving out the conversations they muted (or snoozed until after `now`) and those
    whose notify level is `none`: what never pushes them does not nag them either."""
    if not user_ids:
        return {}
    now = now or utcnow()
    p = _participants.c
    ids = list(user_ids)
    totals: dict[int, int] = {}
    dialect = conn.dialect.name
    for i in range(0, len(ids), _chunk(dialect)):
        rows = await conn.execute(
            select(p.user_id, func.sum(_conversations.c.last_seq - p.last_read_seq))
            .join(_conversations, and_(_conversations.c.id == p.conversation_id))
            .where(
                one_of(p.user_id, ids[i : i + _chunk(dialect)], dialect),
                p.muted.is_(False),
                or_(p.mute_until.is_(None), p.mute_until <= now),
                p.notify != "none",
            )
            .group_by(p.user_id)
        )
        totals.update({user_id: int(total or 0) for user_id, total in rows})
    return totals
