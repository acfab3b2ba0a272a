"""The `announcement` scenario: an admin's announcement to every user, timed, with the
ordinary message latency measured while it goes out.

100,000 users are written straight into the database (bench.insert_users), 50,000 of
them given a Web Push device on the fake service (straight into device_tokens), and
10,000 others hold a socket open in the load generator. A probe pair (two more users
in a direct conversation, both connected) measures send-to-`message.new` latency one
message at a time: idle first, then all through the announcement. The driver posts
the announcement (POST /api/v1/admin/announcements, to everyone), polls its progress
every 100 ms until `done`, and reports the time from the POST to done, its final
counters, the Web Push fake's accepted pushes, and both latency summaries.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from app.messenger.devices import device_key, normalise_token
from app.messenger.push.endpoints import EndpointPolicy
from bench.procstat import CpuWatch

if TYPE_CHECKING:
    from bench.runner import Bench

ANNOUNCEMENTS = "/api/v1/admin/announcements"
TARGET_SECONDS = 60.0
TARGET_P99_MS = 50.0


@dataclass(frozen=True)
class Sizes:
    users: int
    online: int
    web_push: int
    probes: int  # idle probe messages, after 20 for warm-up


FULL = Sizes(100_000, 10_000, 50_000, 200)
QUICK = Sizes(10_000, 1_000, 5_000, 50)


async def insert_web_push_devices(bench: Bench, user_ids: list[int]) -> None:
    """One Web Push device each, subscribed on the fake service."""
    assert bench.pool is not None and bench.fakes is not None
    policy = EndpointPolicy(allow_any=True)
    now = datetime.now(UTC)
    rows = []
    for user_id in user_ids:
        token = normalise_token("web_push", bench.fakes.webpush.subscribe(), policy)
        rows.append((str(uuid.uuid4()), user_id, token, device_key(token), now))
    await bench.pool.executemany(
        "INSERT INTO device_tokens (id, user_id, token, token_key, platform, provider, "
        "device_name, is_active, created_at, last_used_at) "
        "VALUES ($1, $2, $3, $4, 'web', 'web_push', 'bench', true, $5, $5)",
        rows,
    )


async def run(bench: Bench, quick: bool) -> dict[str, Any]:
    assert bench.pool is not None and bench.http is not None and bench.fakes is not None
    sizes = QUICK if quick else FULL
    t0 = time.monotonic()
    users = await bench.insert_users("ann", sizes.users)
    admin, sender, recipient = users[0], users[1], users[2]
    await bench.pool.execute("UPDATE users SET is_admin = true WHERE id = $1", admin["id"])
    listeners = users[3 : 3 + sizes.online]
    offline = users[3 + sizes.online :]
    await insert_web_push_devices(bench, [u["id"] for u in offline[: sizes.web_push]])
    seed_seconds = time.monotonic() - t0
    (node,) = await bench.start_nodes("a")
    conversation_id = await bench.conversation(node, sender, [recipient])
    lg = await bench.start_loadgen(
        {
            "scenario": "announcement",
            "nodes": [node.info],
            "listeners": listeners,
            "concurrency": 200,
            "max_connect_seconds": 120,
            "sender": sender,
            "recipient": recipient,
            "conversation_id": conversation_id,
            "probe": {"count": sizes.probes, "warmup": 20},
            "probe_gap_seconds": 0.02,
            "max_probe_seconds": 300,
            "max_total_seconds": 600,  # connecting, idle probes, then up to 300 s of sending
        }
    )
    ready = await lg.event(180)
    bench.fakes.clear()
    headers = {"Authorization": f"Bearer {admin['token']}"}
    body = {"title": "Maintenance tonight", "content": "The service is down 02:00-02:30 UTC."}
    started = time.monotonic()
    watch = CpuWatch(
        {
            "node": [node.info["pid"]],
            "driver": [os.getpid()],
            "loadgen": [lg.proc.pid] if lg.proc else [],
        },
        {"postgres": "postgres"},
    )
    watch.start(started)
    async with bench.http.post(f"{node.url}{ANNOUNCEMENTS}", json=body, headers=headers) as r:
        if r.status != 202:
            raise RuntimeError(f"announce: {r.status} {await r.text()}")
        announcement_id = (await r.json())["id"]
    report: dict[str, Any] = {}
    progress: list[tuple[float, int]] = []
    deadline = started + 300  # past the target: a slow run still reports when it finished
    while time.monotonic() < deadline and not bench.stopping:
        async with bench.http.get(
            f"{node.url}{ANNOUNCEMENTS}/{announcement_id}", headers=headers
        ) as r:
            report = await r.json()
        progress.append((round(time.monotonic() - started, 1), report.get("recipients", 0)))
        if report.get("status") != "sending":
            break
        await asyncio.sleep(0.1)
    done_seconds = time.monotonic() - started
    cpu = watch.stop(time.monotonic())
    lg.command("stop")
    result = await lg.result(60)
    await lg.stop()
    p99 = result["during_delivery"].get("p99_ms")
    return {
        "users": sizes.users,
        "online": ready.get("listeners"),
        "web_push_devices": sizes.web_push,
        "seed_seconds": round(seed_seconds, 1),
        "done_seconds": round(done_seconds, 2),
        "target_seconds": TARGET_SECONDS,
        "report": report,
        "web_push_accepted": len(bench.fakes.webpush.accepted_at),
        "announcement_frames": result["announcement_frames"],
        "idle_delivery": result["idle_delivery"],
        "during_delivery": result["during_delivery"],
        "during_ack": result["during_ack"],
        "during_failures": result["during_failures"],
        "target_p99_ms": TARGET_P99_MS,
        "met": bool(
            report.get("status") == "done"
            and done_seconds < TARGET_SECONDS
            and p99 is not None
            and p99 < TARGET_P99_MS
        ),
        "cpu_pct": cpu,
        "recipients_over_time": progress[:: max(1, len(progress) // 20)],
    }
