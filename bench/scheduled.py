"""The `scheduled` scenario: 10,000 scheduled messages due in the same second.

One node on PostgreSQL. 100 senders, each in a direct conversation with a recipient of
its own whose socket is open (in the driver: 100 lean sockets, counting `message.new`
frames). The scheduled rows are written straight into the database, all due at the
same moment a few seconds ahead (as 10,000 schedules made earlier would be); the node's
timer loop claims them in batches and sends them through the message writer.

Measured from the due time: until the last message is committed (its `created_at`),
and until the last `message.new` reached its recipient's socket (target: all within
5 s); and the first message's lag after its time (the timer's own wake-up latency).
`--quick`: 2,000 messages.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson

from bench.wsclient import WSClient

if TYPE_CHECKING:
    from bench.runner import Bench

FULL = 10_000
QUICK = 2_000
PAIRS = 100
LEAD_SECONDS = 3.0  # how far ahead the due time is when the rows are written


class Inbox:
    """message.new frames received by the recipients, and when the last came."""

    def __init__(self) -> None:
        self.count = 0
        self.last_at = 0.0

    def on_message(self, client: WSClient, data: bytes) -> None:
        if b'"message.new"' in data and orjson.loads(data).get("type") == "message.new":
            self.count += 1
            self.last_at = time.time()


async def run(bench: Bench, quick: bool) -> dict[str, Any]:
    assert bench.pool is not None
    total = QUICK if quick else FULL
    [node] = await bench.start_nodes("scheduled")
    users = await bench.register(node, "sch", 2 * PAIRS)
    senders, recipients = users[0::2], users[1::2]
    conversations = [
        await bench.conversation(node, s, [r]) for s, r in zip(senders, recipients, strict=True)
    ]
    inbox = Inbox()
    sockets = [
        await WSClient.connect("127.0.0.1", node.port, f"/ws?token={r['token']}", inbox.on_message)
        for r in recipients
    ]
    try:
        # All due at one moment (a whole second), LEAD_SECONDS from now.
        due = await bench.pool.fetchval(
            "SELECT date_trunc('second', now()) + make_interval(secs => $1::float8 + 1)",
            LEAD_SECONDS,
        )
        await bench.pool.execute(
            "INSERT INTO scheduled_messages (id, conversation_id, sender_id, content, "
            "  send_at, status, created_at) "
            "SELECT gen_random_uuid()::text, c.conversation_id, c.sender_id, "
            "  'scheduled message ' || i, $3::timestamptz, 'pending', now() "
            "FROM generate_series(0, $4::int - 1) i "
            "JOIN unnest($1::text[], $2::int[]) WITH ORDINALITY "
            "  AS c(conversation_id, sender_id, n) ON c.n = i % $5::int + 1",
            conversations,
            [s["id"] for s in senders],
            due,
            total,
            PAIRS,
        )
        await bench.pool.execute("ANALYZE scheduled_messages")
        due_at = due.timestamp()
        deadline = due_at + 60
        # Polling the driver's own counter, bounded by the deadline.
        while inbox.count < total and time.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        row = await bench.pool.fetchrow(
            "SELECT count(*) AS sent, min(m.created_at) AS first, max(m.created_at) AS last "
            "FROM scheduled_messages s JOIN messages m ON m.id = s.message_id "
            "WHERE s.status = 'sent'"
        )
        left = await bench.pool.fetchval(
            "SELECT count(*) FROM scheduled_messages WHERE status <> 'sent'"
        )
    finally:
        for socket in sockets:
            socket.close()
    committed = row["last"].timestamp() - due_at if row["sent"] else None
    delivered = inbox.last_at - due_at if inbox.count else None
    return {
        "messages": total,
        "sent": row["sent"],
        "not_sent": left,
        "delivered": inbox.count,
        "first_after_due_s": round(row["first"].timestamp() - due_at, 3) if row["sent"] else None,
        "all_committed_after_due_s": round(committed, 3) if committed is not None else None,
        "all_delivered_after_due_s": round(delivered, 3) if delivered is not None else None,
        "under_5s": delivered is not None and inbox.count == total and delivered < 5,
    }
