"""Real nodes for the client's tests, and tools to watch a client's events.

A node is the server's own app served by uvicorn on a free port of 127.0.0.1, as the
server's tests start theirs (backend/tests/helpers.py); a `Proxy` in front of one lets
a test cut the network between a client and the node while the node stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from app.config import Settings
from app.main import create_app
from starlette.applications import Starlette

from messenger_client import Backoff, Client, Event, Message, MessageNew, User

SECRET = "client-test-secret-key-that-is-long-enough-0123456789"
PASSWORD = "correct horse battery"
# Fast reconnects, so a test does not wait on the backoff meant for real networks.
QUICK = Backoff(base=0.1, factor=2.0, cap=0.5)
# Every test client comes from 127.0.0.1 and makes users and logins by the dozen.
OPEN_LIMITS: dict[str, Any] = {
    "registration_rate_per_minute": 100_000,
    "registration_burst": 100_000,
    "login_rate_per_minute": 100_000,
    "login_burst": 100_000,
    "conversation_rate_per_minute": 100_000,
    "conversation_burst": 100_000,
    "device_registration_rate_per_minute": 100_000,
    "device_registration_burst": 100_000,
    "password_hash_queue": 10_000,
}


async def eventually(
    check: Callable[[], Any], within: float = 10.0, what: str = "condition"
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; that value."""
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
        await asyncio.sleep(0.02)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "secret_key": SECRET,
        "redis_url": "",
        "log_level": "WARNING",
        "password_profile": "CHEAPEST",
        "push_recovery_interval_seconds": 3600,
        **OPEN_LIMITS,
        **overrides,
    }
    return Settings(_env_file=None, **values)


@dataclass
class Node:
    settings: Settings
    app: Starlette
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 15)

    async def restart(self) -> Node:
        """Stop this node and serve a new one with the same settings on the same port."""
        await self.stop()
        return await start_node(self.settings, self.port)


MakeNode = Callable[..., Awaitable[Node]]


async def start_node(settings: Settings, port: int = 0) -> Node:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ws="websockets-sansio",  # as `python -m app` runs
        ws_max_size=settings.max_frame_bytes,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    def started() -> bool:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("the node exited before starting")
        return bool(server.started)

    await eventually(started, what="the node to start")
    bound = server.servers[0].sockets[0].getsockname()[1]
    return Node(settings, app, server, task, int(bound))


def new_username() -> str:
    return f"c{secrets.token_hex(6)}"


async def signed_in(url: str, name: str | None = None) -> Client:
    """A client of a fresh user, signed in."""
    client = Client(url, backoff=QUICK)
    username = name or new_username()
    await client.register(username, PASSWORD, display_name=username.title())
    await client.login(username, PASSWORD)
    return client


def me(client: Client) -> User:
    assert client.user is not None
    return client.user


@dataclass
class Recorder:
    """Everything a client's `events()` yields, kept in a list while the test runs."""

    client: Client
    events: list[Event] = field(default_factory=list)
    error: BaseException | None = None
    task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, client: Client) -> Recorder:
        recorder = cls(client)
        await client.connect()
        recorder.task = asyncio.create_task(recorder._run())
        return recorder

    async def _run(self) -> None:
        try:
            async for event in self.client.events():
                self.events.append(event)
        except Exception as exc:  # the test looks at it
            self.error = exc

    def messages(self, conversation_id: str) -> list[Message]:
        return [
            e.message
            for e in self.events
            if isinstance(e, MessageNew) and e.message.conversation_id == conversation_id
        ]

    async def wait_for(self, predicate: Callable[[Event], bool], what: str) -> Event:
        def found() -> Event | None:
            return next((e for e in self.events if predicate(e)), None)

        event: Event = await eventually(found, what=what)
        return event

    async def wait_contents(self, conversation_id: str, contents: list[str]) -> list[Message]:
        """Wait until the conversation's messages seen hold these contents (at least)."""

        def seen() -> bool:
            have = [m.content for m in self.messages(conversation_id)]
            return all(c in have for c in contents)

        await eventually(seen, what=f"messages {contents}")
        return self.messages(conversation_id)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class Proxy:
    """A TCP relay on 127.0.0.1 to a node: `cut()` drops every connection through it
    and refuses new ones (the network is gone), `resume()` listens again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # a reset, as a dead network shows it
        self._writers.clear()
        await self._server.wait_closed()

    async def resume(self) -> None:
        await self.start()

    async def stop(self) -> None:
        if self._server is not None and self._server.is_serving():
            await self.cut()
