"""The `email_digests` scenario: a daily digest run for 100,000 users, 10,000 of whom have
something to send, against a local SMTP server, while message latency is measured.

Written straight into the bench database: 100,000 users, each with a verified address
and daily digests; every tenth of them in a direct conversation with 3 messages they
have not read, the other 90,000 in 9,000 ten-member groups of 5 messages they all read. A local
SMTP server (aiosmtpd, in the driver, counting what it accepts) speaking as a real relay
does: STARTTLS required (a self-signed certificate the bench makes, which the node
trusts through SMTP_CA_FILE) and AUTH required after it; one node configured to send to
it. The node's digest loop finds nothing due until
the driver makes every period due with one UPDATE; the run lasts from that UPDATE until
the last digest is accepted by the server and no period is due any more (so the loop's
interval, 0.5 s here, counts).

Measured twice: the run alone (target: under 60 s), and a second identical run (the
cursors put back) while the `latency` load (one message at a time, sender socket to
recipient socket) runs on the same node; its p99 is compared with an idle baseline
(target: under 50 ms while digests run). `--quick`: 10,000 users, 1,000 with mail.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.email_smtp import accept_login, self_signed, smtp_controller

if TYPE_CHECKING:
    from bench.runner import Bench

FULL = (100_000, 10_000)
QUICK = (10_000, 1_000)
GROUP = 10
USERNAME = "bench-mailer"
# Made per run, for a server that lives as long as the run.
PASSWORD = os.urandom(12).hex()


@dataclass
class CountingSink:
    """aiosmtpd's handler: counts the emails accepted, and when the last one came."""

    accepted: int = 0
    last_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.accepted += 1
            self.last_at = time.monotonic()
        return "250 OK"


async def fill(bench: Bench, users: int, with_mail: int) -> float:
    assert bench.pool is not None
    started = time.monotonic()
    async with bench.pool.acquire() as conn:
        sender = await conn.fetchval(
            "INSERT INTO users (username, display_name, password_hash, created_at) "
            "VALUES ('dgsender', 'Dana Sender', 'x', now()) RETURNING id"
        )
        # One statement: the ids come out consecutive, the first one returned.
        first = await conn.fetchval(
            "WITH made AS (INSERT INTO users (username, display_name, password_hash, "
            "  created_at) SELECT 'dg' || i, 'Digest ' || i, 'x', now() "
            "  FROM generate_series(1, $1::int) i RETURNING id) SELECT min(id) FROM made",
            users,
        )
        # Those with mail: a direct conversation with 3 unread messages from the sender.
        await conn.execute(
            "INSERT INTO conversations (id, type, created_by, created_at, last_seq) "
            "SELECT 'dg-d-' || i, 'direct', $1::int, now() - interval '1 day', 3 "
            "FROM generate_series(0, $2::int - 1) i",
            sender,
            with_mail,
        )
        # User first + 10 i has mail; the others are numbered j (first + j + j / 9 + 1).
        await conn.execute(
            "INSERT INTO participants (conversation_id, user_id, joined_at, last_read_seq) "
            "SELECT 'dg-d-' || i, $1::int + 10 * i, now() - interval '1 day', 0 "
            "FROM generate_series(0, $2::int - 1) i "
            "UNION ALL SELECT 'dg-d-' || i, $3::int, now() - interval '1 day', 3 "
            "FROM generate_series(0, $2::int - 1) i",
            first,
            with_mail,
            sender,
        )
        await conn.execute(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, content, created_at) "
            "SELECT 'dg-dm-' || i || '-' || k, 'dg-d-' || i, k, $1::int, "
            "  'Are we still on for lunch tomorrow? message ' || k, "
            "  now() - interval '2 hours' + k * interval '1 minute' "
            "FROM generate_series(0, $2::int - 1) i, generate_series(1, 3) k",
            sender,
            with_mail,
        )
        # The rest: ten-member groups whose 5 messages everyone has read.
        groups = (users - with_mail) // GROUP
        await conn.execute(
            "INSERT INTO conversations (id, type, title, created_by, created_at, last_seq) "
            "SELECT 'dg-g-' || g, 'group', 'Group ' || g, $1::int, now() - interval '1 day', 5 "
            "FROM generate_series(0, $2::int - 1) g",
            sender,
            groups,
        )
        await conn.execute(
            "INSERT INTO participants (conversation_id, user_id, joined_at, last_read_seq) "
            "SELECT 'dg-g-' || (j / $2::int), $1::int + j + j / 9 + 1, "
            "  now() - interval '1 day', 5 "
            "FROM generate_series(0, $3::int - 1) j",
            first,
            GROUP,
            groups * GROUP,
        )
        await conn.execute(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, content, created_at) "
            "SELECT 'dg-gm-' || g || '-' || k, 'dg-g-' || g, k, "
            "  $1::int + g * $2::int + (g * $2::int) / 9 + 1, "
            "  'read already', now() - interval '3 hours' + k * interval '1 minute' "
            "FROM generate_series(0, $3::int - 1) g, generate_series(1, 5) k",
            first,
            GROUP,
            groups,
        )
        await conn.execute(
            "INSERT INTO notification_settings (user_id, time_zone, email, email_verified_at, "
            "  email_digest, digest_covered_until, next_digest_at) "
            "SELECT $1::int + i, 'UTC', 'dg' || i || '@bench.test', now() - interval '1 day', "
            "  'daily', now() - interval '1 day', now() + interval '1 day' "
            "FROM generate_series(0, $2::int - 1) i",
            first,
            users,
        )
        for table in ("users", "conversations", "participants", "messages"):
            await conn.execute(f"ANALYZE {table}")
        await conn.execute("ANALYZE notification_settings")
    return time.monotonic() - started


