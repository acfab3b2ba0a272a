"""Attention: whether a user is looking at one of their sockets, on any node.

A socket's client says `activity {state: "idle"}` when its tab is hidden or untouched,
and `active` when the person is back; a socket that never said counts as active.
Attention is a second Presence (presence.py, presence_redis.py) that counts a user's
active sockets instead of all of them, under its own Redis keys: the push service asks
it who is looking, and its on_gone tells the push re-check that someone stopped looking
everywhere. The same joins, leaves, heartbeats and dead-node takeover serve both.

Contacts still see presence only (online or not): an idle tab is nobody else's business,
and a tab switch costs no fan-out.
"""

from __future__ import annotations

import asyncio
import logging
import math

from app.errors import describe_unexpected
from app.messenger.presence import Presence

log = logging.getLogger(__name__)

# At most one change of a socket's attention per this many seconds: a client flipping
# its state in a loop costs a Redis call a second, not one per frame. The first change
# after a quiet second is applied at once.
MIN_CHANGE_INTERVAL = 1.0


class SocketAttention:
    """One socket's attention: what its client said last (`wanted`) and what attention
    counts (`counted`), brought in line on transitions only, and not more often than
    MIN_CHANGE_INTERVAL; a change asked for sooner waits, and only the latest state is
    applied (active, idle, active within the interval costs nothing)."""

    __slots__ = (
        "_applying",
        "_attention",
        "_changed_at",
        "_closed",
        "_interval",
        "_task",
        "counted",
        "user_id",
        "wanted",
    )

    def __init__(
        self, attention: Presence, user_id: int, interval: float = MIN_CHANGE_INTERVAL
    ) -> None:
        self._attention = attention
        self.user_id = user_id
        self._interval = interval
        self.wanted = True
        self.counted = False
        self._changed_at = -math.inf  # opening does not count: an idle tab says so at once
        self._task: asyncio.Task[None] | None = None  # a change waiting out the interval
        self._applying = False
        self._closed = False

    async def open(self) -> None:
        """The socket opened: it counts as active until its client says otherwise."""
        self.counted = True  # before the call: whatever happens, close() uncounts it
        await self._attention.socket_opened(self.user_id)

    @property
    def pending(self) -> bool:
        """Whether a change waits out the interval."""
        return self._task is not None

    async def report(self, active: bool) -> None:
        """The client's `activity` frame."""
        self.wanted = active
        if self._closed or self._task is not None or active == self.counted:
            return  # a change already waits (it takes the latest), or nothing changes
        wait = self._changed_at + self._interval - asyncio.get_running_loop().time()
        if wait <= 0:
            await self._apply()
        else:
            self._task = asyncio.create_task(self._later(wait))

    async def close(self) -> None:
        """The socket closed: uncount it if it was active. A change waiting is dropped;
        one under way is let finish (cut off, it would leave Redis claiming the user)."""
        self._closed = True
        task = self._task
        if task is not None:
            if not self._applying:
                task.cancel()
            await asyncio.wait({task})  # (its cancellation is not ours to raise)
            self._task = None  # (a task cancelled before it ran never got to say so)
        if self.counted:
            self.counted = False
            await self._attention.socket_closed(self.user_id)

    async def _later(self, wait: float) -> None:
        try:
            while not self._closed and self.wanted != self.counted:
                await asyncio.sleep(wait)
                self._applying = True
                try:
                    await self._apply()
                finally:
                    self._applying = False
                wait = self._interval
        except Exception as exc:  # close() still uncounts what is counted
            log.error("attention change failed user=%s %s", self.user_id, describe_unexpected(exc))
        finally:
            self._task = None

    async def _apply(self) -> None:
        if self._closed or self.wanted == self.counted:
            return
        self.counted = self.wanted
        self._changed_at = asyncio.get_running_loop().time()
        if self.counted:
            await self._attention.socket_opened(self.user_id)
        else:
            await self._attention.socket_closed(self.user_id)
