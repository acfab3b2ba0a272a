"""The benchmark driver: `python -m bench [--quick] [--scenarios latency,push,...]`.

It makes a fresh PostgreSQL database (migrated with Alembic, dropped at the end), a
Redis key prefix of its own, and the fake push providers (in this process); for each
scenario it starts the node(s) under test as `python -m app` processes and a load
generator process (`python -m bench.loadgen`) with real WebSocket clients. `two_nodes`
runs on a private `redis-server`, so that its INFO commandstats count that scenario's
commands alone. It prints a table and writes the same figures to
bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import secrets
import signal
import socket
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis
from argon2 import PasswordHasher, profiles

from app.auth import create_access_token
from app.messenger.devices import device_key, normalise_token
from app.messenger.push.endpoints import EndpointPolicy
from bench import BACKEND, ROOT, profile
from bench import admin_stats as admin_stats_scenario
from bench import announcement as announcement_scenario
from bench import email_digests as email_digests_scenario
from bench import scheduled as scheduled_scenario
from bench import search as search_scenario
from bench import uploads as uploads_scenario
from bench.procstat import CpuWatch, raise_fd_limit
from bench.pushfakes import Fakes, start_fakes
from bench.report import print_table, summarise
from bench.stats import summary_ms

PY = sys.executable
ALEMBIC = str(Path(sys.executable).parent / "alembic")
RESULTS = ROOT / "bench" / "results"
SECRET = "bench-secret-key-" + "x" * 32
PASSWORD = "bench password 123"
SCENARIOS = [
    "latency",
    "throughput",
    "fanout",
    "push",
    "push_web",
    "push_one",
    "connections",
    "two_nodes",
    "redis_outage",
    "search",
    "uploads",
    "admin_stats",
    "email_digests",
    "announcement",
    "scheduled",
]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of every scenario; --quick shrinks them."""

    latency_count: int = 500
    latency_warmup: int = 50
    pairs: int = 10  # 20 senders in 10 conversations
    window: int = 8  # messages in flight per sender, closed loop
    closed_seconds: float = 20.0
    closed_warmup: float = 2.0
    open_step_seconds: float = 5.0
    # Up until the first rate that fails, then one bisection between it and the last good.
    open_rates: tuple[int, ...] = (1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 15000)
    open_refine: int = 1
    p99_limit_ms: float = 50.0
    fanout_members: int = 100
    fanout_senders: int = 10
    fanout_window: int = 2
    fanout_seconds: float = 10.0
    push_members: int = 1000
    push_rounds: int = 3  # measured, after one warm-up round
    push_web_members: int = 1000  # push_web: every device on the Web Push fake (a full group)
    push_one_count: int = 300  # messages to one offline recipient, one at a time
    push_one_warmup: int = 20
    connections: int = 10_000
    idle_seconds: float = 25.0
    ping_interval: float = 25.0
    two_nodes_seconds: float = 10.0
    two_nodes_latency: int = 500
    # redis_outage: closed loop on one node; Redis is SIGKILLed, then started again.
    outage_before: float = 5.0
    outage_seconds: float = 5.0
    outage_after: float = 5.0


