"""What one master of a Redis Cluster carries: the calls the messenger makes on a cluster,
each run by redis-benchmark (100,000 calls, 50 clients) against the master that serves
one part of the key space, on a fresh 3-master, 3-replica cluster on loopback ports.

    .venv/bin/python -m bench.redis_shard      (from the repository root)

Writes bench/results/redis-shard-<time>.json: calls per second for each call, and the
memory one online user's presence takes on a master.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from app.messenger.redis_keys import load_lua  # noqa: E402
from tests.redis_cluster import RedisClusterServers  # noqa: E402

CALLS, CLIENTS = 100_000, 50
TAG = "{7}"  # one part, as the messenger names it (redis_keys.py)


async def measure() -> tuple[dict[str, float], float]:
    servers = RedisClusterServers()
    try:
        await servers.start()
        p = f"b:{TAG}"
        port = await servers.master_of(f"{p}nodes")
        now = load_lua("presence_now.lua")
        join = now + load_lua("presence_join.lua")
        async with servers.client(port) as r:
            sha = {
                "join": await r.script_load(join),
                "claims": await r.script_load(load_lua("fanout_claims.lua")),
                "rl": await r.script_load(load_lua("ratelimit.lua", "app")),
            }
            # 1,000 users of this part claimed by a node, so the lookups find something;
            # the memory they take is Redis's per online user.
            head = [f"{p}nodes", f"{p}seen", f"{p}o:", f"{p}u:", f"{p}n:x", "x", 90000]
            before = (await r.info("memory"))["used_memory"]
            await r.evalsha(sha["join"], 1, f"{p}nodes", *head, *range(7, 64_000, 64))
            bytes_per_user = ((await r.info("memory"))["used_memory"] - before) / 1000
        calls = {
            "presence_join_1_user": [
                *("EVALSHA", sha["join"], "1", f"{p}nodes", f"{p}nodes", f"{p}seen"),
                *(f"{p}o:", f"{p}u:", f"{p}n:y", "y", "90000", "__rand_int__"),
            ],
            "fanout_claims_10_users": [
                *("EVALSHA", sha["claims"], "1", f"{p}nodes", f"{p}u:"),
                *(str(u) for u in range(7, 640, 64)),
            ],
            "ratelimit_1_hit": [
                *("EVALSHA", sha["rl"], "1", f"{p}rl:k", "1700000000", "1 1000 1000;"),
            ],
            "spublish_200_bytes": ["SPUBLISH", f"b:node:{TAG}", "x" * 200],
        }
        out: dict[str, float] = {}
        for name, call in calls.items():
            result = subprocess.run(  # noqa: ASYNC221  (the measurement itself)
                [
                    *("redis-benchmark", "-p", str(port), "-n", str(CALLS)),
                    *("-c", str(CLIENTS), "-q", "--csv", *call),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            last = [line for line in result.stdout.splitlines() if line][-1]
            out[name] = float(last.split(",")[1].strip('"'))
        return out, bytes_per_user
    finally:
        servers.stop()


def main() -> None:
    figures, bytes_per_user = asyncio.run(measure())
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = ROOT / "bench" / "results" / f"redis-shard-{stamp}.json"
    path.parent.mkdir(exist_ok=True)
    report = {
        "started_at": stamp,
        "calls": CALLS,
        "clients": CLIENTS,
        "per_second": figures,
        "presence_bytes_per_online_user": bytes_per_user,
    }
    path.write_text(json.dumps(report, indent=2))
    for name, rate in figures.items():
        print(f"{name:28} {rate:>10,.0f} calls/s")
    print(f"{'presence bytes per online user':28} {bytes_per_user:>10,.0f}")
    print(f"written: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
