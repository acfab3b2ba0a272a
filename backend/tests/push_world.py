"""All three push fakes at once, and the settings that point a node at them."""

from __future__ import annotations

import secrets
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import FakeFCM
from tests.fakes.webpush import FakePushService, VapidKeys, make_vapid_keys


@dataclass
class PushWorld:
    webpush: FakePushService
    fcm: FakeFCM
    apns: FakeAPNs
    settings: dict[str, Any]

    def reset(self) -> None:
        for fake in (self.webpush, self.fcm, self.apns):
            fake.reset()

    def fcm_token(self) -> str:
        return "fcm-" + secrets.token_urlsafe(24)

    def apns_token(self) -> str:
        return secrets.token_hex(32)

    def accepted(self, provider: str, token: str) -> list[Any]:
        """What the fake accepted (2xx) for this token."""
        fakes: dict[str, FakePushService | FakeFCM | FakeAPNs] = {
            "web_push": self.webpush,
            "fcm": self.fcm,
            "apns": self.apns,
        }
        fake = fakes[provider]
        return [r for r in fake.received_for(token) if 200 <= r.status < 300]


def provider_settings(
    vapid: VapidKeys, fcm: FakeFCM, apns: FakeAPNs, directory: Path
) -> dict[str, Any]:
    """The settings that point a node's three providers at these fakes."""
    return {
        "vapid_private_key": vapid.private_raw,
        "vapid_public_key": vapid.public,
        "vapid_subject": "mailto:ops@example.com",
        "web_push_allow_any_endpoint": True,
        "fcm_service_account_file": str(fcm.write_service_account(directory)),
        "fcm_endpoint": fcm.base_url,
        "apns_key_file": str(apns.write_key(directory)),
        "apns_key_id": apns.key_id,
        "apns_team_id": apns.team_id,
        "apns_topic": apns.topic,
        "apns_use_sandbox": True,
        "apns_endpoint": apns.endpoint,
        "apns_ca_file": str(apns.ca_file),
    }


async def start_push_world(stack: AsyncExitStack, directory: Path) -> PushWorld:
    vapid: VapidKeys = make_vapid_keys()
    webpush = await stack.enter_async_context(FakePushService(vapid.public))
    fcm = await stack.enter_async_context(FakeFCM(project_id="fake-project"))
    apns = await stack.enter_async_context(
        FakeAPNs(team_id="TEAM123456", key_id="KEY1234567", topic="com.example.messenger")
    )
    # Throttled answers ask for a one-second wait, so retries stay quick in tests.
    webpush.retry_after = fcm.retry_after = "1"
    settings = {
        **provider_settings(vapid, fcm, apns, directory),
        "push_timeout_seconds": 1.0,
        "push_max_attempts": 3,
        "push_backoff_base_seconds": 0.05,
        "push_backoff_max_seconds": 2.0,
    }
    return PushWorld(webpush, fcm, apns, settings)
