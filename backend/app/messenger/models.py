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
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow

# The partial index's predicate: messages written by announcements (broadcast.py says it
# again in its query, so PostgreSQL knows the index applies).
ANNOUNCEMENT_MESSAGES = "client_msg_id LIKE 'announcement:%'"


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
        # Announcement messages only (client_msg_id "announcement:<id>"): an
        # announcement's pushed count finds its messages without scanning the table.
        Index(
            "ix_messages_announcement",
            "client_msg_id",
            postgresql_where=text(ANNOUNCEMENT_MESSAGES),
            sqlite_where=text(ANNOUNCEMENT_MESSAGES),
        ),
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
    # The files sent with it, as clients are shown them (uploads.describe); None: none.
    attachments: Mapped[list[dict[str, object]] | None] = mapped_column(JSON)


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
    # The announcement whose pushes these are: planned in the low-priority lane, whichever
    # node takes the job up, and waited for before the announcement's counts are final.
    announcement_id: Mapped[str | None] = mapped_column(String(36), index=True)


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
    # Indexed for the admin statistics' devices registered per day (0014).
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
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
        Index("ix_push_attempts_notification", "notification_id"),
        # One user's push log, newest first (admin_push_log).
        Index("ix_push_attempts_user_created", "user_id", "created_at", "id"),
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
    # The notification (history entry) this delivery belongs to.
    notification_id: Mapped[str | None] = mapped_column(String(36))
    # When the provider accepted it (delivered only): commit-to-accepted ends here.
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PushDecision(Base):
    """Why a recipient was or was not pushed for messages `first_seq` to `last_seq` of a
    conversation: one row for a run of messages with the same reason, so a busy chat
    between people who are looking costs a row per flush, not one per message. A run
    may span the recipient's own messages (never theirs to be pushed), so a two-way chat
    is not broken into a row per reply.

    reason: sent, online, blocked, muted, notify_level, quiet_hours, read_before_delay,
    no_device; and, after `sent` once no delivery went through, failed or dead_token
    (deliveries, with their outcomes, are in push_attempts).
    """

    __tablename__ = "push_decisions"
    __table_args__ = (
        Index("ix_push_decisions_user", "user_id", "id"),
        # One user's push log, newest first (admin_push_log).
        Index("ix_push_decisions_user_created", "user_id", "created_at", "id"),
    )

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
    # The message it was sent with (once only); None: not sent yet.
    message_id: Mapped[str | None] = mapped_column(String(36), index=True)
    conversation_id: Mapped[str | None] = mapped_column(String(36))
    # A stored thumbnail of an image, and its size.
    thumbnail_key: Mapped[str | None] = mapped_column(String(255))
    thumbnail_width: Mapped[int | None] = mapped_column(Integer)
    thumbnail_height: Mapped[int | None] = mapped_column(Integer)
    animated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Notification(Base):
    """What a user was notified of: one per (user, message), however many devices were
    pushed (the deliveries are the push_attempts with its id), and one per test push.

    kind: message, test, announcement, reminder
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("user_id", "message_id"),
        Index("ix_notifications_user_created", "user_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    conversation_id: Mapped[str | None] = mapped_column(String(36))
    message_id: Mapped[str | None] = mapped_column(String(36))
    title: Mapped[str] = mapped_column(String(255))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # click, foreground or background
    opened_how: Mapped[str | None] = mapped_column(String(16))
    # Cleared from the notification centre by the user.
    dismissed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ScheduledMessage(Base):
    """A message to send later (scheduled.py): pending until the timer loop sends it,
    then sent (message_id), or failed (error: why, e.g. the sender left); or cancelled.
    claimed_by and lease_until: the node sending it now (timers.py)."""

    __tablename__ = "scheduled_messages"
    __table_args__ = (
        # Scheduling again with the same client_msg_id answers the first one.
        UniqueConstraint("conversation_id", "sender_id", "client_msg_id"),
        Index("ix_scheduled_messages_due", "status", "send_at"),
        Index("ix_scheduled_messages_sender", "sender_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    sender_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    content: Mapped[str] = mapped_column(Text)
    client_msg_id: Mapped[str | None] = mapped_column(String(128))
    reply_to: Mapped[str | None] = mapped_column(String(36))
    send_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message_id: Mapped[str | None] = mapped_column(String(36))
    error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Reminder(Base):
    """ "Remind me about this message at ..." (reminders.py): pending until the timer loop
    fires it (a `reminder` frame, or a push when the user is offline), or cancelled."""

    __tablename__ = "reminders"
    __table_args__ = (
        Index("ix_reminders_due", "status", "remind_at"),
        Index("ix_reminders_user", "user_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    remind_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Announcement(Base):
    """An admin's broadcast, and its delivery job (broadcast.py): `sending` until every
    recipient has it, then `done` (or `failed`). audience "all" (user_ids None) or "list".
    cursor: the last user id done; claimed_by and lease_until: the node working it."""

    __tablename__ = "announcements"
    __table_args__ = (
        Index("ix_announcements_status", "status", "lease_until"),
        Index("ix_announcements_created_by", "created_by", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    content: Mapped[str] = mapped_column(Text)
    audience: Mapped[str] = mapped_column(String(8))
    user_ids: Mapped[list[int] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="sending", server_default="sending")
    recipients: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    delivered_live: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    pushed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cursor: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IncomingWebhook(Base):
    """An incoming webhook (webhooks.py): POST /api/v1/hooks/<id>/<secret> posts into
    conversation_id as bot_id. Only the SHA-256 of the secret is kept."""

    __tablename__ = "incoming_webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    bot_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