QUICK = Plan(
    latency_count=200,
    latency_warmup=20,
    closed_seconds=5.0,
    closed_warmup=1.0,
    open_step_seconds=2.0,
    open_rates=(1000, 2000, 4000, 8000),
    open_refine=0,
    fanout_seconds=4.0,
    push_members=300,
    push_rounds=2,
    push_web_members=300,
    push_one_count=100,
    push_one_warmup=10,
    connections=2000,
    idle_seconds=8.0,
    two_nodes_seconds=4.0,
    two_nodes_latency=200,
    outage_before=3.0,
    outage_seconds=4.0,
    outage_after=4.0,
)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the driver dies, so no node outlives a crashed run."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Node:
    """One `python -m app` process."""

    def __init__(
        self, name: str, env: dict[str, str], logs: Path, profile: Path | None = None
    ) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**env, "PORT": str(self.port), "NODE_ID": f"bench-{name}"}
        self.log = logs / f"node-{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.profile = profile  # where py-spy writes its samples, when profiling
        self.spy: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def info(self) -> dict[str, Any]:
        assert self.proc is not None
        return {"host": "127.0.0.1", "port": self.port, "pid": self.proc.pid}

    async def start(self, http: aiohttp.ClientSession) -> None:
        with open(self.log, "ab") as log:  # noqa: ASYNC230  (a local log file)
            self.proc = await asyncio.create_subprocess_exec(
                PY,
                "-m",
                "app",
                cwd=BACKEND,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"node {self.name} exited:\n{tail(self.log)}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"{self.url}/health") as r:
                    if r.status == 200:
                        break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"node {self.name} did not become healthy:\n{tail(self.log)}")
        if self.profile is not None:
            self.spy = await asyncio.create_subprocess_exec(
                *profile.command(self.proc.pid, self.profile),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self.spy is not None:  # py-spy writes its file when the node is gone
            try:
                await asyncio.wait_for(self.spy.wait(), 15)
            except TimeoutError:
                self.spy.kill()
            self.spy = None


class RedisServer:
    """A private `redis-server`, no persistence: its command counts are one scenario's."""

    def __init__(self, logs: Path) -> None:
        self.port = free_port()
        self.log = logs / f"redis-{self.port}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.client = aioredis.from_url(self.url)  # the driver's one connection to it

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        with open(self.log, "ab") as log:  # noqa: ASYNC230  (a local log file)
            self.proc = await asyncio.create_subprocess_exec(
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"redis-server exited:\n{tail(self.log)}")
            with contextlib.suppress(aioredis.ConnectionError):
                await self.client.ping()
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{tail(self.log)}")

    async def kill(self) -> None:
        """kill -9: no goodbye to its clients, and everything it held is gone."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def reset_stats(self) -> None:
        await self.client.config_resetstat()

    async def commands(self) -> dict[str, int]:
        """Calls per command since the last reset (those scripts run included), less the
        driver's own."""
        stats = await self.client.info("commandstats")
        own = {"info", "config|resetstat"}
        return {
            name.removeprefix("cmdstat_"): s["calls"]
            for name, s in stats.items()
            if name.removeprefix("cmdstat_") not in own
        }

    async def stop(self) -> None:
        await self.client.aclose()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class LoadGen:
    """One `python -m bench.loadgen` process: a spec in, JSON event lines out."""

    def __init__(self, logs: Path, name: str) -> None:
        self.logs = logs
        self.name = name
        self.log = logs / f"loadgen-{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, spec: dict[str, Any]) -> None:
        path = self.logs / f"spec-{self.name}.json"
        path.write_bytes(orjson.dumps(spec))
        with open(self.log, "ab") as log:  # noqa: ASYNC230  (a local log file)
            self.proc = await asyncio.create_subprocess_exec(
                PY,
                "-m",
                "bench.loadgen",
                str(path),
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=2**24,
                preexec_fn=_die_with_parent,
            )

    async def event(self, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            await self.proc.wait()
            raise RuntimeError(f"load generator exited:\n{tail(self.log)}")
        event = orjson.loads(line)
        if event.get("error"):
            raise RuntimeError(f"load generator failed: {event['error']}\n{tail(self.log)}")
        return event

    async def result(self, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while True:
            event = await self.event(max(1.0, deadline - time.monotonic()))
            if event["event"] == "result":
                event.pop("event")
                return event

    def command(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class Bench:
    def __init__(
        self, plan: Plan, workdir: Path, profile_dir: Path | None = None, redis: bool = True
    ) -> None:
        self.plan = plan
        self.redis = redis
        self.profile_dir = profile_dir
        self.scenario = ""
        self.stopping = False  # Ctrl-C or SIGTERM: finish nothing more, clean up
        self.logs = workdir
        self.run_id = f"{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(3)}"
        self.db_name = f"bench_{self.run_id}"
        self.db_url = f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{self.db_name}"
        self.redis_prefix = f"bench:{self.run_id}:"
        self.http: aiohttp.ClientSession | None = None
        self.fakes: Fakes | None = None
        self.nodes: list[Node] = []
        self.loadgens: list[LoadGen] = []
        self.redis_servers: list[RedisServer] = []
        self.pool: asyncpg.Pool | None = None
        self._password_hash = PasswordHasher.from_parameters(profiles.CHEAPEST).hash(PASSWORD)
        self._names = 0

    # -- the world around the scenarios ---------------------------------------------------

    async def setup(self, stack: contextlib.AsyncExitStack) -> None:
        admin = await asyncpg.connect(database="postgres", **PG)
        try:
            await admin.execute(f'CREATE DATABASE "{self.db_name}"')
        finally:
            await admin.close()
        stack.push_async_callback(self.drop_database)
        migrate = await asyncio.create_subprocess_exec(
            ALEMBIC,
            "upgrade",
            "head",
            cwd=BACKEND,
            env={**os.environ, "DATABASE_URL": self.db_url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await migrate.communicate()
        if migrate.returncode != 0:
            raise RuntimeError(f"alembic upgrade head failed:\n{out.decode()}")
        self.pool = await asyncpg.create_pool(database=self.db_name, min_size=1, max_size=4, **PG)
        stack.push_async_callback(self.pool.close)
        stack.push_async_callback(self.clean_redis)
        self.fakes = await start_fakes(stack, self.logs)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        stack.push_async_callback(self.http.close)
        stack.push_async_callback(self.stop_processes)

    async def drop_database(self) -> None:
        admin = await asyncpg.connect(database="postgres", **PG)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def clean_redis(self) -> None:
        client = aioredis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=f"{self.redis_prefix}*", count=1000)]
            for i in range(0, len(keys), 1000):
                await client.delete(*keys[i : i + 1000])
        finally:
            await client.aclose()

    def node_env(self, redis_url: str = REDIS_URL) -> dict[str, str]:
        assert self.fakes is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
        settings = {
            "database_url": self.db_url,
            "redis_url": redis_url if self.redis else "",
            "redis_prefix": self.redis_prefix,
            "secret_key": SECRET,
            "host": "127.0.0.1",
            "password_profile": "CHEAPEST",
            "log_level": os.environ.get("BENCH_NODE_LOG_LEVEL", "WARNING"),
            "send_rate_per_second": 100_000,
            "send_burst": 100_000,
            # Every bench user is registered, logged in and given conversations from one
            # address: the public defaults of these limits would throttle the set-up.
            "registration_rate_per_minute": 1_000_000,
            "registration_burst": 1_000_000,
            "login_rate_per_minute": 1_000_000,
            "login_burst": 1_000_000,
            "conversation_rate_per_minute": 1_000_000,
            "conversation_burst": 1_000_000,
            "search_rate_per_minute": 1_000_000,  # the search scenario searches back to back
            "search_burst": 1_000_000,
            "password_hash_queue": 10_000,
            **self.fakes.settings,
        }
        for key, value in settings.items():
            env[key.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    async def start_nodes(self, *names: str, redis_url: str = REDIS_URL) -> list[Node]:
        assert self.http is not None
        nodes = [
            Node(
                name,
                self.node_env(redis_url),
                self.logs,
                self.profile_dir / f"{self.scenario}-{name}.txt" if self.profile_dir else None,
            )
            for name in names
        ]
        self.nodes += nodes
        for node in nodes:
            await node.start(self.http)
        return nodes

    async def stop_processes(self) -> None:
        for lg in self.loadgens:
            await lg.stop()
        for node in self.nodes:
            await node.stop()
        for server in self.redis_servers:
            await server.stop()
        self.loadgens.clear()
        self.nodes.clear()
        self.redis_servers.clear()

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: end the processes now (what waits on them fails at once), run
        no further scenario; the database and Redis keys are still cleaned up."""
        if self.stopping:
            return
        self.stopping = True
        print("\n[bench] interrupted: stopping and cleaning up", file=sys.stderr, flush=True)
        for lg in self.loadgens:
            if lg.proc is not None and lg.proc.returncode is None:
                lg.proc.terminate()
        for node in self.nodes:
            if node.proc is not None and node.proc.returncode is None:
                node.proc.send_signal(signal.SIGINT)

    async def load(self, spec: dict[str, Any], timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        """Run one load generator to its result."""
        lg = await self.start_loadgen(spec)
        try:
            return await lg.result(timeout)
        finally:
            await lg.stop()

    async def start_redis(self) -> RedisServer:
        server = RedisServer(self.logs)
        self.redis_servers.append(server)
        await server.start()
        return server

    async def start_loadgen(self, spec: dict[str, Any]) -> LoadGen:
        lg = LoadGen(self.logs, spec["scenario"])
        self.loadgens.append(lg)
        spec = {"driver_pid": os.getpid(), "max_total_seconds": 280, **spec}
        await lg.start(spec)
        return lg

    # -- users, conversations, devices ----------------------------------------------------

    def _username(self, prefix: str) -> str:
        self._names += 1
        return f"{prefix}{self._names}"

    async def register(self, node: Node, prefix: str, n: int) -> list[dict[str, Any]]:
        """Users made the way a client makes them: register, then log in (REST)."""
        assert self.http is not None
        limit = asyncio.Semaphore(8)

        async def one() -> dict[str, Any]:
            name = self._username(prefix)
            body = {"username": name, "password": PASSWORD, "display_name": name.title()}
            async with limit:
                async with self.http.post(f"{node.url}/api/v1/auth/register", json=body) as r:
                    if r.status != 201:
                        raise RuntimeError(f"register: {r.status} {await r.text()}")
                login = {"username": name, "password": PASSWORD}
                async with self.http.post(f"{node.url}/api/v1/auth/login", json=login) as r:
                    if r.status != 200:
                        raise RuntimeError(f"login: {r.status} {await r.text()}")
                    data = await r.json()
            return {"id": data["user"]["id"], "token": data["access_token"]}

        return list(await asyncio.gather(*(one() for _ in range(n))))

    async def insert_users(self, prefix: str, n: int) -> list[dict[str, Any]]:
        """Many users at once, straight into the database (one argon2 hash for all), with
        tokens signed as a login signs them."""
        assert self.pool is not None
        names = [self._username(prefix) for _ in range(n)]
        rows = await self.pool.fetch(
            "INSERT INTO users (username, display_name, password_hash, created_at) "
            "SELECT u, initcap(u), $2, now() FROM unnest($1::text[]) AS u RETURNING id",
            names,
            self._password_hash,
        )
        # One session each, as a login opens (no refresh token: its hash matches none).
        ids = [r["id"] for r in rows]
        session_ids = [str(uuid.uuid4()) for _ in ids]
        await self.pool.execute(
            "INSERT INTO sessions (id, user_id, refresh_hash, created_at, last_used_at, "
            "expires_at) SELECT s, u, '', now(), now(), now() + interval '1 day' "
            "FROM unnest($1::text[], $2::int[]) AS t(s, u)",
            session_ids,
            ids,
        )
        return [
            {"id": u, "token": create_access_token(u, SECRET, 24 * 3600, session_id=s)}
            for u, s in zip(ids, session_ids, strict=True)
        ]

    async def conversation(
        self, node: Node, owner: dict[str, Any], others: list[dict[str, Any]], title: str = ""
    ) -> str:
        assert self.http is not None
        body: dict[str, Any] = {
            "type": "group" if title else "direct",
            "participant_ids": [u["id"] for u in others],
        }
        if title:
            body["title"] = title
        headers = {"Authorization": f"Bearer {owner['token']}"}
        async with self.http.post(
            f"{node.url}/api/v1/messenger/conversations", json=body, headers=headers
        ) as r:
            if r.status not in (200, 201):
                raise RuntimeError(f"conversation: {r.status} {await r.text()}")
            return (await r.json())["id"]

    async def pairs(self, node: Node, prefix: str) -> list[dict[str, Any]]:
        """2 x pairs users, each pair in a direct conversation (20 senders in 10)."""
        users = await self.register(node, prefix, 2 * self.plan.pairs)
        for i in range(0, len(users), 2):
            cid = await self.conversation(node, users[i], [users[i + 1]])
            users[i]["conversation_id"] = users[i + 1]["conversation_id"] = cid
        return users

    async def insert_devices(
        self, users: list[dict[str, Any]], providers: tuple[str, ...] = ("web_push", "fcm", "apns")
    ) -> dict[str, int]:
        """One device each, the providers in turn, registered with the fakes."""
        assert self.pool is not None and self.fakes is not None
        now = datetime.now(UTC)
        rows = []
        counts = {"web_push": 0, "fcm": 0, "apns": 0}
        for i, user in enumerate(users):
            provider = providers[i % len(providers)]
            if provider == "web_push":
                token = normalise_token(
                    "web_push", self.fakes.webpush.subscribe(), EndpointPolicy(allow_any=True)
                )
                platform_ = "web"
            elif provider == "fcm":
                token, platform_ = "fcm-" + secrets.token_urlsafe(24), "android"
            else:
                token, platform_ = secrets.token_hex(32), "ios"
            counts[provider] += 1
            rows.append(
                (
                    str(uuid.uuid4()),
                    user["id"],
                    token,
                    device_key(token),
                    platform_,
                    provider,
                    "bench",
                    True,
                    now,
                    now,
                )
            )
        await self.pool.executemany(
            "INSERT INTO device_tokens (id, user_id, token, token_key, platform, provider, "
            "device_name, is_active, created_at, last_used_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            rows,
        )
        return counts

    # -- the scenarios --------------------------------------------------------------------

    async def latency(self) -> dict[str, Any]:
        p = self.plan
        (node,) = await self.start_nodes("a")
        a, b = await self.register(node, "lat", 2)
        cid = await self.conversation(node, a, [b])
        spec = {
            "scenario": "latency",
            "nodes": [node.info],
            "sender": a,
            "recipient": b,
            "conversation_id": cid,
            "count": p.latency_count,
            "warmup": p.latency_warmup,
            "max_seconds": 60,
        }
        return await self.load(spec, 90)

    async def throughput(self) -> dict[str, Any]:
        p = self.plan
        (node,) = await self.start_nodes("a")
        users = await self.pairs(node, "tp")
        spec = {
            "scenario": "throughput",
            "nodes": [node.info],
            "dsn": self.db_url,
            "users": users,
            "closed": {"window": p.window, "warmup": p.closed_warmup, "seconds": p.closed_seconds},
            "open": {
                "rates": list(p.open_rates),
                "step_seconds": p.open_step_seconds,
                "refine": p.open_refine,
                "p99_limit_ms": p.p99_limit_ms,
            },
        }
        return await self.load(spec, 200)

    async def fanout(self) -> dict[str, Any]:
        p = self.plan
        (node,) = await self.start_nodes("a")
        members = await self.register(node, "fan", p.fanout_members)
        cid = await self.conversation(node, members[0], members[1:], title="Fan-out")
        spec = {
            "scenario": "fanout",
            "nodes": [node.info],
            "members": members,
            "conversation_id": cid,
            "senders": p.fanout_senders,
            "window": p.fanout_window,
            "warmup": 1.0,
            "seconds": p.fanout_seconds,
        }
        return await self.load(spec, 90)

    async def push(self) -> dict[str, Any]:
        return await self.pushes(self.plan.push_members, ("web_push", "fcm", "apns"))

    async def push_web(self) -> dict[str, Any]:
        """push with every device on the Web Push fake, and more of them: the provider's
        own rate, and the node's CPU per push (encryption, VAPID, HTTP)."""
        return await self.pushes(self.plan.push_web_members, ("web_push",))

    async def pushes(self, members: int, kinds: tuple[str, ...]) -> dict[str, Any]:
        p = self.plan
        assert self.fakes is not None
        (node,) = await self.start_nodes("a")
        users = await self.insert_users("push", members)
        sender, recipients = users[0], users[1:]
        cid = await self.conversation(node, sender, recipients, title="Everyone")
        providers = await self.insert_devices(recipients, kinds)
        expected = len(recipients)
        lg = await self.start_loadgen(
            {
                "scenario": "push",
                "nodes": [node.info],
                "sender": sender,
                "conversation_id": cid,
                "rounds": 1 + p.push_rounds,
            }
        )
        rounds = []
        for r in range(1 + p.push_rounds):
            self.fakes.clear()
            watch = CpuWatch(
                {"node": [node.info["pid"]], "driver": [os.getpid()]},
                {"postgres": "postgres", "redis": "redis-server"},
            )
            started = time.monotonic()
            watch.start(started)
            # The node's CPU for the whole round: the pushes, then their outcomes recorded.
            whole = CpuWatch({"node": [node.info["pid"]]}, {})
            whole.start(started)
            lg.command("send")
            acked = await lg.event(30)
            commit = datetime.fromisoformat(acked["message"]["created_at"]).timestamp()
            deadline = time.monotonic() + 30
            # Polling the fakes' counters (5 ms: small next to the figure), bounded.
            while (  # noqa: ASYNC110
                len(self.fakes.accepted()) < expected
                and time.monotonic() < deadline
                and not self.stopping
            ):
                await asyncio.sleep(0.005)
            cpu = watch.stop(time.monotonic())
            accepted = sorted(self.fakes.accepted())
            after = [t - commit for t in accepted]
            done = after[-1] if after else float("nan")
            rounds.append(
                {
                    "warmup": r == 0,
                    "accepted": len(accepted),
                    "expected": expected,
                    "done_s": round(done, 3),
                    "first_s": round(after[0], 3) if after else None,
                    "pushes_per_s": round(len(accepted) / done) if after and done > 0 else 0,
                    "commit_to_accepted": summary_ms(after),
                    "ack_after_commit_ms": round((acked["ack_wall"] - commit) * 1000, 2),
                    "cpu_pct": cpu,
                }
            )
            await asyncio.sleep(1.0)  # the node records outcomes and deletes the jobs
            ended = time.monotonic()
            node_cpu_s = whole.stop(ended)["node"] / 100 * (ended - started)
            rounds[-1]["node_cpu_ms_per_push"] = (
                round(1000 * node_cpu_s / len(accepted), 3) if accepted else None
            )
        lg.command("stop")
        await lg.result(10)
        await lg.stop()
        measured = [r for r in rounds if not r["warmup"]]
        return {
            "members": members,
            "devices": providers,
            "rounds": rounds,
            "done_s": [r["done_s"] for r in measured],
            "pushes_per_s": [r["pushes_per_s"] for r in measured],
            "node_cpu_ms_per_push": [r["node_cpu_ms_per_push"] for r in measured],
        }

    async def push_one(self) -> dict[str, Any]:
        """Commit to accepted for one offline recipient with one Web Push device, one
        message at a time on an otherwise idle node: the push path's own latency."""
        p = self.plan
        assert self.fakes is not None
        (node,) = await self.start_nodes("a")
        sender, recipient = await self.insert_users("one", 2)
        cid = await self.conversation(node, sender, [recipient])
        await self.insert_devices([recipient])  # the first provider in turn: Web Push
        total = p.push_one_warmup + p.push_one_count
        lg = await self.start_loadgen(
            {
                "scenario": "push_one",
                "nodes": [node.info],
                "sender": sender,
                "conversation_id": cid,
                "rounds": total,
            }
        )
        self.fakes.clear()
        watch = CpuWatch(
            {"node": [node.info["pid"]], "driver": [os.getpid()]},
            {"postgres": "postgres", "redis": "redis-server"},
        )
        after: list[float] = []
        missing = 0
        for r in range(total):
            if self.stopping:
                break
            if r == p.push_one_warmup:
                watch.start(time.monotonic())
            lg.command("send")
            acked = await lg.event(30)
            message = acked["message"]
            commit = datetime.fromisoformat(message["created_at"]).timestamp()
            # The fake notes the time it accepted the push: polling only has to see it.
            deadline = time.monotonic() + 10
            while (  # noqa: ASYNC110
                (at := self.fakes.webpush.accepted_for(message["id"])) is None
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.001)
            if at is None:
                missing += 1
            elif r >= p.push_one_warmup:
                after.append(at - commit)
            # The node records the outcome (batched for up to 50 ms) and deletes the job
            # before the next message: each is pushed by an otherwise idle node.
            await asyncio.sleep(0.075)
        cpu = watch.stop(time.monotonic()) if after else {}
        lg.command("stop")
        await lg.result(10)
        await lg.stop()
        return {
            "messages": len(after),
            "warmup": p.push_one_warmup,
            "missing": missing,
            "commit_to_accepted": summary_ms(after),
            "cpu_pct": cpu,
        }

    async def connections(self) -> dict[str, Any]:
        p = self.plan
        users = await self.insert_users("conn", p.connections)
        (node,) = await self.start_nodes("a")
        spec = {
            "scenario": "connections",
            "nodes": [node.info],
            "users": users,
            "concurrency": 200,
            "ping_interval": p.ping_interval,
            "idle_seconds": p.idle_seconds,
            "max_connect_seconds": 150,
        }
        return await self.load(spec, 260)

    async def two_nodes(self) -> dict[str, Any]:
        p = self.plan
        assert self.pool is not None
        redis = await self.start_redis()
        a, b = await self.start_nodes("a", "b", redis_url=redis.url)
        users = await self.pairs(a, "two")
        for i, user in enumerate(users):
            user["node"] = i % 2  # each conversation has one user on each node
        spec = {
            "scenario": "two_nodes",
            "nodes": [a.info, b.info],
            "users": users,
            "latency": {"count": p.two_nodes_latency, "warmup": 20, "max_seconds": 60},
            "closed": {"window": p.window, "warmup": 1.0, "seconds": p.two_nodes_seconds},
        }
        before = await self.pool.fetchval("SELECT count(*) FROM messages")
        await redis.reset_stats()
        result = await self.load(spec, 120)
        commands = await redis.commands()
        messages = await self.pool.fetchval("SELECT count(*) FROM messages") - before
        result["redis"] = redis_per_message(commands, messages)
        return result

    async def redis_outage(self) -> dict[str, Any]:
        """A node's own users under a closed loop while its Redis is SIGKILLed, then
        started again (empty): acked messages per second before, during and after."""
        p = self.plan
        redis = await self.start_redis()
        (node,) = await self.start_nodes("a", redis_url=redis.url)
        users = await self.pairs(node, "out")
        total = p.outage_before + p.outage_seconds + p.outage_after
        lg = await self.start_loadgen(
            {
                "scenario": "redis_outage",
                "nodes": [node.info],
                "users": users,
                "window": p.window,
                "warmup": 1.0,
                "max_seconds": total + 30,
            }
        )
        await lg.event(30)  # running, warmed up

        def watch() -> CpuWatch:
            return CpuWatch(
                {"node": [node.info["pid"]], "driver": [os.getpid()]},
                {"postgres": "postgres", "redis": "redis-server"},
            )

        phases: dict[str, tuple[float, float]] = {}
        cpu: dict[str, dict[str, float]] = {}
        for phase, seconds in (("before", p.outage_before), ("during", p.outage_seconds)):
            w = watch()
            if phase == "during":
                await redis.kill()
            t0 = time.time()
            w.start(time.monotonic())
            await asyncio.sleep(seconds)
            cpu[phase] = w.stop(time.monotonic())
            phases[phase] = (t0, time.time())
        await redis.start()  # empty, on the same port
        t0 = time.time()
        await asyncio.sleep(p.outage_after)
        phases["after"] = (t0, time.time())
        lg.command("stop")
        result = await lg.result(30)
        await lg.stop()
        bucket = result.pop("bucket_seconds")
        acks = result.pop("acks")
        errors = result.pop("error_frames")

        def rate(series: list[list[int]], start: float, end: float) -> float:
            counted = sum(n for b, n in series if start <= b * bucket < end)
            return round(counted / (end - start), 1)

        for phase, (start, end) in phases.items():
            result[phase] = {
                "seconds": round(end - start, 2),
                "acked_per_s": rate(acks, start, end),
                "error_frames_per_s": rate(errors, start, end),
                **({"cpu_pct": cpu[phase]} if phase in cpu else {}),
            }
        before = result["before"]["acked_per_s"]
        result["during_over_before"] = (
            round(result["during"]["acked_per_s"] / before, 3) if before else None
        )
        return result

    async def search(self) -> dict[str, Any]:
        """Message search over a large history (bench/search.py)."""
        return await search_scenario.run(self, quick=self.plan is QUICK)

    async def uploads(self) -> dict[str, Any]:
        """Upload and download throughput, and an upload's memory (bench/uploads.py)."""
        return await uploads_scenario.run(self, quick=self.plan is QUICK)

    async def admin_stats(self) -> dict[str, Any]:
        """The admin statistics over a year of push records (bench/admin_stats.py)."""
        return await admin_stats_scenario.run(self, quick=self.plan is QUICK)

    async def email_digests(self) -> dict[str, Any]:
        """A daily digest run for many users over local SMTP (bench/email_digests.py)."""
        return await email_digests_scenario.run(self, quick=self.plan is QUICK)

    async def scheduled(self) -> dict[str, Any]:
        """Scheduled messages all due in the same second (bench/scheduled.py)."""
        return await scheduled_scenario.run(self, quick=self.plan is QUICK)

    async def announcement(self) -> dict[str, Any]:
        """An announcement to every user while messages flow (bench/announcement.py)."""
        return await announcement_scenario.run(self, quick=self.plan is QUICK)

    async def run(self, names: list[str]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            await self.setup(stack)
            for name in names:
                if self.stopping:
                    break
                started = time.monotonic()
                print(f"[bench] {name} ...", file=sys.stderr, flush=True)
                scenario: Callable[[], Awaitable[dict[str, Any]]] = getattr(self, name)
                self.scenario = name
                try:
                    results[name] = await scenario()
                except Exception as exc:
                    if self.stopping:
                        results[name] = {"error": "interrupted"}
                    else:
                        traceback.print_exc()
                        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                finally:
                    await self.stop_processes()
                results[name]["wall_seconds"] = round(time.monotonic() - started, 1)
                print(
                    f"[bench] {name} done in {results[name]['wall_seconds']} s",
                    file=sys.stderr,
                    flush=True,
                )
        return results


def redis_per_message(commands: dict[str, int], messages: int) -> dict[str, Any]:
    """Redis commands per message persisted, over the whole load: connects, warm-up, the
    latency probes, the closed loop and the disconnects."""
    total = sum(commands.values())
    return {
        "messages": messages,
        "commands": total,
        "per_message": round(total / messages, 2) if messages else None,
        "by_command": {
            name: round(calls / messages, 3)
            for name, calls in sorted(commands.items(), key=lambda kv: -kv[1])
        }
        if messages
        else {},
        "calls": commands,
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="shorter runs, fewer users (about a minute)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, in this order: {','.join(SCENARIOS)}",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the node(s) with py-spy (pip install py-spy) and print the top functions",
    )
    parser.add_argument(
        "--logs", type=Path, help="keep the nodes' and load generators' logs in this directory"
    )
    parser.add_argument(
        "--no-redis",
        action="store_true",
        help="nodes without Redis (in-process presence, fan-out and flood control), to see "
        "what Redis costs; two_nodes and redis_outage need Redis and are skipped",
    )
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    needs_redis = ("two_nodes", "redis_outage")
    args.names = [s for s in SCENARIOS if s in names and not (args.no_redis and s in needs_redis)]
    return args


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else Plan()
    started = time.monotonic()
    profile_dir = None
    if args.profile:
        profile_dir = args.out / f"profile-{time.strftime('%Y%m%d-%H%M%S')}"
        profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        logs = Path(workdir)
        if args.logs:
            logs = args.logs
            logs.mkdir(parents=True, exist_ok=True)
        bench = Bench(plan, logs, profile_dir, redis=not args.no_redis)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bench.interrupt)
        scenarios = await bench.run(args.names)
    if profile_dir is not None:
        for raw in sorted(profile_dir.glob("*.txt")):
            summary = profile.top(raw)
            scenarios.setdefault(raw.stem.rsplit("-", 1)[0], {}).setdefault("profile", {})[
                raw.stem
            ] = summary
            profile.print_top(raw.stem, summary)
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "redis": not args.no_redis,
        "machine": machine(),
        "plan": plan.__dict__,
        "wall_seconds": round(time.monotonic() - started, 1),
        "scenarios": scenarios,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # 10,000 sockets: the node (which inherits this) and the load generator need the fds.
    raise_fd_limit(20_000)
    report = asyncio.run(amain(args))
    rows = summarise(report)
    report["summary"] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report, rows)
    print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
