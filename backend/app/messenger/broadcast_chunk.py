"""What one chunk of an announcement writes: the recipients' Announcements conversations
(made where missing), their one participant, one message each, and the push job.

PostgreSQL does it in one statement on the transaction's own connection (CHUNK_SQL):
the node only binds a few arrays, so a chunk of a thousand recipients costs it about as
much event-loop time as one send, and sends keep their latency while it runs. SQLite
(one node, small) takes the same steps as Core statements.

Either way a conversation that already holds this announcement's message (the chunk
written before, then replayed by a node taking over) gets nothing, and a new
conversation starts at seq 1 with its message.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import one_of, upsert
from app.messenger.message_store import Committed
from app.messenger.models import Conversation, Message, Participant, PushJob

_conversations = Conversation.__table__
_participants = Participant.__table__
_messages = Message.__table__
_jobs = PushJob.__table__

TYPE = "announcement"
TITLE = "Announcements"
# Announcement chunks take this transaction-level advisory lock (PostgreSQL), so two
# announcements sent at once never race to make the same user's conversation.
LOCK_KEY = 0x616E6E6F  # "anno"

# $1 user ids, $2 their conversations' direct keys, $3 now, $4 the admin, $5 the
# client_msg_id, $6 the text, $7 the push job id, $8 its node, $9 its lease, $10 the
# announcement.
CHUNK_SQL = """
WITH wanted AS (
    SELECT u.id AS user_id FROM users AS u WHERE u.id = ANY($1::int[])
),
existing AS MATERIALIZED (
    SELECT c.id, c.created_by FROM conversations AS c
    WHERE c.direct_key = ANY($2::text[])
    ORDER BY c.id
    FOR UPDATE
),
created AS (
    INSERT INTO conversations
        (id, type, title, created_by, created_at, last_seq, direct_key, change_seq)
    SELECT gen_random_uuid()::text, 'announcement', 'Announcements', w.user_id, $3, 1,
           'announcement:' || w.user_id, 0
    FROM wanted AS w
    WHERE NOT EXISTS (SELECT 1 FROM existing AS e WHERE e.created_by = w.user_id)
    RETURNING id, created_by
),
joined AS (
    INSERT INTO participants (conversation_id, user_id, joined_at, last_read_seq, muted,
                              push_enabled, notify, role, joined_seq)
    SELECT id, created_by, $3, 0, false, true, 'all', 'member', 0 FROM created
),
bumped AS (
    UPDATE conversations AS c SET last_seq = c.last_seq + 1
    FROM existing AS e
    WHERE c.id = e.id AND NOT EXISTS (
        SELECT 1 FROM messages AS m
        WHERE m.conversation_id = e.id AND m.sender_id = $4 AND m.client_msg_id = $5
    )
    RETURNING c.id, c.created_by, c.last_seq AS seq
),
targets AS (
    SELECT id, created_by, 1 AS seq FROM created
    UNION ALL
    SELECT id, created_by, seq FROM bumped
),
inserted AS (
    INSERT INTO messages (id, conversation_id, seq, sender_id, content, client_msg_id,
                          created_at)
    SELECT gen_random_uuid()::text, t.id, t.seq, $4, $6, $5, $3 FROM targets AS t
    RETURNING id, conversation_id, seq
),
jobs AS (
    INSERT INTO push_jobs (id, message_ids, created_at, claimed_by, lease_until, announcement_id)
    SELECT $7, json_agg(id), $3, $8, $9, $10 FROM inserted HAVING count(*) > 0
)
SELECT i.id, i.conversation_id, i.seq, t.created_by AS user_id
FROM inserted AS i JOIN targets AS t ON t.id = i.conversation_id
"""


def conversation_key(user_id: int) -> str:
    return f"{TYPE}:{user_id}"


def announcement_of(conversation_type: str, client_msg_id: str | None) -> str | None:
    """The announcement a message was written for, or None. Only a message of an
    Announcements conversation counts: nobody else writes there, while anyone may give
    an ordinary message a client_msg_id that looks like an announcement's."""
    if conversation_type != TYPE or client_msg_id is None:
        return None
    prefix = f"{TYPE}:"
    return client_msg_id[len(prefix) :] if client_msg_id.startswith(prefix) else None


