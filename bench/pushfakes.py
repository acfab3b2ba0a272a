"""The test suite's push provider fakes, timing each push they accept.

Same protocol checks as in the tests (VAPID signature and payload decryption, the FCM
OAuth flow and message validation, APNs' JWT over HTTP/2 and TLS); on top, each
accepted push notes time.time(), so the driver can measure commit to accepted.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import FakeFCM
from tests.fakes.webpush import FakePushService, make_vapid_keys
from tests.push_world import provider_settings


class TimedWebPush(FakePushService):
    def __init__(self, vapid_public_key: str) -> None:
        super().__init__(vapid_public_key)
        self.accepted_at: list[float] = []

    async def _push(self, request: web.Request) -> web.StreamResponse:
        response = await super()._push(request)
        if response.status == 201:
            self.accepted_at.append(time.time())
        return response

    def accepted_for(self, message_id: str) -> float | None:
        """When the first push of this message was accepted (received and accepted_at
        keep the same order: a 201 is recorded and timed with no wait in between)."""
        accepted = [r for r in self.received if r.status == 201]
        for record, at in zip(accepted, self.accepted_at, strict=False):
            data = (record.payload or {}).get("data") or {}
            if data.get("message_id") == message_id:
                return at
        return None


class TimedFCM(FakeFCM):
    def __init__(self, project_id: str) -> None:
        super().__init__(project_id)
        self.accepted_at: list[float] = []

    async def _send(self, request: web.Request) -> web.StreamResponse:
        response = await super()._send(request)
        if response.status == 200:
            self.accepted_at.append(time.time())
        return response


class TimedAPNs(FakeAPNs):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.accepted_at: list[float] = []

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, str | None] | None:
        answer = super().handle(headers, body)
        if answer is not None and answer[0] == 200:
            self.accepted_at.append(time.time())
        return answer


@dataclass
class Fakes:
    webpush: TimedWebPush
    fcm: TimedFCM
    apns: TimedAPNs
    settings: dict[str, Any]  # what points a node at them (Settings field names)

    def accepted(self) -> list[float]:
        return self.webpush.accepted_at + self.fcm.accepted_at + self.apns.accepted_at

    def clear(self) -> None:
        for fake in (self.webpush, self.fcm, self.apns):
            fake.accepted_at.clear()
            fake.received.clear()


async def start_fakes(stack: AsyncExitStack, directory: Path) -> Fakes:
    vapid = make_vapid_keys()
    webpush = await stack.enter_async_context(TimedWebPush(vapid.public))
    fcm = await stack.enter_async_context(TimedFCM("bench-project"))
    apns = await stack.enter_async_context(
        TimedAPNs(team_id="TEAM123456", key_id="KEY1234567", topic="com.example.messenger")
    )
    settings = provider_settings(vapid, fcm, apns, directory)
    return Fakes(webpush, fcm, apns, settings)
