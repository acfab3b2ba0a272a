"""Several nodes against one PostgreSQL and one Redis, for the cluster tests.

A private redis-server (which a test may stop and start again on the same port), nodes
in this process with a key prefix of their own, and nodes run as real processes so a
test can kill -9 them.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from redis.asyncio import Redis

from tests import schema_check
from tests.fakes import free_port
from tests.helpers import (
    OPEN_LIMITS,
    SECRET,
    Node,
    Socket,
    User,
    eventually,
    make_settings,
    start_node,
)

BACKEND = Path(__file__).resolve().parents[1]


class RedisServer:
    """A redis-server of our own, on a free port, that keeps nothing on disk."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Redis:
        return Redis.from_url(self.url, decode_responses=True)

    async def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: ASYNC220  (starts at once; we wait below)
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", "/tmp", "--logfile", ""),
            ],
            stdout=subprocess.DEVNULL,
        )

        async def answers() -> bool:
            try:
                return await client.ping()
            except Exception:  # not listening yet
                return False

        async with self.client() as client:
            await eventually(answers, what=f"redis-server on {self.port} to answer", every=0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class ProcessNode:
    """A node run as `python -m app`, as an operator runs it."""

    url: str
    process: subprocess.Popen

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def kill(self) -> None:
        """kill -9: no shutdown, no goodbye to Redis."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@dataclass
class Cluster:
    database_url: str
    redis_url: str
    prefix: str = field(default_factory=lambda: f"t{secrets.token_hex(4)}:")
    nodes: list[Node] = field(default_factory=list)
    processes: list[ProcessNode] = field(default_factory=list)

    async def node(self, **overrides: Any) -> Node:
        settings = make_settings(
            self.database_url, redis_url=self.redis_url, redis_prefix=self.prefix, **overrides
        )
        node = await start_node(settings)
        self.nodes.append(node)
        return node

    async def process_node(self, **env: Any) -> ProcessNode:
        port = free_port()
        environ = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "REDIS_PREFIX": self.prefix,
            "SECRET_KEY": SECRET,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": "WARNING",
            "PUSH_RECOVERY_INTERVAL_SECONDS": "3600",
            **{k.upper(): str(v) for k, v in {**OPEN_LIMITS, **env}.items()},
        }
        command = [sys.executable, "-m", "app"]
        process = subprocess.Popen(command, cwd=BACKEND, env=environ)  # noqa: ASYNC220
        node = ProcessNode(f"http://127.0.0.1:{port}", process)
        self.processes.append(node)

        async def healthy() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"node exited with {process.returncode}")
            try:
                return (await http.get("/health")).status_code == 200
            except httpx2.TransportError:
                return False

        async with httpx2.AsyncClient(
            base_url=node.url, timeout=2, event_hooks=schema_check.EVENT_HOOKS
        ) as http:
            await eventually(healthy, within=30.0, what="the node process to start", every=0.1)
        return node

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url, decode_responses=True)

    def channel(self, node: Node) -> str:
        """The node's own channel, where other nodes publish the frames for its sockets."""
        return f"{self.prefix}node:{node.services.settings.node_id}"

    async def subscribed(self, *nodes: Node) -> bool:
        """Whether each of these nodes listens on its channel."""
        async with self.redis() as r:
            counts = dict(await r.pubsub_numsub(*(self.channel(n) for n in nodes)))
        return all(counts[self.channel(n)] == 1 for n in nodes)

    async def close(self) -> None:
        for process in self.processes:
            process.kill()
        for node in reversed(self.nodes):
            await node.stop()


async def connect(node: Any, user: User) -> Socket:
    """A socket the node has fully registered (subscribed, presence counted)."""
    socket = await Socket.connect(node, user)
    await socket.send({"type": "ping"})
    await socket.expect("pong")
    return socket


def send_frame(conversation_id: str, content: str, client_msg_id: str | None = None) -> dict:
    return {
        "type": "message.send",
        "conversation_id": conversation_id,
        "content": content,
        "client_msg_id": client_msg_id or secrets.token_hex(8),
    }
