"""The message store: the SQL that writes and reads messages, and their JSON shape.

A batch of sends is written one of two ways. On PostgreSQL, one statement on the
writer's own connection (one round trip, no ORM or Core compilation per row); anything
unusual in it (a repeated client_msg_id, a conversation gone) makes that statement fail
as a whole, and the batch is then written the careful way, which sorts each send out.
The careful way (and SQLite's only way) is a transaction of Core statements.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import asyncpg
import orjson
from sqlalchemy import bindparam, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import one_of, upsert
from app.errors import ApiError
from app.messenger.attachments import claim
from app.messenger.models import Conversation, Message, MessageReaction, Participant, PushJob

_conversations = Conversation.__table__
_messages = Message.__table__
_push_jobs = PushJob.__table__
_participants = Participant.__table__
_reactions = MessageReaction.__table__

# The JSON shape of a message is its row: these columns, under these names.
FIELDS = (
    "id",
    "conversation_id",
    "seq",
    "sender_id",
    "content",
    "client_msg_id",
    "created_at",
    "mentions",
    "edited_at",
    "deleted_at",
    "reply_to",
    "attachments",
)

# (conversation_id, sender_id, client_msg_id): what makes a send a repeat.
SendKey = tuple[str, int, str]


def message_dict(row: Any, prefix: str = "") -> dict[str, Any]:
    """A message (a row, or anything with its columns as attributes; named with `prefix`
    where a query labelled them so) in the JSON shape clients get."""
    if prefix:
        message = {name: getattr(row, prefix + name) for name in FIELDS}
        message["mentions"] = message["mentions"] or []
        if message["deleted_at"] is not None or not message["attachments"]:
            message["attachments"] = []
        message["reactions"] = {}  # (filled in by reactions_of where there are any)
        return message
    # Spelled out: every message sent passes here (the comprehension costs twice as much).
    return {
        "id": row.id,
        "conversation_id": row.conversation_id,
        "seq": row.seq,
        "sender_id": row.sender_id,
        "content": row.content,
        "client_msg_id": row.client_msg_id,
        "created_at": row.created_at,
        "mentions": row.mentions or [],  # NULL when the message names nobody
        "edited_at": row.edited_at,
        "deleted_at": row.deleted_at,
        "reply_to": row.reply_to,
        # NULL when it carries none; a deleted message shows none (the cleanup takes them).
        "attachments": (row.attachments or []) if row.deleted_at is None else [],
        # A message with reactions has been changed (change_seq): the pages that hold
        # one fill these in (message_changes.with_reactions); a new message has none.
        "reactions": {},
    }


class Committed(NamedTuple):
    """A message just committed, with the conversation's participants (from the cache)."""

    message: dict[str, Any]
    participants: frozenset[int]


class NewMessage(Protocol):
    """A send on its way into the store; the store fills in id, seq and created_at."""

    conversation_id: str
    sender_id: int
    content: str
    client_msg_id: str | None
    mentions: list[int] | None
    reply_to: str | None
    attachments: list[dict[str, Any]] | None
    id: str
    seq: int
    created_at: datetime


class Repeated(Exception):
    """A client_msg_id in the batch was already stored: the transaction is void."""


class PushLease(NamedTuple):
    """The push job each commit writes, leased to the node that wrote it."""

    job_id: str
    node_id: str
    until: datetime


