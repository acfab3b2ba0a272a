"""What every push provider speaks: a device and a notification in, an outcome out.

One module per provider (webpush, fcm, apns), the way Matrix's Sygnal has one
"pushkin" each. A provider never raises for a delivery problem: it classifies it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from app.locales import DEFAULT_LOCALE


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
    # The sign-in session it is bound to (None: registered before devices had one); an
    # action token names it, and is refused once that session ends.
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """What one device is pushed: a message's notification for its recipient (the
    badge is theirs), the push that takes a conversation's notifications down again
    ("clear"), or an operator's test. Built in push.notification, where the recipient's
    preview setting and language are already applied to title, body and data."""

    title: str
    body: str
    # Message: {type: "message.new", conversation_id, message_id, sender_id, seq}
    # (preview "none": no sender_id); clear: {type: "clear", conversation_id, seq}, and
    # a deleted message's clear adds {message_id, reason: "deleted"}.
    # JSON types kept; FCM turns the values into strings.
    data: dict[str, Any]
    conversation_id: str
    message_id: str  # a clear: "" after a read, the deleted message's id after a deletion
    # The conversation's page in the web client.
    url: str
    badge: int | None = None  # the recipient's unread total; None: leave the badge as is
    kind: str = "message"  # "message" | "clear" | "test"
    # Message: its seq. Clear: the conversation is read up to here.
    seq: int | None = None
    # Unread messages of the conversation this one notification stands for.
    count: int = 1
    preview: str = "full"  # "full" | "sender" | "none": what title/body/data show
    locale: str = DEFAULT_LOCALE  # the language of title, body and action labels
    # A signed URL of the message's first image's thumbnail (preview "full" only), that
    # the device fetches without a session (push.image_links).
    image: str | None = None
    # False in a read-only conversation (Announcements): no Reply action is offered.
    replyable: bool = True

    @property
    def ref(self) -> str:
        """What logs and stable per-device ids name it by: a message's id, the
        conversation and read mark of a clear, or the deleted message of its clear."""
        if self.kind == "clear":
            if self.message_id:
                return f"clear:{self.message_id}"
            return f"clear:{self.conversation_id}:{self.seq}"
        return self.message_id

    @property
    def topic(self) -> str:
        """What a provider's collapse id (Web Push Topic, FCM collapse_key) is made of:
        the conversation, so its next notification replaces this one while the device
        is away. A clear has one of its own (a deletion's clear, one per message): a
        clear never replaces a newer message push still waiting for the device, and a
        read's clear and a deletion's never replace each other."""
        if self.kind != "clear":
            return self.conversation_id
        return "clear:" + (self.message_id or self.conversation_id)


def fitted(
    notification: Notification, size: Callable[[Notification], int], limit: int
) -> Notification:
    """The notification with its body, then its title, cut short until `size` of it is
    within `limit` bytes (a provider's payload limit). Cut at characters, so the UTF-8
    stays whole; when nothing is left to cut it is returned as it is."""
    while (over := size(notification) - limit) > 0:
        if notification.body:
            notification = replace(notification, body=_cut(notification.body, over))
        elif notification.title:
            notification = replace(notification, title=_cut(notification.title, over))
        else:
            break
    return notification


def _cut(text: str, over: int) -> str:
    """`text` made at least `over` bytes shorter as JSON in UTF-8 (an escaped control
    character counts six), ending in an ellipsis; "" when that leaves nothing."""
    budget = _json_size(text) - over - len("…".encode())
    kept, used = 0, 0
    for char in text:
        used += _json_size(char)
        if used > budget:
            break
        kept += 1
    return text[:kept].rstrip() + "…" if kept else ""


def _json_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2  # without the quotes


def collapse_id(key: object) -> str:
    """A provider's collapse id (APNs apns-collapse-id, a Web Push Topic) for a
    conversation id: the same every time, so the conversation's next notification (or a
    second delivery of this one) replaces the one shown instead of showing twice. Every
    provider shows a conversation as one notification, whatever number of unread
    messages it stands for.

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
