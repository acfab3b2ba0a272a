"""Starting real nodes on free ports and talking to them as a client would."""

from __future__ import annotations

import asyncio
import inspect
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx2
import orjson
import uvicorn
import websockets
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from app.config import Settings
from app.db import utcnow
from app.logs import install_redaction
from app.main import create_app
from app.messenger.models import PushJob
from tests import schema_check

SECRET = "test-secret-key-that-is-long-enough-0123456789"
# Every test client comes from 127.0.0.1 and makes users, logins, conversations and
# devices by the dozen: the public defaults would throttle the suite. A test of a limit
# sets it low again.
OPEN_LIMITS: dict[str, Any] = {
    "registration_rate_per_minute": 100_000,
    "registration_burst": 100_000,
    "login_rate_per_minute": 100_000,
    "login_burst": 100_000,
    "conversation_rate_per_minute": 100_000,
    "conversation_burst": 100_000,
    "device_registration_rate_per_minute": 100_000,
    "device_registration_burst": 100_000,
    "search_rate_per_minute": 100_000,
    "search_burst": 100_000,
    "bot_creations_per_day": 100_000,
    "webhook_address_rate_per_minute": 100_000,
    "webhook_address_burst": 100_000,
    "webhook_conversation_rate_per_minute": 100_000,
    "webhook_conversation_burst": 100_000,
    "password_hash_queue": 10_000,
}


async def eventually(
    check: Callable[[], Any], within: float = 10.0, what: str = "condition", every: float = 0.02
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; that value.

    The one way a test waits for something that happens in the background: fails with
    `what` and the last value seen once `within` seconds have passed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {result!r})")
        await asyncio.sleep(every)


def iso_from_now(seconds: float) -> str:
    """The time `seconds` from now, as a request names a due time (ISO 8601, UTC)."""
    return (utcnow() + timedelta(seconds=seconds)).isoformat()


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "secret_key": SECRET,
        "redis_url": "",
        "log_level": "WARNING",
        "password_profile": "CHEAPEST",
        "push_recovery_interval_seconds": 3600,
        # Many test nodes share one PostgreSQL (max_connections 100): small pools.
        "database_pool_size": 4,
        "database_max_overflow": 8,
        **OPEN_LIMITS,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class Node:
    app: Starlette
    server: uvicorn.Server
    task: asyncio.Task
    url: str

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    @property
    def services(self) -> Any:
        return self.app.state.services

    def handlers(self) -> set[asyncio.Task]:
        """The ASGI handlers running now: one per open socket and per request in flight."""
        return set(self.server.server_state.tasks)

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 15)


