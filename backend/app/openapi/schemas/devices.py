"""Push devices and Web Push's key."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from app.openapi.schemas.choices import DeviceRegistration, Platform, Provider


class DeviceRegistered(BaseModel):
    """The device is registered (201) or refreshed (200)."""

    status: DeviceRegistration
    device_token_id: str
    user_id: int
    platform: Platform


class Device(BaseModel):
    id: str
    platform: Platform
    provider: Provider
    device_name: str | None
    is_active: bool
    registered_at: datetime
    last_used_at: datetime | None


class DeviceList(BaseModel):
    """The caller's devices."""

    devices: list[Device]


class DeviceRemoved(BaseModel):
    """The device is unregistered."""

    success: bool
    message: str


class VapidKey(BaseModel):
    """The base64url applicationServerKey for pushManager.subscribe."""

    public_key: str
