"""What a push says: a message's notification for one recipient's device, and the push
that takes a conversation's notifications down again. Deciding who gets one is
push.decision's job; speaking to a provider is the providers' (webpush, fcm, apns).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.messenger.push.base import Device, Notification

PREVIEW_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Recipient:
    """What a recipient's state and settings make of their notification."""

    user_id: int
    # Unread messages over all their conversations (the app icon's badge).
    badge: int | None = None
    # Unread messages of this conversation: one notification stands for all of them.
    unread_here: int = 1
    preview: str = "full"  # "full" | "sender" | "none"
    locale: str = "en"


def preview(content: str) -> str:
    flat = " ".join(content.split())
    return flat if len(flat) <= PREVIEW_LENGTH else flat[: PREVIEW_LENGTH - 1] + "…"


def message_notification(
    message: Mapping[str, Any],
    sender_name: str,
    title: str | None,
    base_url: str,
    recipient: Recipient,
    device: Device,
) -> Notification:
    """The notification of a new message for one device of a recipient."""
    conversation_id = message["conversation_id"]
    return Notification(
        title=f"{sender_name} • {title or sender_name}",
        body=preview(message["content"]),
        data={
            "type": "message.new",
            "conversation_id": conversation_id,
            "message_id": message["id"],
            "sender_id": message["sender_id"],
            "seq": message["seq"],
        },
        conversation_id=conversation_id,
        message_id=message["id"],
        url=f"{base_url}/?conversation={conversation_id}",
        badge=recipient.badge,
    )
