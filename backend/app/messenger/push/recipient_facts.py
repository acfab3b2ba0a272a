"""What a push decision reads of its recipients, in one statement on PostgreSQL.

For each (conversation, recipient, sender) of a batch: the recipient's participant row
(read mark, mute, notify level), whether they blocked the sender, their notification
settings, their active devices, their badge (unread over the conversations that may push
them), the sender's display name and the conversation's title. One round trip instead of
one per kind, each value as the separate queries of push.decision would find it.

Arrays as parameters (`unnest`, `= ANY`): the statement's text is the same whatever the
batch's size, so it is prepared once per connection. It is compiled once and run on
asyncpg itself: SQLAlchemy's execution and rows around it cost about as much CPU as the
statement's round trip, on the path from a lone message's commit to its push.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    ARRAY,
    Integer,
    String,
    and_,
    bindparam,
    column,
    exists,
    func,
    or_,
    select,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from app.messenger.models import Conversation, DeviceToken, Participant
from app.messenger.push.base import Device
from app.models import Block, NotificationSettings, User
from app.notification_settings import DEFAULTS, UserNotificationSettings

_participants = Participant.__table__
_devices = DeviceToken.__table__
_users = User.__table__
_conversations = Conversation.__table__
_blocks = Block.__table__
_settings = NotificationSettings.__table__

CHUNK = 10_000  # (conversation, recipient, sender) triples per statement
# The settings a push decision reads (the email ones are the digests' business).
_SETTING_COLUMNS = (
    "time_zone",
    "quiet_start",
    "quiet_end",
    "quiet_allow_mentions",
    "push_delay_seconds",
    "preview",
    "locale",
)


class ParticipantState(NamedTuple):
    last_read_seq: int
    muted: bool
    mute_until: datetime | None
    push_enabled: bool
    notify: str


@dataclass(slots=True)
class RecipientFacts:
    """What the statement found, keyed as push.decision looks it up. A (conversation,
    user) pair that is not a participant has no state, and nothing else of it is read."""

    states: dict[tuple[str, int], ParticipantState] = field(default_factory=dict)
    blocked: set[tuple[int, int]] = field(default_factory=set)  # (recipient, sender)
    settings: dict[int, UserNotificationSettings] = field(default_factory=dict)
    # Every active device, whatever its provider (the caller leaves out those turned off).
    devices: dict[int, list[Device]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)  # sender id -> display name
    titles: dict[str, str | None] = field(default_factory=dict)
    badges: dict[int, int] = field(default_factory=dict)


def _statement() -> Any:
    """The statement, built once: its parameters are named (`_parameters`). Building
    one this size costs more than running it, so it is kept, and SQLAlchemy's cache
    finds its compiled form at once."""
    pair = (
        func.unnest(
            bindparam("conversation_ids", type_=ARRAY(String)),
            bindparam("user_ids", type_=ARRAY(Integer)),
            bindparam("sender_ids", type_=ARRAY(Integer)),
        )
        .table_valued(
            column("conversation_id", String),
            column("user_id", Integer),
            column("sender_id", Integer),
        )
        .render_derived(name="pair")
    )
    # The badge, as push.decision.unread_totals counts it: per pair (LATERAL), an index
    # look-up by user. Not one aggregate over all recipients joined afterwards: once
    # PostgreSQL plans the prepared statement generically (not knowing the arrays'
    # length) it may scan that aggregate again for every pair, quadratic in the batch.
    mine = _participants.alias("mine")
    counted = _conversations.alias("counted")
    badge = (
        select(func.sum(counted.c.last_seq - mine.c.last_read_seq).label("unread"))
        .join(counted, counted.c.id == mine.c.conversation_id)
        .where(
            mine.c.user_id == pair.c.user_id,
            mine.c.muted.is_(False),
            or_(
                mine.c.mute_until.is_(None),
                mine.c.mute_until <= bindparam("now", type_=mine.c.mute_until.type),
            ),
            mine.c.notify != "none",
        )
        .lateral("badge")
    )
    p = _participants.alias("p")
    s = _settings.alias("s")
    sender = _users.alias("sender")
    conv = _conversations.alias("conv")
    d = _devices.alias("d")
    b = _blocks.c
    blocked = exists().where(b.blocker_id == pair.c.user_id, b.blocked_id == pair.c.sender_id)
    return select(
        pair.c.conversation_id,
        pair.c.user_id,
        pair.c.sender_id,
        p.c.last_read_seq,
        p.c.muted,
        p.c.mute_until,
        p.c.push_enabled,
        p.c.notify,
        blocked.label("blocked"),
        s.c.user_id.label("settings_of"),
        *(s.c[name] for name in _SETTING_COLUMNS),
        badge.c.unread,
        sender.c.display_name,
        conv.c.title,
        d.c.id.label("device_id"),
        d.c.token,
        d.c.platform,
        d.c.provider,
        d.c.session_id,
    ).select_from(
        pair.join(
            p, and_(p.c.conversation_id == pair.c.conversation_id, p.c.user_id == pair.c.user_id)
        )
        .outerjoin(s, s.c.user_id == pair.c.user_id)
        .outerjoin(badge, true())
        .outerjoin(sender, sender.c.id == pair.c.sender_id)
        .outerjoin(conv, conv.c.id == pair.c.conversation_id)
        # One row per active device (one without a device when there is none).
        .outerjoin(d, and_(d.c.user_id == pair.c.user_id, d.c.is_active.is_(True)))
    )


_STATEMENT = _statement()


class _Compiled(NamedTuple):
    sql: str
    order: tuple[str, ...]  # the parameters' names, in their order ($1, $2, ...)
    constants: dict[str, Any]  # values the statement itself binds (its literals)


_compiled: list[_Compiled] = []  # made at the first use, for asyncpg's dialect


def _compile(dialect: Dialect) -> _Compiled:
    if not _compiled:
        compiled = _STATEMENT.compile(dialect=dialect)
        given = _parameters([], datetime.now(UTC))
        constants = {k: v for k, v in compiled.construct_params(given).items() if k not in given}
        _compiled.append(_Compiled(compiled.string, tuple(compiled.positiontup or ()), constants))
    return _compiled[0]


def _parameters(triples: list[tuple[str, int, int]], now: datetime) -> dict[str, Any]:
    return {
        "conversation_ids": [c for c, _, _ in triples],
        "user_ids": [u for _, u, _ in triples],
        "sender_ids": [s for _, _, s in triples],
        "now": now,
    }


async def recipient_facts(
    conn: AsyncConnection, triples: Collection[tuple[str, int, int]], now: datetime
) -> RecipientFacts:
    """The facts of these (conversation, recipient, sender) triples (PostgreSQL, on a
    read connection: autocommit, see push.read_connection): one statement per CHUNK of
    them, the badges counted as of `now`."""
    if now.tzinfo is None:  # what UTCDateTime refuses, refused here too (no SQLAlchemy)
        raise ValueError("naive datetime")
    facts = RecipientFacts()
    ordered = list(dict.fromkeys(triples))
    seen_devices: set[str] = set()
    statement = _compile(conn.dialect)
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is None:
        raise RuntimeError("recipient_facts on a closed connection")
    for i in range(0, len(ordered), CHUNK):
        values = {**statement.constants, **_parameters(ordered[i : i + CHUNK], now)}
        rows = await driver.fetch(statement.sql, *(values[name] for name in statement.order))
        for r in rows:
            user_id, conversation_id = r["user_id"], r["conversation_id"]
            key = (conversation_id, user_id)
            if key not in facts.states:
                facts.states[key] = ParticipantState(
                    r["last_read_seq"], r["muted"], r["mute_until"], r["push_enabled"], r["notify"]
                )
            if r["blocked"]:
                facts.blocked.add((user_id, r["sender_id"]))
            if user_id not in facts.settings:
                facts.settings[user_id] = (
                    DEFAULTS
                    if r["settings_of"] is None
                    else UserNotificationSettings(**{name: r[name] for name in _SETTING_COLUMNS})
                )
                facts.badges[user_id] = int(r["unread"] or 0)
            if r["display_name"] is not None:
                facts.names[r["sender_id"]] = r["display_name"]
            facts.titles[conversation_id] = r["title"]
            # A user's devices come once per pair of theirs: each is kept once.
            device_id = r["device_id"]
            if device_id is not None and device_id not in seen_devices:
                seen_devices.add(device_id)
                facts.devices.setdefault(user_id, []).append(
                    Device(
                        device_id,
                        user_id,
                        r["token"],
                        r["platform"],
                        r["provider"],
                        r["session_id"],
                    )
                )
    return facts
