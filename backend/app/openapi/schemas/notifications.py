"""The caller's notification history and test pushes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from app.openapi.schemas.choices import DeliveryOutcome, NotificationKind, OpenedHow, Provider


class Delivery(BaseModel):
    device_id: str | None
    provider: Provider
    outcome: DeliveryOutcome
    latency_ms: float | None
    at: datetime


class Notification(BaseModel):
    """A notification sent to the caller, with each device's delivery."""

    id: str
    kind: NotificationKind
    conversation_id: str | None
    message_id: str | None
    title: str
    body: str
    created_at: datetime
    opened_at: datetime | None
    opened_how: OpenedHow | None
    time_to_open_ms: int | None
    dismissed_at: datetime | None
    read: bool
    deliveries: list[Delivery]


class NotificationList(BaseModel):
    """Newest first, and how many are unread."""

    notifications: list[Notification]
    unread: int


class Opened(BaseModel):
    """When and how the notification was first opened."""

    id: str
    opened_at: datetime | None
    opened_how: OpenedHow | None
    time_to_open_ms: int | None


class Dismissed(BaseModel):
    """The notification is dismissed."""

    id: str
    dismissed: bool


class DismissedAll(BaseModel):
    """How many notifications were dismissed."""

    dismissed: int


class TestPushDevice(BaseModel):
    device_id: str
    provider: Provider


class TestPush(BaseModel):
    """The test notification, on its way to each active device."""

    id: str
    devices: list[TestPushDevice]
