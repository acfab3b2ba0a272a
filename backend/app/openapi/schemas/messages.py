"""Messages, their attachments, and what is planned about them (scheduled, reminders)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, RootModel

from app.openapi.schemas.choices import ReminderStatus, ScheduledStatus, StatusChangeStatus


class Attachment(BaseModel):
    """An uploaded file: its bytes at `url`, an image's thumbnail at `thumbnail_url`."""

    id: str
    name: str
    content_type: str
    size: int
    url: str
    thumbnail_url: str | None = None
    width: int | None = None
    height: int | None = None


class Message(BaseModel):
    """A message; `seq` grows by 1 per message of its conversation."""

    id: str
    conversation_id: str
    seq: int
    sender_id: int
    content: str
    client_msg_id: str | None
    created_at: datetime
    mentions: list[int]
    edited_at: datetime | None
    deleted_at: datetime | None
    reply_to: str | None
    attachments: list[Attachment]
    reactions: dict[str, list[int]]


class MessagePage(BaseModel):
    """Messages in ascending seq."""

    messages: list[Message]
    cursor: int


class MessageChanges(BaseModel):
    """With changed_after: the messages changed since then; `cursor` asks for the next
    changes, `has_more` says whether some are waiting already."""

    messages: list[Message]
    cursor: int
    has_more: bool


class MessageList(RootModel[MessagePage | MessageChanges]):
    """A page of messages, or (with changed_after) the messages changed since `cursor`."""


class SearchHit(Message):
    """A message found, with its snippet: even places plain text, odd places a match."""

    snippet: list[str]


class SearchResults(BaseModel):
    """Best match first; `next_cursor` pages on (null: no more)."""

    messages: list[SearchHit]
    next_cursor: str | None


class ReadMark(BaseModel):
    """The caller's read mark in the conversation."""

    conversation_id: str
    seq: int


class Scheduled(BaseModel):
    """A message to be sent at `send_at`, as if sent then."""

    id: str
    scheduled_id: str
    conversation_id: str
    content: str
    client_msg_id: str | None
    reply_to: str | None
    send_at: datetime
    status: ScheduledStatus
    created_at: datetime


class ScheduledList(BaseModel):
    """The caller's pending scheduled messages."""

    scheduled: list[Scheduled]


class StatusChange(BaseModel):
    """What became of it: cancelled (or dismissed, once sent or failed)."""

    id: str
    status: StatusChangeStatus


class ReminderCreated(BaseModel):
    """A reminder: at `remind_at` a `reminder` frame or, offline, a push."""

    id: str
    remind_at: datetime
    message_id: str
    conversation_id: str


class Reminder(ReminderCreated):
    status: ReminderStatus
    created_at: datetime
    # null once the caller no longer sees the message.
    message: Message | None


class ReminderList(BaseModel):
    """The caller's pending reminders."""

    reminders: list[Reminder]


class UploadForm(BaseModel):
    """A multipart/form-data body with one file in the field `file`."""

    file: bytes
