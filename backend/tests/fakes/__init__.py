"""Local fakes of the push services, speaking their real protocols on 127.0.0.1.

Each fake checks what the real service checks, answers what it answers, and records
what it received so a test can assert on it. What it answers is scripted per token:
`fake.script(token, Mode.THROTTLED, Mode.OK)` answers 429 once, then succeeds; the
last mode of a script repeats; `fake.modes.default` answers every other token.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Any

from aiohttp import web

from app.messenger.push.base import Device, Notification, Provider


class Mode(StrEnum):
    OK = "ok"
    DEAD = "dead"  # unsubscribed / unregistered token
    BAD_TOKEN = "bad_token"  # a token the service cannot parse
    THROTTLED = "throttled"  # 429 with Retry-After
    DOWN = "down"  # 503
    HANG = "hang"  # never answers
    # The Web Push fake only: answers a push service must never get followed or read.
    REDIRECT = "redirect"  # 307 to a plain-http URL of the fake
    GZIP_BOMB = "gzip_bomb"  # 400 with a 100 KB gzip body that inflates to 100 MB
    ENDLESS = "endless"  # 201 with a body that never ends


class Script:
    """The answers a fake gives, per token."""

    def __init__(self) -> None:
        self._by_token: dict[str, deque[Mode]] = {}
        self.default = Mode.OK

    def set(self, token: str, *modes: Mode) -> None:
        self._by_token[token] = deque(modes or (Mode.OK,))

    def next(self, token: str) -> Mode:
        modes = self._by_token.get(token)
        if not modes:
            return self.default
        return modes.popleft() if len(modes) > 1 else modes[0]

    def reset(self) -> None:
        self._by_token.clear()
        self.default = Mode.OK


class AiohttpFake:
    """Base of the HTTP/1.1 fakes: an aiohttp server on a free port of 127.0.0.1."""

    retry_after = "7"  # what THROTTLED answers in Retry-After

    def __init__(self) -> None:
        self.app = web.Application()
        self.modes = Script()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, token: str, *modes: Mode) -> None:
        self.modes.set(token, *modes)

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(self.app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self._stopping.set()  # releases the HANG handlers
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def hang(self) -> web.Response:
        """Never answer (until released, or the fake stops)."""
        await self._stopping.wait()
        return web.Response(status=503)

    def release_hanging(self) -> None:
        """Answer the requests hanging now (503); later HANG requests hang again."""
        self._stopping.set()
        self._stopping = asyncio.Event()

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def free_port() -> int:
    """A port nothing listens on (for 'connection refused')."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_notification(**overrides: Any) -> Notification:
    """A notification as the push service builds it (data keeps its JSON types)."""
    conversation_id = overrides.pop("conversation_id", str(uuid.uuid4()))
    message_id = overrides.pop("message_id", str(uuid.uuid4()))
    fields: dict[str, Any] = {
        "title": "Alice • Project chat",
        "body": "See you at 10 — don't be late",
        "data": {
            "type": "message.new",
            "conversation_id": conversation_id,
            "message_id": message_id,
            "sender_id": 42,
            "seq": 7,
        },
        "conversation_id": conversation_id,
        "message_id": message_id,
        "url": f"http://127.0.0.1:8000/?conversation={conversation_id}",
        "badge": 3,
        "seq": 7,
    }
    fields.update(overrides)
    return Notification(**fields)


def sample_device(provider: str, token: str, platform: str = "") -> Device:
    platform = platform or {"fcm": "android", "apns": "ios", "web_push": "web"}[provider]
    return Device(
        id=str(uuid.uuid4()), user_id=1, token=token, platform=platform, provider=provider
    )


@contextlib.asynccontextmanager
async def provider_maker(
    build: Callable[..., Provider],
) -> AsyncIterator[Callable[..., Awaitable[Provider]]]:
    """`make(**overrides)` builds and starts a provider; every one made is closed after."""
    started: list[Provider] = []

    async def make(**overrides: Any) -> Provider:
        provider = build(**overrides)
        await provider.start()
        started.append(provider)
        return provider

    try:
        yield make
    finally:
        for provider in started:
            await provider.close()