async def start_node(settings: Settings, port: int = 0) -> Node:
    """A node on 127.0.0.1: on a free port, or on `port` (to restart one in place)."""
    install_redaction()  # as `python -m app` does
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ws="websockets-sansio",  # as `python -m app` runs
        ws_per_message_deflate=False,
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=settings.websocket_ping_interval_seconds,
        ws_ping_timeout=settings.websocket_ping_timeout_seconds,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    def started() -> bool:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("server exited before starting")
        return server.started

    await eventually(started, what="the server to start", every=0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return Node(app, server, task, f"http://127.0.0.1:{port}")


@dataclass
class User:
    id: int
    username: str
    token: str
    display_name: str
    refresh_token: str = ""
    session_id: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Client:
    """A REST client bound to one node."""

    node: Node
    http: httpx2.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx2.AsyncClient(
            base_url=self.node.url, timeout=30, event_hooks=schema_check.EVENT_HOOKS
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def user(self, name: str | None = None, display_name: str | None = None) -> User:
        username = name or f"u{secrets.token_hex(5)}"
        body = {"username": username, "password": "correct horse battery"}
        if display_name:
            body["display_name"] = display_name
        r = await self.http.post("/api/v1/auth/register", json=body)
        assert r.status_code == 201, r.text
        r = await self.http.post(
            "/api/v1/auth/login", json={"username": username, "password": "correct horse battery"}
        )
        assert r.status_code == 200, r.text
        data = r.json()
        return User(
            data["user"]["id"],
            username,
            data["access_token"],
            data["user"]["display_name"],
            data["refresh_token"],
            data["session_id"],
        )

    async def conversation(self, owner: User, *others: User, title: str | None = None) -> dict:
        kind = "direct" if len(others) == 1 and title is None else "group"
        body: dict[str, Any] = {"type": kind, "participant_ids": [u.id for u in others]}
        if title is not None:
            body["title"] = title
        r = await self.http.post(
            "/api/v1/messenger/conversations", json=body, headers=owner.headers
        )
        assert r.status_code in (200, 201), r.text
        return r.json()

    async def send(
        self, user: User, conversation_id: str, content: str, **extra: Any
    ) -> httpx2.Response:
        return await self.http.post(
            f"/api/v1/messenger/conversations/{conversation_id}/messages",
            json={"content": content, **extra},
            headers=user.headers,
        )

    async def messages(self, user: User, conversation_id: str, **params: Any) -> list[dict]:
        r = await self.http.get(
            f"/api/v1/messenger/conversations/{conversation_id}/messages",
            params=params,
            headers=user.headers,
        )
        assert r.status_code == 200, r.text
        return r.json()["messages"]


class Socket:
    """A real WebSocket client that sorts what arrives by frame type."""

    def __init__(
        self, ws: websockets.ClientConnection, handlers: set[asyncio.Task] | None = None
    ) -> None:
        self.ws = ws
        # The node's handlers that started while this socket connected (in-process nodes
        # only): its own, when nothing else connected to that node at the same time.
        self.handlers = handlers

    @classmethod
    async def connect(cls, node: Any, user: User) -> Socket:
        before = node.handlers() if isinstance(node, Node) else None
        ws = await websockets.connect(f"{node.ws_url}?token={user.token}", max_size=2**24)
        handlers = node.handlers() - before if before is not None else None
        return cls(ws, handlers)

    async def send(self, frame: dict | str | bytes) -> None:
        await self.ws.send(
            frame if isinstance(frame, (str, bytes)) else orjson.dumps(frame).decode()
        )

    async def recv(self, timeout: float = 5.0) -> dict:  # noqa: ASYNC109
        return orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def expect(self, type_: str, timeout: float = 5.0, **match: Any) -> dict:  # noqa: ASYNC109
        """The next frame of this type (and matching fields), skipping others."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame.get("type") == type_ and all(frame.get(k) == v for k, v in match.items()):
                return frame

    async def first(
        self,
        type_: str,
        unwanted: str,
        timeout: float = 5.0,  # noqa: ASYNC109
        **match: Any,
    ) -> dict:
        """The next frame of this type (and matching fields), asserting that no frame of
        the type `unwanted` came before it (with unwanted == type_: none that does not match).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame.get("type") == type_ and all(frame.get(k) == v for k, v in match.items()):
                return frame
            assert frame.get("type") != unwanted, frame

    async def nothing(self, type_: str) -> None:
        """Assert that no frame of this type comes before the answer to a ping sent now.

        The node answers a ping after every frame it queued for this socket before: those
        it serves from memory, and those it has already taken from Redis. A frame that
        would come from another node is ruled out by a marker on that frame's path instead:
        a later frame published by that same node (see `first`).
        """
        await self.send({"type": "ping"})
        await self.first("pong", unwanted=type_)

    async def close(self) -> None:
        await self.ws.close()

    async def hang_up(self) -> None:
        """Close, and wait until the node is done with the socket: its handler has returned,
        so whatever the close makes the node send (presence) is sent or queued for Redis."""
        assert self.handlers, "hang_up needs a socket to an in-process node"
        await self.ws.close()
        await eventually(
            lambda: all(task.done() for task in self.handlers or ()),
            what="the node to finish with the closed socket",
        )


async def push_job_of(engine: AsyncEngine, message_id: str) -> PushJob | None:
    """The pending push job that holds the message, if any."""
    async with engine.connect() as conn:
        jobs = (await conn.execute(select(PushJob))).all()
    return next((job for job in jobs if message_id in job.message_ids), None)
