"""What every push provider speaks: a device and a notification in, an outcome out.

One module per provider (webpush, fcm, apns), the way Matrix's Sygnal has one
"pushkin" each. A provider never raises for a delivery problem: it classifies it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class Outcome(StrEnum):
    DELIVERED = "delivered"  # the provider accepted it
    DEAD_TOKEN = "dead_token"  # the token or subscription is gone: deactivate the device
    RETRY = "retry"  # throttled, down, timed out: try again later
    FAILED = "failed"  # anything else: log it, do not retry
    # Not a provider's answer: delivery's, once every attempt said RETRY.
    GAVE_UP = "gave_up"


# How loudly a provider logs each outcome: a delivery is routine, a failure is not.
LOG_LEVEL = {
    Outcome.DELIVERED: logging.DEBUG,
    Outcome.DEAD_TOKEN: logging.INFO,
    Outcome.RETRY: logging.INFO,
    Outcome.FAILED: logging.WARNING,
}


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    user_id: int
    token: str
    platform: str  # "ios" | "android" | "web"
    provider: str  # "fcm" | "apns" | "web_push"


@dataclass(frozen=True, slots=True)
class Notification:
    """One message's notification for one recipient (the badge is theirs)."""

    title: str
    body: str
    # {type: "message.new", conversation_id, message_id, sender_id, seq}, JSON types kept.
    data: dict[str, Any]
    conversation_id: str
    message_id: str
    # The conversation's page in the web client.
    url: str
    badge: int | None = None


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    # Seconds the provider asked us to wait (Retry-After), when it said so.
    retry_after: float | None = None
    status: int | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    name: str  # "fcm" | "apns" | "web_push"

    async def start(self) -> None:
        """Create the long-lived client (inside the running loop)."""

    async def close(self) -> None: ...

    async def send(self, device: Device, notification: Notification) -> Result:
        """Deliver once, within the provider's timeout; classify any failure."""
        ...
