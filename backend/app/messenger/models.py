"""The messenger's tables: conversations, participants, messages, devices and push work."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    title: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The seq of the newest message; the send path bumps it under a row lock.
    last_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # "low_id:high_id" for a direct conversation, so one pair has one conversation.
    direct_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Changes to its messages (edits, deletions, reactions), counted under the row lock:
    # each stamps its message with the new value, a client's changed_after cursor.
    change_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Participant(Base):
    __tablename__ = "participants"

    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_read_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    muted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    mute_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    push_enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Which messages may push: "all", "mentions" (only those naming the user) or "none".
    notify: Mapped[str] = mapped_column(String(16), default="all", server_default="all")
    # "owner", "admin" or "member" (roles.py says what each may do); direct: "member".
    role: Mapped[str] = mapped_column(String(16), default="member", server_default="member")
    # The conversation's last_seq when the user joined: they see only the messages after.
    joined_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq"),
        # A client's retry of the same send finds the original through this constraint.
        UniqueConstraint("conversation_id", "sender_id", "client_msg_id"),
        # changed_after: a conversation's changed messages in the order they changed.
        Index("ix_messages_changes", "conversation_id", "change_seq"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    sender_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    content: Mapped[str] = mapped_column(Text)
    client_msg_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The participants the content names (@username, or everyone for @all); None: nobody.
    mentions: Mapped[list[int] | None] = mapped_column(JSON)
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A deleted message keeps its row and seq, with empty content.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A message of the same conversation (the send path checks; no foreign key, see 0009).
    reply_to: Mapped[str | None] = mapped_column(String(36))
    # The conversation's change_seq at this message's latest change; None: never changed.
    change_seq: Mapped[int | None] = mapped_column(Integer)


class MessageReaction(Base):
    """One user's reaction with one emoji to one message."""

    __tablename__ = "message_reactions"

    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    emoji: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PushJob(Base):
    """Push work still to do for the messages of one commit, written in that commit.

    One row per commit, not per message: the send path's batches stay one insert, and
    the job goes once each of its messages has an outcome on every device. The node
    that wrote it holds a lease; a job whose lease ran out (its node died) is taken up
    by whichever node claims it first.
    """

    __tablename__ = "push_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    message_ids: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # Set on a job the push re-check wrote (a recipient who looked online went away):
    # only this recipient, and only while the message is unread. None: every participant.
    recipient_id: Mapped[int | None] = mapped_column(Integer)
    # A delayed push (the recipient's push_delay_seconds): its lease_until is when it is
    # due, it is claimed like a job whose node died, and its wait is over once it is.
    after_delay: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class DeviceToken(Base):
    __tablename__ = "device_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # What the provider addresses: the token, or for Web Push the subscription JSON.
    token: Mapped[str] = mapped_column(Text)
    # What makes two registrations one device: the token, or a Web Push endpoint.
    token_key: Mapped[str] = mapped_column(String(2048), unique=True)
    platform: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(16))
    device_name: Mapped[str | None] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # The sign-in session that registered it (or last registered it again): when that
    # session ends, the device is switched off. None for a device registered before
    # devices had sessions (0008): it stays as it was until registered again.
    session_id: Mapped[str | None] = mapped_column(String(36), index=True)


class PushAttempt(Base):
    """The outcome of delivering one message to one device, kept for a while."""

    __tablename__ = "push_attempts"
    __table_args__ = (
        Index("ix_push_attempts_message_device", "message_id", "device_id"),
        # Clearing: what a user's devices were shown of a conversation.
        Index("ix_push_attempts_user_conversation", "user_id", "conversation_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36))
    device_id: Mapped[str] = mapped_column(String(36))
    user_id: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # The message's conversation and seq, so a read up to a seq finds what to clear.
    conversation_id: Mapped[str | None] = mapped_column(String(36))
    seq: Mapped[int | None] = mapped_column(Integer)
    # When the device was told to take this notification down (read, or deleted).
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PushDecision(Base):
    """Why a recipient was or was not pushed for messages `first_seq` to `last_seq` of a
    conversation: one row for a run of messages with the same reason, so a busy chat
    between people who are looking costs a row per flush, not one per message. A run
    may span the recipient's own messages (never theirs to be pushed), so a two-way chat
    is not broken into a row per reply.

    reason: sent, online, blocked, muted, notify_level, quiet_hours, read_before_delay,
    no_device
    (deliveries, with their outcomes, are in push_attempts).
    """

    __tablename__ = "push_decisions"
    __table_args__ = (Index("ix_push_decisions_user", "user_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer)
    conversation_id: Mapped[str] = mapped_column(String(36))
    # Set when the row decides one message: that message.
    message_id: Mapped[str | None] = mapped_column(String(36))
    first_seq: Mapped[int] = mapped_column(Integer)
    last_seq: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(24))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Upload(Base):
    """A file a user uploaded: its stored bytes are under `storage_key`."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    uploader_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    # Sniffed from the bytes, never the client's word.
    content_type: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # Set for an image whose header could be read.
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
