"""What every push provider speaks: a device and a notification in, an outcome out.

One module per provider (webpush, fcm, apns), the way Matrix's Sygnal has one
"pushkin" each. A provider never raises for a delivery problem: it classifies it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
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
    Outcome.GAVE_UP: logging.WARNING,
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


def collapse_id(key: object) -> str:
    """A provider's collapse id (APNs apns-collapse-id, a Web Push Topic) for a message or
    conversation id: the same every time, so a second delivery replaces the first instead
    of showing twice. Each provider collapses by what it shows as one notification: APNs
    a message (grouped by thread-id), Android and browsers a conversation (their tag).

    32 URL-safe characters: a Web Push Topic's limit (RFC 8030 5.4), within APNs' 64 bytes.
    """
    text = str(key)
    try:
        return uuid.UUID(text).hex
    except ValueError:
        digest = hashlib.sha256(text.encode()).digest()[:24]
        return base64.urlsafe_b64encode(digest).decode()


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
