"""An in-flight limit per push service host, for a provider that reaches many hosts.

Web Push talks to whichever push service each browser chose. Its provider-wide limit
alone would let one slow or hung host take every slot; with a limit per host, pushes
to the others go on. Delivery waits for the host's slot before taking the provider's,
so a push queued behind a saturated host holds nothing the other hosts need.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from app.messenger.push.base import Device


@runtime_checkable
class PerHostLimited(Protocol):
    def host_slot(self, device: Device) -> AbstractAsyncContextManager[None]:
        """Held while this device's push talks to its host (wait for it first)."""
        ...


@dataclass(slots=True)
class _Slot:
    semaphore: asyncio.Semaphore
    users: int = 0  # holding or waiting; the entry goes when none are left


class HostLimits:
    """At most `limit` pushes in flight to one host; entries exist only while in use."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the per-host limit must be at least 1")
        self._limit = limit
        self._slots: dict[str, _Slot] = {}

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        entry = self._slots.get(host)
        if entry is None:
            entry = self._slots[host] = _Slot(asyncio.Semaphore(self._limit))
        entry.users += 1
        try:
            async with entry.semaphore:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._slots[host]
