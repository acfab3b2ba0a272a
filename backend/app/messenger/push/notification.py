"""What a push says: a message's notification for one recipient's device, and the push
that takes a conversation's notifications down again. Deciding who gets one is
push.decision's job; speaking to a provider is the providers' (webpush, fcm, apns).

One notification stands for all of a conversation's unread messages: every provider
shows it in the conversation's place (tag, collapse id, thread), so the next one
replaces it and says how many there are. The recipient's preview setting decides how
much of the message leaves the server: its text ("full"), only who wrote it
("sender"), or nothing but ids ("none": the payload passes through Google's and
Apple's servers, and lands on a lock screen).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.locales import DEFAULT_LOCALE
from app.messenger.push import texts
from app.messenger.push.base import Device, Notification
from app.messenger.push.image_links import is_image

PREVIEW_LENGTH = 200
# "<sender> • <conversation>": display names and titles are short, but a payload is
# not the place for all of a 128 + 200 character pair.
TITLE_LENGTH = 120
PREVIEWS = ("full", "sender", "none")


@dataclass(frozen=True, slots=True)
class Recipient:
    """What a recipient's state and settings make of their notification."""

    user_id: int
    # Unread messages over all their conversations (the app icon's badge).
    badge: int | None = None
    # Unread messages of this conversation: one notification stands for all of them.
    unread_here: int = 1
    preview: str = "full"  # "full" | "sender" | "none"
    locale: str = DEFAULT_LOCALE


def preview(content: str, length: int = PREVIEW_LENGTH) -> str:
    """One line of at most `length` characters: whitespace runs (newlines included)
    become one space, control and format characters go."""
    flat = " ".join(content.split())
    if not flat.isprintable():  # rare: look at each character, of a bounded stretch
        flat = " ".join("".join(c for c in flat[: length * 4] if c.isprintable()).split())
    return flat if len(flat) <= length else flat[: length - 1].rstrip() + "…"


def message_notification(
    message: Mapping[str, Any],
    sender_name: str,
    title: str | None,
    base_url: str,
    recipient: Recipient,
    device: Device,
    image: str | None = None,
    replyable: bool = True,
) -> Notification:
    """The notification of a new message (the latest unread of its conversation) for
    one device of a recipient. `image`, a signed URL of its thumbnail, is shown only
    where its text would be (preview "full"); `replyable` is False for a conversation
    nobody may send into (an announcement's)."""
    conversation_id = str(message["conversation_id"])
    locale = texts.locale_of(recipient.locale)
    mode = recipient.preview if recipient.preview in PREVIEWS else "none"
    count = max(1, recipient.unread_here)
    data: dict[str, Any] = {
        "type": "message.new",
        "conversation_id": conversation_id,
        "message_id": message["id"],
        "sender_id": message["sender_id"],
        "seq": message["seq"],
    }
    if mode == "none":
        # Ids only: the service worker or app fetches the message itself, signed in.
        del data["sender_id"]
        heading = texts.text(locale, "hidden_title", count)
        body = texts.text(locale, "hidden_body", count)
    else:
        heading = preview(f"{sender_name} • {title or sender_name}", TITLE_LENGTH)
        if mode == "sender":
            body = (
                texts.text(locale, "new_messages", count)
                if count > 1
                else texts.text(locale, "new_message")
            )
        else:
            line = preview(str(message["content"])) or attachments_line(
                locale, message.get("attachments")
            )
            body = (
                texts.text(
                    locale,
                    "grouped_body",
                    count=texts.text(locale, "new_messages", count),
                    text=line,
                )
                if count > 1
                else line
            )
    return Notification(
        title=heading,
        body=body,
        data=data,
        conversation_id=conversation_id,
        message_id=str(message["id"]),
        url=conversation_url(base_url, conversation_id),
        badge=recipient.badge,
        kind="message",
        seq=message["seq"],
        count=count,
        preview=mode,
        locale=locale,
        image=image if mode == "full" else None,
        replyable=replyable,
    )


def attachments_line(locale: str, attachments: Any) -> str:
    """What a message of attachments and no text says: "Photo", "3 photos", or its
    first file that is not an image ("File: report.pdf", "... and 2 more")."""
    files = [a for a in attachments or () if isinstance(a, Mapping)]
    if not files:
        return ""
    others = [a for a in files if not is_image(a)]
    if not others:
        return texts.text(locale, "photos", len(files))
    name = preview(str(others[0].get("name") or ""), TITLE_LENGTH) or "file"
    if len(files) == 1:
        return texts.text(locale, "file", name=name)
    return texts.text(locale, "file_and_more", len(files) - 1, name=name)


def clear_notification(
    conversation_id: str,
    seq: int,
    badge: int | None,
    locale: str = DEFAULT_LOCALE,
    deleted_message_id: str | None = None,
) -> Notification:
    """The push that takes down a conversation's notifications, read up to `seq`
    elsewhere, and sets the badge to `badge`. It shows nothing: providers send it as a
    data message (FCM) or a background push (APNs); the title is for a browser that
    insists on showing something for every push.

    With `deleted_message_id` it takes down only the notification showing that message
    (deleted; `seq` is its seq, not a read mark): it carries `message_id` and
    `reason: "deleted"`, so a client closes that one and records no read."""
    locale = texts.locale_of(locale)
    conversation_id = str(conversation_id)
    data: dict[str, Any] = {"type": "clear", "conversation_id": conversation_id, "seq": seq}
    if deleted_message_id is not None:
        data |= {"message_id": str(deleted_message_id), "reason": "deleted"}
    return Notification(
        title=texts.text(locale, "cleared_title"),
        body="",
        data=data,
        conversation_id=conversation_id,
        message_id=str(deleted_message_id or ""),
        url="",
        badge=badge,
        kind="clear",
        seq=seq,
        count=0,
        preview="none",
        locale=locale,
    )


def operator_test_notification(base_url: str, locale: str = DEFAULT_LOCALE) -> Notification:
    """The operator's test push (`make test-push`), in the user's language."""
    locale = texts.locale_of(locale)
    return Notification(
        title=texts.text(locale, "test_title"),
        body=texts.text(locale, "test_body"),
        data={"type": "test"},
        conversation_id="test",
        message_id="test",
        url=base_url.rstrip("/") + "/",
        kind="test",
        locale=locale,
    )


def conversation_url(base_url: str, conversation_id: str) -> str:
    return f"{base_url}/?conversation={conversation_id}"
