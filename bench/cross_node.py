"""Cross-node delivery: message.send on node 1 to message.new on node 2.

Starts a private redis-server, a fresh PostgreSQL database and two real nodes
(`python -m app`), sends messages one at a time from alice (node 1) to bob (a socket on
node 2 and one on node 1), and prints the latency and the Redis commands per message
(INFO commandstats on the private Redis, so nothing else is counted).

    .venv/bin/python bench/cross_node.py [--messages 1000] [--deadline 120]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx2
import orjson
import websockets
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "backend"
sys.path.insert(0, str(BACKEND))
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
SECRET = secrets.token_urlsafe(48)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def create_database() -> tuple[str, str]:
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.migrations import upgrade

    name = f"bench_cross_node_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(database="postgres", **PG)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(upgrade)
    await engine.dispose()
    return name, url


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(database="postgres", **PG)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def start_redis(port: int) -> subprocess.Popen:
    """A private Redis: its command counts are this benchmark's alone."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--logfile", ""]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def start_node(database_url: str, redis_url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": SECRET,
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "SEND_RATE_PER_SECOND": "1000000",  # the limiter still runs (and is counted)
        "SEND_BURST": "1000000",
        "PUSH_RECOVERY_INTERVAL_SECONDS": "3600",
    }
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=BACKEND, env=env)
    return process, f"http://127.0.0.1:{port}"


async def wait_healthy(url: str, process: subprocess.Popen) -> None:
    async with httpx2.AsyncClient(base_url=url, timeout=2) as http:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"node {url} exited with {process.returncode}")
            with contextlib.suppress(httpx2.TransportError):
                if (await http.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"node {url} did not start")


async def user(http: httpx2.AsyncClient, name: str) -> dict:
    body = {
        "username": f"{name}{secrets.token_hex(3)}",
        "password": "correct horse battery",
    }
    r = await http.post("/api/v1/auth/register", json=body)
    r.raise_for_status()
    r = await http.post("/api/v1/auth/login", json=body)
    r.raise_for_status()
    return r.json()


async def connect(url: str, token: str) -> websockets.ClientConnection:
    ws = await websockets.connect(url.replace("http", "ws") + f"/ws?token={token}")
    await ws.send('{"type":"ping"}')
    while orjson.loads(await ws.recv())["type"] != "pong":
        pass
    return ws


async def receive(ws: websockets.ClientConnection, arrived: dict[str, asyncio.Future]) -> None:
    """Timestamp each message.new by its client_msg_id as it arrives."""
    async for raw in ws:
        now = time.perf_counter()
        frame = orjson.loads(raw)
        if frame["type"] == "message.new":
            future = arrived.get(frame["message"]["client_msg_id"])
            if future is not None and not future.done():
                future.set_result(now)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(messages: int) -> None:
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    redis_server = start_redis(redis_port)
    db_name, db_url = await create_database()
    nodes = [start_node(db_url, redis_url) for _ in range(2)]
    tasks: list[asyncio.Task] = []
    try:
        for process, url in nodes:
            await wait_healthy(url, process)
        (_, url1), (_, url2) = nodes
        async with httpx2.AsyncClient(base_url=url1, timeout=10) as http:
            alice, bob = await user(http, "alice"), await user(http, "bob")
            r = await http.post(
                "/api/v1/messenger/conversations",
                json={"type": "direct", "participant_ids": [bob["user"]["id"]]},
                headers={"Authorization": f"Bearer {alice['access_token']}"},
            )
            r.raise_for_status()
            conversation = r.json()["id"]
        sender = await connect(url1, alice["access_token"])
        remote = await connect(url2, bob["access_token"])
        local = await connect(url1, bob["access_token"])
        arrived_remote: dict[str, asyncio.Future] = {}
        arrived_local: dict[str, asyncio.Future] = {}
        tasks = [
            asyncio.create_task(receive(remote, arrived_remote)),
            asyncio.create_task(receive(local, arrived_local)),
            asyncio.create_task(receive(sender, {})),  # acks: read and dropped
        ]
        loop = asyncio.get_running_loop()

        async def one(i: int) -> tuple[float, float]:
            client_msg_id = f"b{i}"
            arrived_remote[client_msg_id] = loop.create_future()
            arrived_local[client_msg_id] = loop.create_future()
            frame = {
                "type": "message.send",
                "conversation_id": conversation,
                "content": f"message {i}",
                "client_msg_id": client_msg_id,
            }
            start = time.perf_counter()
            await sender.send(orjson.dumps(frame).decode())
            remote_at = await asyncio.wait_for(arrived_remote[client_msg_id], 10)
            local_at = await asyncio.wait_for(arrived_local[client_msg_id], 10)
            del arrived_remote[client_msg_id], arrived_local[client_msg_id]
            return (remote_at - start) * 1000, (local_at - start) * 1000

        for i in range(50):  # warm-up: connections, caches, scripts
            await one(-i - 1)
        async with Redis.from_url(redis_url, decode_responses=True) as r:
            await r.config_resetstat()
            results = [await one(i) for i in range(messages)]
            stats = await r.info("commandstats")
        remote_ms = [a for a, _ in results]
        local_ms = [b for _, b in results]
        commands = {
            name.removeprefix("cmdstat_"): s["calls"]
            for name, s in stats.items()
            if name not in {"cmdstat_info", "cmdstat_config|resetstat"}
        }
        total = sum(commands.values())
        print(f"messages: {messages}, one at a time, alice on node 1 -> bob on node 2 and 1")
        for label, values in (
            ("node 1 -> node 2", remote_ms),
            ("node 1 -> node 1", local_ms),
        ):
            print(
                f"{label}: median {statistics.median(values):.2f} ms, "
                f"p99 {percentile(values, 99):.2f} ms, max {max(values):.2f} ms"
            )
        extra = [a - b for a, b in results]
        print(
            f"node 2 after node 1's own socket: median {statistics.median(extra):.2f} ms, "
            f"p99 {percentile(extra, 99):.2f} ms (what the Redis hop adds)"
        )
        per_message = ", ".join(
            f"{name} {calls / messages:.2f}" for name, calls in sorted(commands.items())
        )
        print(f"redis commands per message: {total / messages:.2f} ({per_message})")
        print("  (commandstats also counts the commands a script runs: the rate limiter's")
        print("   EVALSHA runs a GET and a SET; round trips per message: EVALSHA, one")
        print("   pipeline of PUBLISH per participant, one MGET for the push decision)")
    finally:
        for task in tasks:
            task.cancel()
        for process, _ in nodes:
            process.terminate()
        for process, _ in nodes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        redis_server.kill()
        redis_server.wait()
        await drop_database(db_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--deadline", type=float, default=120, help="give up after (s)")
    args = parser.parse_args()
    asyncio.run(asyncio.wait_for(run(min(args.messages, 100_000)), args.deadline))


if __name__ == "__main__":
    main()
