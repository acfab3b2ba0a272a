"""Delivering one notification to one device: attempts, backoff, the final outcome
(and a device whose token turned out dead switched off).

Each provider has its own in-flight limit (as Sygnal's ConcurrencyLimitedPushkin
has), and an attempt holds a slot of it only while it talks to the provider: a
retry waiting out its backoff holds none, so a throttling provider slows only its
own pushes and never the other providers'.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import cast

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.config import Settings
from app.db import one_of
from app.messenger.models import DeviceToken
from app.messenger.push.base import Device, Notification, Outcome, Provider, Result
from app.messenger.push.host_limit import PerHostLimited

log = logging.getLogger(__name__)
_devices = DeviceToken.__table__


@dataclass(frozen=True, slots=True)
class Delivery:
    outcome: Outcome
    attempts: int
    latency_ms: float
    error: str | None
    accepted_at: float | None  # time.time() when the provider accepted it


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_seconds: float
    timeout_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The push retry settings: message pushes and clears retry alike."""
        return cls(
            max_attempts=settings.push_max_attempts,
            base_seconds=settings.push_backoff_base_seconds,
            max_seconds=settings.push_backoff_max_seconds,
            timeout_seconds=settings.push_timeout_seconds,
        )

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None:
            # The provider said when: honour it, unless it is past what we would wait.
            return retry_after if retry_after <= self.max_seconds else None
        backoff = min(self.max_seconds, self.base_seconds * 2.0 ** (attempt - 1))
        return backoff * random.uniform(0.5, 1.0)  # jitter, so retries do not stampede


async def deliver(
    provider: Provider,
    device: Device,
    notification: Notification,
    policy: RetryPolicy,
    limit: asyncio.Semaphore,
) -> Delivery:
    """Attempt until an answer other than RETRY, or until the policy gives up. `limit` is
    the provider's in-flight limit: held for each attempt, never through a backoff."""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        # A host's slot first, then the provider's: a push queued behind a busy host
        # holds none of the provider's slots meanwhile.
        async with _host_slot(provider, device), limit:
            result = await _attempt(provider, device, notification, policy)
        if result.outcome != Outcome.RETRY:
            break
        delay = policy.delay(attempt, result.retry_after)
        if delay is None:
            return Delivery(Outcome.GAVE_UP, attempt, _ms(started), result.error, None)
        log.info(
            "push retry provider=%s device=%s message=%s attempt=%d in=%.1fs status=%s",
            provider.name,
            device.id,
            notification.message_id,
            attempt,
            delay,
            result.status,
        )
        await asyncio.sleep(delay)
    accepted_at = time.time() if result.outcome == Outcome.DELIVERED else None
    return Delivery(result.outcome, attempt, _ms(started), result.error, accepted_at)


async def _attempt(
    provider: Provider, device: Device, notification: Notification, policy: RetryPolicy
) -> Result:
    """One call to the provider, classified."""
    try:
        # Providers keep their own timeout; this one guards against one that does not
        # (a timeout scope, not wait_for: no task of its own for every push).
        async with asyncio.timeout(policy.timeout_seconds + 5):
            return await provider.send(device, notification)
    except TimeoutError:
        return Result(Outcome.RETRY, error="timed out")
    except Exception as exc:
        log.exception("push provider raised provider=%s device=%s", provider.name, device.id)
        return Result(Outcome.FAILED, error=f"{exc.__class__.__name__}: {exc}"[:500])


async def deactivate_dead(conn: AsyncConnection, device_ids: Collection[str]) -> None:
    """Switch off the devices whose token a provider declared dead (the daily cleanup
    removes them later); whatever push found it out, a message's or a clear."""
    if not device_ids:
        return
    await conn.execute(
        update(DeviceToken)
        .where(one_of(_devices.c.id, device_ids, conn.dialect.name))
        .values(is_active=False)
    )
    log.info("devices deactivated (dead token) count=%d", len(device_ids))


def _host_slot(provider: Provider, device: Device) -> AbstractAsyncContextManager[None]:
    """The per-host limit of a provider that reaches many hosts (Web Push); others have
    one host each, and the provider's limit is its limit."""
    if _per_host_limited(type(provider)):
        return cast(PerHostLimited, provider).host_slot(device)
    return contextlib.nullcontext()


@functools.cache
def _per_host_limited(kind: type) -> bool:
    # Once per provider class: isinstance against a runtime Protocol walks its members.
    return issubclass(kind, PerHostLimited)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