async def _digest_run(bench: Bench, sink: CountingSink, expected: int) -> dict[str, Any]:
    """Make every period due; wait for the node to send them all."""
    assert bench.pool is not None
    before = sink.accepted
    started = time.monotonic()
    await bench.pool.execute(
        "UPDATE notification_settings SET next_digest_at = now() - interval '1 minute' "
        "WHERE email LIKE '%@bench.test'"
    )
    deadline = started + 180
    due_left, claimed_at = -1, 0.0
    # Polling: the count is kept by aiosmtpd's thread; bounded by the deadline.
    while time.monotonic() < deadline:
        if due_left != 0:
            due_left = await bench.pool.fetchval(
                "SELECT count(*) FROM notification_settings WHERE next_digest_at <= now()"
            )
            claimed_at = time.monotonic()
        if due_left == 0 and sink.accepted - before >= expected:
            break
        await asyncio.sleep(0.05)
    sent = sink.accepted - before
    seconds = max(sink.last_at if sent else time.monotonic(), claimed_at) - started
    return {"emails": sent, "seconds": round(seconds, 2), "due_left": due_left}


async def _reset(bench: Bench) -> None:
    """Put the cursors back and the schedule off: the same run can happen again."""
    assert bench.pool is not None
    await bench.pool.execute(
        "UPDATE notification_settings SET digest_covered_until = now() - interval '1 day', "
        "  next_digest_at = now() + interval '1 day' WHERE email LIKE '%@bench.test'"
    )


def _latency_spec(node: Any, a: dict[str, Any], b: dict[str, Any], cid: str, **kw: Any) -> Any:
    return {
        "scenario": "latency",
        "nodes": [node.info],
        "sender": a,
        "recipient": b,
        "conversation_id": cid,
        "count": 500,
        "warmup": 20,
        "max_seconds": 60,
        **kw,
    }


async def run(bench: Bench, quick: bool) -> dict[str, Any]:
    from bench.runner import Node, free_port

    assert bench.http is not None
    users, with_mail = QUICK if quick else FULL
    fill_seconds = await fill(bench, users, with_mail)

    sink = CountingSink()
    port = free_port()
    certs = tempfile.TemporaryDirectory(prefix="bench-smtp-")
    cert, key = self_signed(Path(certs.name))
    smtp = smtp_controller(sink, port, cert, key, accept_login(USERNAME, PASSWORD))
    smtp.start()
    try:
        env = bench.node_env()
        extra = {
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_starttls": "true",
            "smtp_username": USERNAME,
            "smtp_password": PASSWORD,
            "smtp_ca_file": str(cert),
            "email_from": "Messenger <noreply@bench.test>",
            "email_digest_interval_seconds": 0.5,
        }
        env.update({k.upper(): str(v) for k, v in extra.items()})
        node = Node("email-digests", env, bench.logs)
        bench.nodes.append(node)
        await node.start(bench.http)
        # Two pairs: the load generator's client_msg_ids start again at each run, and a
        # repeated one would be taken for a retry of the first.
        a, b, c, d = await bench.register(node, "dglat", 4)
        cid = await bench.conversation(node, a, [b])
        cid2 = await bench.conversation(node, c, [d])

        baseline = await bench.load(_latency_spec(node, a, b, cid), 90)
        alone = await _digest_run(bench, sink, with_mail)
        print(f"[bench] email_digests: run alone {alone}", file=sys.stderr, flush=True)

        await _reset(bench)
        # The latency load runs about as long as the run took alone, started just before.
        window = max(3.0, alone["seconds"])
        lg = await bench.start_loadgen(
            _latency_spec(node, c, d, cid2, count=1_000_000, warmup=0, max_seconds=window)
        )
        try:
            during_run = await _digest_run(bench, sink, with_mail)
            during = await lg.result(window + 60)
        finally:
            await lg.stop()
    finally:
        smtp.stop()
        certs.cleanup()
    p99 = during["delivery"]["p99_ms"]
    return {
        "users": users,
        "users_with_mail": with_mail,
        "fill_seconds": round(fill_seconds, 1),
        "run_alone": alone,
        "run_under_load": during_run,
        "emails_per_s": round(alone["emails"] / alone["seconds"]) if alone["seconds"] else 0,
        "latency_idle": baseline["delivery"],
        "latency_during_digests": during["delivery"],
        "under_60s": alone["seconds"] < 60 and alone["emails"] == with_mail,
        "smtp": "STARTTLS + AUTH",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "p99_under_50ms_during": p99 < 50,
    }
