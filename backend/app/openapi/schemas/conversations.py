"""Conversations, their members and the caller's settings for them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from app.openapi.schemas.choices import ConversationType, Notify, Role
from app.openapi.schemas.messages import Message


class Conversation(BaseModel):
    """A conversation as listed: with its last message and the caller's unread count."""

    id: str
    type: ConversationType
    title: str | None
    created_by: int | None
    participant_ids: list[int]
    last_message: Message | None
    unread_count: int
    created_at: datetime


class ConversationList(BaseModel):
    """The caller's conversations."""

    conversations: list[Conversation]


class Participant(BaseModel):
    user_id: int
    role: Role
    last_read_seq: int


class ConversationDetail(Conversation):
    """A conversation with its members, their roles and read marks."""

    participants: list[Participant]


class ConversationSettings(BaseModel):
    """The caller's settings for one conversation."""

    muted: bool
    mute_until: datetime | None
    push_enabled: bool
    notify: Notify


class Block(BaseModel):
    user_id: int
    created_at: datetime


class BlockList(BaseModel):
    """The users the caller blocked, newest first."""

    blocks: list[Block]


class Unblocked(BaseModel):
    """The user is no longer blocked."""

    user_id: int
    blocked: bool


class ConversationAfterRemoval(BaseModel):
    """The conversation as its members see it; `last_message` and `unread_count` are
    the caller's, absent once the caller has left."""

    id: str
    type: ConversationType
    title: str | None
    created_by: int | None
    participant_ids: list[int]
    created_at: datetime
    participants: list[Participant]
    last_message: Message | None = None
    unread_count: int | None = None
