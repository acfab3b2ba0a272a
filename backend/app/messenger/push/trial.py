"""The test push a user sends to their own devices (POST /api/v1/me/devices/test-push).

The request writes a `notifications` row of kind "test" and answers at once; the
deliveries run in the background, one try each (as `make test-push` does: a test
should say what happens now, not after minutes of retries), within the push service's
per-provider limits and its cap on pending deliveries like any push, and their outcomes are
written as push_attempts carrying the notification's id, so the result per device is
read from the notification history. A dead token found here ends its device, as any
push's would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db import utcnow
from app.messenger.models import DeviceToken, PushAttempt
from app.messenger.push.base import Device, Notification, Outcome
from app.messenger.push.delivery import Delivery, RetryPolicy, deactivate_dead
from app.messenger.push.history import (
    accepted_time,
    attempt_row,
    notification_row,
    write_notifications,
)
from app.messenger.push.notification import operator_test_notification
from app.messenger.push.service import PushService
from app.models import NotificationSettings

log = logging.getLogger(__name__)
_devices = DeviceToken.__table__

STOP_WAIT = 5.0  # seconds test pushes under way may finish when the node stops


class TrialPushes:
    def __init__(self, settings: Settings, engine: AsyncEngine, push: PushService) -> None:
        self._settings = settings
        self._engine = engine
        self._push = push
        self._policy = RetryPolicy(1, 0, 0, settings.push_timeout_seconds)
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, user_id: int) -> tuple[str, list[Device]]:
        """Write the test notification and start pushing it to every active device of
        the user; its id and the devices. No device: nothing is written."""
        notification_id = str(uuid.uuid4())
        async with self._engine.begin() as conn:
            devices = [
                Device(r.id, r.user_id, r.token, r.platform, r.provider, r.session_id)
                for r in await conn.execute(
                    select(_devices)
                    .where(_devices.c.user_id == user_id, _devices.c.is_active.is_(True))
                    .order_by(_devices.c.created_at)
                )
            ]
            if not devices:
                return notification_id, []
            locale = await conn.scalar(
                select(NotificationSettings.locale).where(NotificationSettings.user_id == user_id)
            )
            notification = operator_test_notification(
                self._settings.public_base_url, locale or "en"
            )
            notification = dataclasses.replace(
                notification, data={**notification.data, "notification_id": notification_id}
            )
            await write_notifications(
                conn,
                [
                    notification_row(
                        notification_id,
                        user_id,
                        "test",
                        notification.title,
                        notification.body,
                        utcnow(),
                    )
                ],
            )
        task = asyncio.create_task(
            self._deliver_all(notification_id, devices, notification),
            name=f"test-push-{notification_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return notification_id, devices

    async def _deliver_all(
        self, notification_id: str, devices: list[Device], notification: Notification
    ) -> None:
        results = await asyncio.gather(*(self._deliver_one(d, notification) for d in devices))
        now = utcnow()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(PushAttempt),
                    [
                        # A test has no message: the notification stands in for it.
                        attempt_row(notification_id, device, d, now)
                        | {
                            "notification_id": notification_id,
                            "accepted_at": accepted_time(d),
                        }
                        for device, d in zip(devices, results, strict=True)
                    ],
                )
                await deactivate_dead(
                    conn,
                    {
                        dv.id
                        for dv, d in zip(devices, results, strict=True)
                        if d.outcome == Outcome.DEAD_TOKEN
                    },
                )
        except Exception:
            log.exception("test push outcomes not recorded notification=%s", notification_id)

    async def _deliver_one(self, device: Device, notification: Notification) -> Delivery:
        if device.provider not in self._push.providers:
            delivery = Delivery(Outcome.FAILED, 0, 0.0, "provider is off", None)
        else:
            delivery = await self._push.deliver_single(device, notification, self._policy)
        log.info(
            "test push %s provider=%s device=%s user=%s ms=%.1f",
            delivery.outcome,
            device.provider,
            device.id,
            device.user_id,
            delivery.latency_ms,
        )
        return delivery

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_WAIT)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