# The whole batch in one statement (PostgreSQL). Conversation rows are locked in id
# order, so two nodes' batches never deadlock; each send's seq follows its place in
# the batch. A send into a conversation that is gone gets a NULL seq (NOT NULL
# violation) and a repeated client_msg_id hits the unique constraint: either way the
# statement, and so its implicit transaction, fails as a whole.
BATCH_SQL = """
WITH sends AS (
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $10::text[], $11::text[]
    ) WITH ORDINALITY AS s (
        id, conversation_id, sender_id, content, client_msg_id, mentions, reply_to, ord
    )
),
counts AS (
    SELECT conversation_id, count(*) AS n FROM sends GROUP BY conversation_id
),
locked AS MATERIALIZED (
    SELECT id FROM conversations
    WHERE id IN (SELECT conversation_id FROM counts)
    ORDER BY id
    FOR UPDATE
),
bumped AS (
    UPDATE conversations AS c SET last_seq = c.last_seq + counts.n
    FROM locked JOIN counts ON counts.conversation_id = locked.id
    WHERE c.id = locked.id
    RETURNING c.id, c.last_seq - counts.n AS base
),
inserted AS (
    INSERT INTO messages
        (id, conversation_id, seq, sender_id, content, client_msg_id, created_at, mentions,
         reply_to)
    SELECT s.id, s.conversation_id,
           b.base + row_number() OVER (PARTITION BY s.conversation_id ORDER BY s.ord),
           s.sender_id, s.content, s.client_msg_id, $6, s.mentions::json, s.reply_to
    FROM sends AS s LEFT JOIN bumped AS b ON b.id = s.conversation_id
    RETURNING id, conversation_id, sender_id, seq
),
read_up_to AS (
    UPDATE participants AS p SET last_read_seq = i.seq
    FROM (
        SELECT conversation_id, sender_id, max(seq) AS seq FROM inserted
        GROUP BY conversation_id, sender_id
    ) AS i
    WHERE p.conversation_id = i.conversation_id AND p.user_id = i.sender_id
),
jobs AS (
    INSERT INTO push_jobs (id, message_ids, created_at, claimed_by, lease_until)
    SELECT $9, json_agg(id), $6, $7, $8 FROM inserted
)
SELECT id, seq FROM inserted
"""


async def insert_in_one_statement(
    driver: asyncpg.Connection, sends: Sequence[NewMessage], now: datetime, lease: PushLease
) -> bool:
    """PostgreSQL: the batch, its read marks and its push job in one statement. False
    (nothing written) when a send is a repeat or its conversation is gone."""
    ids = [str(uuid.uuid4()) for _ in sends]
    try:
        rows = await driver.fetch(
            BATCH_SQL,
            ids,
            [s.conversation_id for s in sends],
            [s.sender_id for s in sends],
            [s.content for s in sends],
            [s.client_msg_id for s in sends],
            now,
            lease.node_id,
            lease.until,
            lease.job_id,
            [None if s.mentions is None else _json(s.mentions) for s in sends],
            [s.reply_to for s in sends],
        )
    except asyncpg.IntegrityConstraintViolationError:
        return False
    seqs = dict(rows)
    for message_id, send in zip(ids, sends, strict=True):
        send.id, send.seq, send.created_at = message_id, seqs[message_id], now
    return True


async def insert_in_transaction(
    engine: AsyncEngine, sends: Sequence[NewMessage], now: datetime, lease: PushLease
) -> None:
    """The careful way: the batch in one transaction of Core statements. Raises Repeated
    (nothing written) when a send's client_msg_id is already stored, AttachmentTaken
    (nothing written) when an upload a send carries was sent already, and 404 when a
    conversation is gone."""
    counts = Counter(s.conversation_id for s in sends)
    async with engine.begin() as conn:
        next_seq: dict[str, int] = {}
        # Sorted, so two nodes lock conversation rows in one order and never deadlock.
        for conversation_id in sorted(counts):
            n = counts[conversation_id]
            last = await conn.scalar(
                update(_conversations)
                .where(_conversations.c.id == conversation_id)
                .values(last_seq=_conversations.c.last_seq + n)
                .returning(_conversations.c.last_seq)
            )
            if last is None:
                raise ApiError(404, "conversation_not_found", "no such conversation")
            next_seq[conversation_id] = last - n + 1
        for send in sends:
            send.id, send.seq, send.created_at = (
                str(uuid.uuid4()),
                next_seq[send.conversation_id],
                now,
            )
            next_seq[send.conversation_id] += 1
        rows = [message_dict(send) for send in sends]
        for row in rows:
            del row["reactions"]  # (not a column)
        # A message that names nobody, or carries no file, leaves mentions or
        # attachments out (SQL NULL, not JSON null), so rows go in one statement per
        # set of columns they fill.
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            for name in ("mentions", "attachments"):
                if not row[name]:
                    del row[name]
            groups.setdefault(tuple(row), []).append(row)
        stored = 0
        for group in groups.values():
            inserted = await conn.execute(
                upsert(_messages, engine.dialect.name)
                .on_conflict_do_nothing()
                .returning(_messages.c.id),
                group,
            )
            stored += len(inserted.all())
        if stored != len(rows):
            raise Repeated
        # Only after the repeat check: a repeat answers its original, whose claim holds.
        for send in sends:
            if send.attachments:
                await claim(conn, send)
        # A sender has read their own conversation up to what they just sent.
        read_up_to: dict[tuple[str, int], int] = {}
        for send in sends:
            read_up_to[(send.conversation_id, send.sender_id)] = send.seq
        await conn.execute(
            update(_participants)
            .where(
                _participants.c.conversation_id == bindparam("c"),
                _participants.c.user_id == bindparam("u"),
            )
            .values(last_read_seq=bindparam("s")),
            [{"c": c, "u": u, "s": seq} for (c, u), seq in read_up_to.items()],
        )
        await conn.execute(
            _push_jobs.insert().values(
                id=lease.job_id,
                message_ids=[send.id for send in sends],
                created_at=now,
                claimed_by=lease.node_id,
                lease_until=lease.until,
            )
        )


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def find_originals(
    engine: AsyncEngine, keys: Sequence[SendKey]
) -> dict[SendKey, dict[str, Any]]:
    """The stored messages these sends repeat, by their key."""
    if not keys:
        return {}
    key_cols = tuple_(_messages.c.conversation_id, _messages.c.sender_id, _messages.c.client_msg_id)
    async with engine.connect() as conn:
        rows = await conn.execute(select(_messages).where(key_cols.in_(keys)))
        return {(r.conversation_id, r.sender_id, r.client_msg_id): message_dict(r) for r in rows}


