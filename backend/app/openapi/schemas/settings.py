"""The caller's user-wide notification settings."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from app.openapi.schemas.choices import EmailDigest, Preview


class QuietHours(BaseModel):
    """No push from `start` to `end` (HH:MM in `time_zone`, may wrap midnight)."""

    start: str
    end: str
    allow_mentions: bool


class DigestDisabled(BaseModel):
    """Why and when a bounce turned email digests off."""

    reason: str
    at: datetime


class VerificationFailed(BaseModel):
    reason: str


class NotificationSettings(BaseModel):
    """The caller's notification settings (push and email)."""

    time_zone: str
    quiet_hours: QuietHours | None
    push_delay_seconds: int
    preview: Preview
    locale: str
    email: str | None
    email_verified: bool
    email_digest: EmailDigest
    email_digest_disabled: DigestDisabled | None
    email_verification_failed: VerificationFailed | None
