"""What `Client.events()` yields: one typed value per server frame, plus the stream's own
`Connected` and `Disconnected`.

Match on the class (`isinstance(event, MessageNew)` or `match event: case MessageNew()`);
a frame type this client does not know yet comes as `UnknownEvent` with its JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from messenger_client.models import Conversation, Message


@dataclass(frozen=True, slots=True)
class MessageNew:
    """A message of one of the caller's conversations (the caller's own included), once
    each, in `seq` order per conversation, live or caught up after a reconnect."""

    message: Message


@dataclass(frozen=True, slots=True)
class MessageUpdated:
    """A message edited, deleted or reacted to."""

    message: Message


@dataclass(frozen=True, slots=True)
class Typing:
    conversation_id: str
    user_id: int


@dataclass(frozen=True, slots=True)
class Read:
    """Someone (the caller too, from another device) read `conversation_id` up to `seq`."""

    conversation_id: str
    user_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class Presence:
    user_id: int
    online: bool


@dataclass(frozen=True, slots=True)
class ConversationNew:
    """Someone started a conversation with the caller."""

    conversation_id: str


@dataclass(frozen=True, slots=True)
class ConversationUpdated:
    """A conversation's title or members changed."""

    conversation: Conversation


@dataclass(frozen=True, slots=True)
class Reminder:
    """A reminder the caller set fired (`POST /api/v1/me/reminders`)."""

    id: str
    message: Message | None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An `error` frame that answers no send of this client (those raise from `send`)."""

    code: str
    message: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Connected:
    """The socket is signed in and caught up; `reconnect` is False the first time."""

    reconnect: bool


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The socket closed; the stream reconnects after `retry_in` seconds."""

    code: int | None
    reason: str
    retry_in: float


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    type: str
    data: dict[str, Any] = field(default_factory=dict)


Event = (
    MessageNew
    | MessageUpdated
    | Typing
    | Read
    | Presence
    | ConversationNew
    | ConversationUpdated
    | Reminder
    | ErrorEvent
    | Connected
    | Disconnected
    | UnknownEvent
)


def parse_event(frame: dict[str, Any]) -> Event:
    """The event of a server frame that is not about sends or sign-in (the stream handles
    `message.new`, `message.ack`, `auth.ok` and `pong` itself)."""
    kind = str(frame.get("type"))
    try:
        if kind == "message.updated":
            return MessageUpdated(Message.from_json(frame["message"]))
        if kind == "typing":
            return Typing(str(frame["conversation_id"]), int(frame["user_id"]))
        if kind == "read":
            return Read(str(frame["conversation_id"]), int(frame["user_id"]), int(frame["seq"]))
        if kind == "presence":
            return Presence(int(frame["user_id"]), bool(frame["online"]))
        if kind == "conversation.new":
            return ConversationNew(str(frame["conversation_id"]))
        if kind == "conversation.updated":
            return ConversationUpdated(Conversation.from_json(frame["conversation"]))
        if kind == "reminder":
            message = frame.get("message")
            return Reminder(
                str(frame["id"]), Message.from_json(message) if isinstance(message, dict) else None
            )
        if kind == "error":
            ref = frame.get("ref")
            return ErrorEvent(
                str(frame.get("code")),
                str(frame.get("message")),
                ref if isinstance(ref, str) else None,
            )
    except (KeyError, TypeError, ValueError):
        pass  # a frame of a known type but another shape: hand it over as it came
    return UnknownEvent(kind, frame)