async def reactions_of(
    conn: AsyncConnection, message_ids: Sequence[str]
) -> dict[str, dict[str, list[int]]]:
    """Each message's reactions, {emoji: [user_id]} in the order they were made; one query."""
    found: dict[str, dict[str, list[int]]] = {}
    if not message_ids:
        return found
    rows = await conn.execute(
        select(_reactions.c.message_id, _reactions.c.emoji, _reactions.c.user_id)
        .where(one_of(_reactions.c.message_id, message_ids, conn.dialect.name))
        .order_by(_reactions.c.created_at, _reactions.c.user_id)
    )
    for row in rows:
        found.setdefault(row.message_id, {}).setdefault(row.emoji, []).append(row.user_id)
    return found


async def with_reactions(
    conn: AsyncConnection, rows: Sequence[Any], prefix: str = ""
) -> list[dict[str, Any]]:
    """The rows as messages with their reactions: one query for the page, none when no
    message of it was ever changed (a reaction is a change)."""
    messages = [message_dict(row, prefix) for row in rows]
    changed = [
        m["id"]
        for row, m in zip(rows, messages, strict=True)
        if getattr(row, prefix + "change_seq")
    ]
    if changed:
        found = await reactions_of(conn, changed)
        for message in messages:
            message["reactions"] = found.get(message["id"], {})
    return messages


async def change_cursor(conn: AsyncConnection, conversation_id: str) -> int:
    """The conversation's change counter: changed_after from here misses nothing."""
    value = await conn.scalar(
        select(_conversations.c.change_seq).where(_conversations.c.id == conversation_id)
    )
    return int(value or 0)


async def page_of_messages(
    engine: AsyncEngine,
    conversation_id: str,
    after_seq: int | None,
    before_seq: int | None,
    limit: int,
    joined_seq: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """A page of a conversation's history in ascending seq: with only before_seq (or
    nothing) the newest `limit` before it; with after_seq the oldest after it. And the
    change cursor, read first: whatever changes after it is found by changed_after.
    Messages up to joined_seq (from before the reader joined) are left out."""
    stmt = select(_messages).where(
        _messages.c.conversation_id == conversation_id, _messages.c.seq > joined_seq
    )
    if after_seq is not None:
        stmt = stmt.where(_messages.c.seq > after_seq)
    if before_seq is not None:
        stmt = stmt.where(_messages.c.seq < before_seq)
    newest_first = after_seq is None
    stmt = stmt.order_by(_messages.c.seq.desc() if newest_first else _messages.c.seq).limit(limit)
    async with engine.connect() as conn:
        cursor = await change_cursor(conn, conversation_id)
        messages = await with_reactions(conn, (await conn.execute(stmt)).all())
    if newest_first:
        messages.reverse()
    return messages, cursor
