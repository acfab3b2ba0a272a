"""Accounts."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Integer,
    PrimaryKeyConstraint,
    String,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow

# Ids are 32-bit integers; a larger number in a request can name no user.
MAX_ID = 2**31 - 1


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Stored lower-cased: "Alice" and "alice" are one account.
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128))
    # None for a bot: it has no password and cannot log in (app/bots.py).
    password_hash: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # An operator: may read /api/v1/admin (granted by `make admin USER=name`).
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A bot acts through its tokens (app/bot_tokens.py) on behalf of bot_owner_id; a
    # deleted bot keeps its row (its messages still name it) with no owner, and so does
    # a bot whose owner's row is deleted (SET NULL, not a cascade that takes its rows).
    is_bot: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    bot_owner_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "display_name": self.display_name,
            "is_bot": bool(self.is_bot),
        }


class Session(Base):
    """One sign-in: a refresh token (only its hash is kept) that mints access tokens.

    A refresh token is "<session id>.<secret>"; each refresh replaces the secret, so a
    spent one that comes back (stolen, or replayed) is told from the current one and
    revokes the whole session.
    """

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    refresh_hash: Mapped[str] = mapped_column(String(64))
    # The refresh token before the current one, and when it was spent: a client whose
    # refresh answer was lost may present it again for a short while (see refresh()).
    previous_hash: Mapped[str | None] = mapped_column(String(64))
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set once, when the session is revoked (logout, reuse, expiry of its refresh token).
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # Where the session was last used from (its login, or its latest refresh).
    user_agent: Mapped[str | None] = mapped_column(String(256))
    ip: Mapped[str | None] = mapped_column(String(64))


class Block(Base):
    """`blocker_id` blocked `blocked_id`."""

    __tablename__ = "blocks"
    __table_args__ = (PrimaryKeyConstraint("blocker_id", "blocked_id"),)

    blocker_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    blocked_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotificationSettings(Base):
    """A user's notification settings; no row means every default."""

    __tablename__ = "notification_settings"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    # IANA zone the quiet hours are in.
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    # "HH:MM" in time_zone; both set or both None (no quiet hours). May wrap midnight.
    quiet_start: Mapped[str | None] = mapped_column(String(5))
    quiet_end: Mapped[str | None] = mapped_column(String(5))
    quiet_allow_mentions: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # Push only if still unread this long after the message (0: at once).
    push_delay_seconds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # "full" | "sender" | "none": how much of a message its push shows.
    preview: Mapped[str] = mapped_column(String(8), default="full", server_default="full")
    locale: Mapped[str] = mapped_column(String(16), default="en", server_default="en")
    # Email for missed messages (app/email): the address, when a link sent to it was
    # followed, the digest period ("off" | "hourly" | "daily"), and why the mail server
    # turned digests off (a permanent bounce), shown to the user.
    email: Mapped[str | None] = mapped_column(String(254))
    email_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    email_digest: Mapped[str] = mapped_column(String(8), default="off", server_default="off")
    email_disabled_reason: Mapped[str | None] = mapped_column(String(200))
    email_disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the address was set: a verification link names it, so a link sent to an
    # earlier setting of the same address (A, then B, then A) verifies nothing.
    email_set_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Why the last verification email did not get through (shown with "Resend link").
    email_verification_error: Mapped[str | None] = mapped_column(String(200))
    # The digest schedule, and the cursor: messages created up to it are never mailed.
    next_digest_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    digest_covered_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PushStatsDaily(Base):
    """One count of a day's push statistics (app/admin_stats.py): kind says what is
    counted, key and detail what of it (provider and outcome, reason, histogram bucket)."""

    __tablename__ = "push_stats_daily"
    __table_args__ = (PrimaryKeyConstraint("day", "kind", "key", "detail"),)

    day: Mapped[date] = mapped_column(Date)
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(24))
    detail: Mapped[str] = mapped_column(String(24))
    count: Mapped[int] = mapped_column(BigInteger)


class PushStatsDay(Base):
    """A day whose statistics are in push_stats_daily, and when they were computed."""

    __tablename__ = "push_stats_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    rolled_up_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BotToken(Base):
    """A bot's long-lived token, "mbot_<id>_<secret>": only the SHA-256 of the secret is
    kept (app/bot_tokens.py). Revoked, never deleted while its bot stands."""

    __tablename__ = "bot_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