def _committed(
    message_id: str,
    conversation_id: str,
    seq: int,
    user_id: int,
    row: Any,
    text: str,
    now: datetime,
) -> Committed:
    message = {
        "id": message_id,
        "conversation_id": conversation_id,
        "seq": seq,
        "sender_id": row.created_by,
        "content": text,
        "client_msg_id": f"{TYPE}:{row.id}",
        "created_at": now,
        "mentions": [],
        "edited_at": None,
        "deleted_at": None,
        "reply_to": None,
        "attachments": [],
        "reactions": {},
    }
    return Committed(message, frozenset((user_id,)))


async def write_chunk(
    conn: AsyncConnection,
    row: Any,
    users: Sequence[int],
    text: str,
    now: datetime,
    job: dict[str, Any],
) -> list[Committed]:
    """Write the chunk for these (existing) users in the transaction of `conn`, with
    `job` (id, claimed_by, lease_until) as its push job (marked as the announcement's,
    so it stays in the low-priority lane); the messages written."""
    if not users:
        return []
    if conn.dialect.name == "postgresql":
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        await driver.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        rows = await driver.fetch(
            CHUNK_SQL,
            list(users),
            [conversation_key(u) for u in users],
            now,
            row.created_by,
            f"{TYPE}:{row.id}",
            text,
            job["id"],
            job["claimed_by"],
            job["lease_until"],
            row.id,
        )
        return [
            _committed(r["id"], r["conversation_id"], r["seq"], r["user_id"], row, text, now)
            for r in rows
        ]
    committed = await _write_core(conn, row, users, text, now)
    if committed:
        await conn.execute(
            _jobs.insert().values(
                **job,
                message_ids=[c.message["id"] for c in committed],
                created_at=now,
                announcement_id=row.id,
            )
        )
    return committed


async def _write_core(
    conn: AsyncConnection, row: Any, users: Sequence[int], text: str, now: datetime
) -> list[Committed]:
    """The same steps as CHUNK_SQL, as Core statements (SQLite)."""
    dialect = conn.dialect.name
    c, m = _conversations.c, _messages.c
    keys = [conversation_key(u) for u in users]
    await conn.execute(
        upsert(_conversations, dialect).on_conflict_do_nothing(index_elements=["direct_key"]),
        [
            {
                "id": str(uuid.uuid4()),
                "type": TYPE,
                "title": TITLE,
                "created_by": u,
                "created_at": now,
                "last_seq": 0,
                "direct_key": key,
                "change_seq": 0,
            }
            for u, key in zip(users, keys, strict=True)
        ],
    )
    mine = one_of(c.direct_key, keys, dialect)
    # The recipient is the only participant (created_by is the recipient here).
    await conn.execute(
        upsert(_participants, dialect)
        .from_select(
            [
                "conversation_id",
                "user_id",
                "joined_at",
                "last_read_seq",
                "muted",
                "push_enabled",
                "notify",
                "role",
                "joined_seq",
            ],
            select(
                c.id,
                c.created_by,
                literal(now, _participants.c.joined_at.type),
                literal(0),
                literal(False),
                literal(True),
                literal("all"),
                literal("member"),
                literal(0),
            ).where(mine),
        )
        .on_conflict_do_nothing()
    )
    owner = {r.id: r.created_by for r in await conn.execute(select(c.id, c.created_by).where(mine))}
    # A chunk written before (a takeover replaying it) has its messages: skip those.
    sent_before = set(
        (
            await conn.execute(
                select(m.conversation_id).where(
                    one_of(m.conversation_id, list(owner), dialect),
                    m.sender_id == row.created_by,
                    m.client_msg_id == f"{TYPE}:{row.id}",
                )
            )
        ).scalars()
    )
    todo = sorted(cid for cid in owner if cid not in sent_before)
    if not todo:
        return []
    seqs = {
        r.id: r.last_seq
        for r in await conn.execute(
            update(_conversations)
            .where(one_of(c.id, todo, dialect))
            .values(last_seq=c.last_seq + 1)
            .returning(c.id, c.last_seq)
        )
    }
    messages = [
        {
            "id": str(uuid.uuid4()),
            "conversation_id": cid,
            "seq": seqs[cid],
            "sender_id": row.created_by,
            "content": text,
            "client_msg_id": f"{TYPE}:{row.id}",
            "created_at": now,
        }
        for cid in todo
    ]
    await conn.execute(_messages.insert(), messages)
    return [
        _committed(
            msg["id"],
            msg["conversation_id"],
            msg["seq"],
            owner[msg["conversation_id"]],
            row,
            text,
            now,
        )
        for msg in messages
    ]
