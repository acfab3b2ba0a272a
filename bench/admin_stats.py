"""The `admin_stats` scenario: GET /api/v1/admin/stats?days=30 over a year of push records.

10,000,000 push_attempts (one per device delivery of 1,000,000 messages, ten devices
each, spread evenly over the last 365 days), 2,000,000 push_decisions and 3,000,000
notifications (40 % opened) and 50,000 devices are written straight into the bench
database with INSERT ... SELECT generate_series. Then the statistics rollup runs once
(app/admin_stats.run_rollup, as a node's rollup loop does on its first round: every
day before today), and one node serves the stats: 50 requests one after the other
(after 5 for warm-up) for 30 days, and 20 for 365, each timed from request to complete
answer. Today is always computed from raw rows (about 27,000 deliveries), the rest
read from push_stats_daily. Target: days=30 under 200 ms.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.admin_stats import run_rollup
from app.config import normalise_database_url
from app.db import make_engine
from bench.stats import summary_ms

if TYPE_CHECKING:
    from bench.runner import Bench

STATS = "/api/v1/admin/stats"
CONVERSATIONS = 1000
DEVICES_PER_MESSAGE = 10


@dataclass(frozen=True)
class Sizes:
    attempts: int
    decisions: int
    notifications: int
    devices: int
    requests: int  # timed, for days=30
    year_requests: int  # timed, for days=365
    warmup: int


FULL = Sizes(10_000_000, 2_000_000, 3_000_000, 50_000, 50, 20, 5)
QUICK = Sizes(1_000_000, 200_000, 300_000, 5_000, 20, 5, 3)
BATCH = 1_000_000


async def fill(bench: Bench, sizes: Sizes, user_ids: list[int]) -> float:
    """The year of push records; the seconds it took."""
    assert bench.pool is not None
    started = time.monotonic()
    messages = sizes.attempts // DEVICES_PER_MESSAGE
    async with bench.pool.acquire() as conn:
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute(
            "INSERT INTO conversations (id, type, title, created_by, created_at, last_seq) "
            "SELECT 'adm-' || i, 'group', 'topic', $1::int, now() - interval '400 days', $2::int "
            "FROM generate_series(0, $3::int - 1) AS i",
            user_ids[0],
            messages // CONVERSATIONS + 1,
            CONVERSATIONS,
        )
        # Message j at start + j * step: one a little over every 30 s, for a year.
        await conn.execute(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, content, created_at) "
            "SELECT 'adm-m-' || j, 'adm-' || (j % $1::int), j / $1::int + 1, $2::int, 'hello', "
            "  now() - interval '365 days' + j * (interval '365 days' / $3::int) "
            "FROM generate_series(0, $3::int - 1) AS j",
            CONVERSATIONS,
            user_ids[0],
            messages,
        )
        _progress("messages", 1, 1)
        # Delivery i is of message i / 10, recorded 20 ms to about 3 s after it; 3 % fail,
        # 1 % find the token dead, a few give up.
        for first in range(0, sizes.attempts, BATCH):
            await conn.execute(
                "INSERT INTO push_attempts (message_id, device_id, user_id, provider, outcome, "
                "  attempts, latency_ms, created_at, conversation_id, seq) "
                "SELECT 'adm-m-' || (i / $1::int), 'adm-d-' || (i % $5::int), "
                "  ($2::int[])[1 + i % cardinality($2::int[])], "
                "  (ARRAY['fcm', 'apns', 'web_push'])[1 + i % 3], "
                "  CASE WHEN r < 0.03 THEN 'failed' WHEN r < 0.04 THEN 'dead_token' "
                "       WHEN r < 0.045 THEN 'gave_up' ELSE 'delivered' END, "
                "  1, 20 + r * 100, "
                "  now() - interval '365 days' + (i / $1::int) * (interval '365 days' / $3::int) "
                "    + (20 + 3000 * r * r) * interval '1 millisecond', "
                "  'adm-' || ((i / $1::int) % $6::int), (i / $1::int) / $6::int + 1 "
                "FROM (SELECT i, random() AS r "
                "      FROM generate_series($4::int, $4::int + $7::int - 1) AS i) AS s",
                DEVICES_PER_MESSAGE,
                user_ids,
                messages,
                first,
                sizes.devices,
                CONVERSATIONS,
                min(BATCH, sizes.attempts - first),
            )
            _progress("push_attempts", first + BATCH, sizes.attempts)
        await conn.execute(
            "INSERT INTO push_decisions (user_id, conversation_id, message_id, first_seq, "
            "  last_seq, reason, created_at) "
            "SELECT ($1::int[])[1 + k % cardinality($1::int[])], 'adm-' || (k % $4::int), "
            "  NULL, 1, 1, "
            "  (ARRAY['sent', 'sent', 'sent', 'online', 'online', 'muted', 'notify_level', "
            "    'quiet_hours', 'read_before_delay', 'no_device'])[1 + k % 10], "
            "  now() - interval '365 days' + k * (interval '365 days' / $2::int) "
            "FROM generate_series(0, $3::int - 1) AS k",
            user_ids,
            sizes.decisions,
            sizes.decisions,
            CONVERSATIONS,
        )
        _progress("push_decisions", 1, 1)
        # Notification k: message k / 3, one of three users (unique per user and message).
        await conn.execute(
            "INSERT INTO notifications (id, user_id, kind, conversation_id, message_id, title, "
            "  body, created_at, opened_at, opened_how) "
            "SELECT 'adm-n-' || k, ($1::int[])[1 + k % cardinality($1::int[])], 'message', "
            "  'adm-' || ((k / 3) % $4::int), 'adm-m-' || (k / 3), 't', 'b', t, "
            "  CASE WHEN r < 0.4 THEN t + r * r * interval '10 hours' END, "
            "  CASE WHEN r < 0.4 THEN 'click' END "
            "FROM (SELECT k, random() AS r, now() - interval '365 days' "
            "        + (k / 3) * (interval '365 days' / $2::int) AS t "
            "      FROM generate_series(0, $3::int - 1) AS k) AS s",
            user_ids,
            messages,
            sizes.notifications,
            CONVERSATIONS,
        )
        _progress("notifications", 1, 1)
        await conn.execute(
            "INSERT INTO device_tokens (id, user_id, token, token_key, platform, provider, "
            "  is_active, created_at, last_used_at) "
            "SELECT 'adm-d-' || d, ($1::int[])[1 + d % cardinality($1::int[])], 'tok' || d, "
            "  'adm-key-' || d, 'android', (ARRAY['fcm', 'apns', 'web_push'])[1 + d % 3], "
            "  d % 20 <> 0, now() - interval '365 days' + d * (interval '365 days' / $2::int), "
            "  now() - random() * interval '120 days' "
            "FROM generate_series(0, $2::int - 1) AS d",
            user_ids,
            sizes.devices,
        )
        for table in ("messages", "push_attempts", "push_decisions", "notifications"):
            await conn.execute(f"VACUUM ANALYZE {table}")
        await conn.execute("ANALYZE device_tokens")
    return time.monotonic() - started


def _progress(what: str, done: int, total: int) -> None:
    share = min(done, total) * 100 // total
    print(f"[bench] admin_stats: {what} {share} % written", file=sys.stderr, flush=True)


async def _timed(bench: Bench, url: str, headers: dict[str, str], n: int, warmup: int) -> Any:
    assert bench.http is not None
    timings: list[float] = []
    for i in range(warmup + n):
        started = time.perf_counter()
        async with bench.http.get(url, headers=headers) as r:
            body = await r.json()
            if r.status != 200:
                raise RuntimeError(f"admin stats: {r.status} {body}")
        if i >= warmup:
            timings.append(time.perf_counter() - started)
    return summary_ms(timings), body


async def run(bench: Bench, quick: bool) -> dict[str, Any]:
    assert bench.pool is not None
    sizes = QUICK if quick else FULL
    users = await bench.insert_users("stat", 1000)
    admin = users[0]
    await bench.pool.execute("UPDATE users SET is_admin = true WHERE id = $1::int", admin["id"])
    fill_seconds = await fill(bench, sizes, [u["id"] for u in users])

    engine = make_engine(normalise_database_url(bench.db_url))
    try:
        started = time.monotonic()
        report = await run_rollup(engine)
        rollup_seconds = time.monotonic() - started
    finally:
        await engine.dispose()
    rollup_rows = await bench.pool.fetchval("SELECT count(*) FROM push_stats_daily")

    (node,) = await bench.start_nodes("a")
    headers = {"Authorization": f"Bearer {admin['token']}"}
    month, body = await _timed(
        bench, f"{node.url}{STATS}?days=30", headers, sizes.requests, sizes.warmup
    )
    year, _ = await _timed(
        bench, f"{node.url}{STATS}?days=365", headers, sizes.year_requests, sizes.warmup
    )
    today = body["series"][-1]
    return {
        "push_attempts": sizes.attempts,
        "push_decisions": sizes.decisions,
        "notifications": sizes.notifications,
        "fill_seconds": round(fill_seconds, 1),
        "rollup_days": report.days,
        "rollup_seconds": round(rollup_seconds, 1),
        "rollup_rows": rollup_rows,
        "today_pushes": today["pushes_total"],
        "days_30": month,
        "days_365": year,
        "days_30_under_200ms": month["p95_ms"] < 200,
    }
