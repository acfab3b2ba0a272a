"""What the server answers, as typed values: users, bots, messages, conversations,
devices.

Each keeps the server's whole JSON in `raw`, so fields the server adds later are
reachable before this client names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time of the server (`Z` or `+00:00`); None for null."""
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    display_name: str
    is_bot: bool = False  # a bot account (run by a user with its token), not a person
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> User:
        return cls(
            id=int(data["id"]),
            username=str(data["username"]),
            display_name=str(data.get("display_name") or data["username"]),
            is_bot=bool(data.get("is_bot", False)),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Bot:
    """A bot the caller runs (never its token: that is shown once, when it is made or
    rotated). `created_at` is None when the answer did not say (a bot just made)."""

    id: int
    username: str
    display_name: str
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Bot:
        return cls(
            id=int(data["id"]),
            username=str(data["username"]),
            display_name=str(data.get("display_name") or data["username"]),
            created_at=parse_time(data.get("created_at")),
            last_used_at=parse_time(data.get("last_used_at")),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    conversation_id: str
    seq: int
    sender_id: int
    content: str
    client_msg_id: str | None
    created_at: datetime | None
    mentions: list[int] = field(default_factory=list)
    reply_to: str | None = None
    edited_at: datetime | None = None
    deleted_at: datetime | None = None
    reactions: dict[str, list[int]] = field(default_factory=dict)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        return cls(
            id=str(data["id"]),
            conversation_id=str(data["conversation_id"]),
            seq=int(data["seq"]),
            sender_id=int(data["sender_id"]),
            content=str(data.get("content") or ""),
            client_msg_id=data.get("client_msg_id"),
            created_at=parse_time(data.get("created_at")),
            mentions=[int(m) for m in data.get("mentions") or []],
            reply_to=data.get("reply_to"),
            edited_at=parse_time(data.get("edited_at")),
            deleted_at=parse_time(data.get("deleted_at")),
            reactions={
                str(k): [int(u) for u in v] for k, v in (data.get("reactions") or {}).items()
            },
            attachments=list(data.get("attachments") or []),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    type: str  # "direct", "group" or "announcement"
    title: str | None
    participant_ids: list[int]
    last_message: Message | None = None
    unread_count: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def last_seq(self) -> int:
        """The seq of its newest message the caller may see (0: none)."""
        return self.last_message.seq if self.last_message is not None else 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conversation:
        last = data.get("last_message")
        return cls(
            id=str(data["id"]),
            type=str(data.get("type") or ""),
            title=data.get("title"),
            participant_ids=[int(p) for p in data.get("participant_ids") or []],
            last_message=Message.from_json(last) if isinstance(last, dict) else None,
            unread_count=int(data.get("unread_count") or 0),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    platform: str
    provider: str
    device_name: str | None
    is_active: bool
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Device:
        return cls(
            id=str(data["id"]),
            platform=str(data["platform"]),
            provider=str(data["provider"]),
            device_name=data.get("device_name"),
            is_active=bool(data.get("is_active", True)),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class DeviceRegistration:
    """The answer to registering a device: `created` is False for a known token refreshed."""

    device_token_id: str
    user_id: int
    platform: str
    created: bool

    @classmethod
    def from_json(cls, data: dict[str, Any], created: bool) -> DeviceRegistration:
        return cls(
            device_token_id=str(data["device_token_id"]),
            user_id=int(data["user_id"]),
            platform=str(data["platform"]),
            created=created,
        )
