"""What admins see: statistics, the push log, users, announcements."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.openapi.schemas.choices import (
    AnnouncementStatus,
    DeliveryOutcome,
    Platform,
    Provider,
    PushLogType,
    PushReason,
)


class Percentiles(BaseModel):
    count: int
    p50: float | None
    p95: float | None


class StatsDay(BaseModel):
    day: date
    pushes: dict[str, dict[str, int]] = Field(description="provider → outcome → count")
    pushes_total: int
    delivered: int
    success_rate: float | None
    skipped: dict[str, int] = Field(description="reason → pushes not sent")
    commit_to_accepted_ms: Percentiles
    notifications: int
    opened: int
    open_rate: float | None
    time_to_open_seconds: Percentiles
    devices_registered: dict[str, int] = Field(description="provider → devices")


class AdminStats(BaseModel):
    """Daily push statistics, oldest day first."""

    days: int
    from_: date = Field(alias="from")
    to: date
    as_of: datetime
    series: list[StatsDay]
    devices_inactive: dict[str, int] = Field(description="days unused (30, 60, 90) → devices")
    latency_buckets_ms: list[int]
    open_buckets_seconds: list[int]


class PushLogEntry(BaseModel):
    """A push decision (type `decision`) or a delivery attempt (type `delivery`)."""

    id: str
    type: PushLogType
    reason: PushReason
    user_id: int
    conversation_id: str | None
    message_id: str | None
    created_at: datetime
    first_seq: int | None = None
    last_seq: int | None = None
    outcome: DeliveryOutcome | None = None
    seq: int | None = None
    device_id: str | None = None
    provider: Provider | None = None
    attempts: int | None = None
    latency_ms: float | None = None
    error: str | None = None


class PushLog(BaseModel):
    """Push decisions and deliveries, newest first; `next_before` pages on."""

    entries: list[PushLogEntry]
    next_before: str | None


class AdminUser(BaseModel):
    id: int
    username: str
    display_name: str
    is_admin: bool
    created_at: datetime


class AdminUserList(BaseModel):
    """Users matching the query."""

    users: list[AdminUser]


class AdminDevice(BaseModel):
    id: str
    platform: Platform
    provider: Provider
    name: str | None
    is_active: bool
    created_at: datetime
    last_used_at: datetime | None


class AdminUserDetail(BaseModel):
    """A user, their devices (never their tokens) and their push log."""

    user: AdminUser
    devices: list[AdminDevice]
    push_log: list[PushLogEntry]
    next_before: str | None


class AnnouncementStarted(BaseModel):
    """The announcement is being sent."""

    id: str
    status: AnnouncementStatus


class Announcement(AnnouncementStarted):
    """An announcement and how far its sending got."""

    title: str
    audience: Literal["all", "list"]
    created_by: int | None
    created_at: datetime
    recipients: int
    delivered_live: int
    pushed: int
    failed: int
    finished_at: datetime | None
