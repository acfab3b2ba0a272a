"""The announcement lane: a second, lower-priority push queue.

An announcement hands tens of thousands of pushes to the push service at once. Put in
the ordinary queue, they would be planned ahead of the messages committed after them,
and their deliveries would take every provider slot: an ordinary message's push would
wait for the whole announcement. So announcement pushes go to this lane instead: its
own queue and planning loop (ordinary planning never waits behind it), and at most
`cap` of its deliveries in flight at once, well under each provider's limit, so the
rest of each provider's slots are always free for ordinary pushes.

Its work also waits for a quiet turn of the event loop (`quiet_turn`) before each
delivery it starts: while the node is busy with sockets and sends, the lane slows down
by itself, and takes up the slack when they are idle.

The lane also tells the announcement job how much is waiting (it slows down to keep
the backlog bounded) and when the pushes of its chunks are recorded done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")

SHARE = 2  # the lane takes at most 1/SHARE of the smallest provider's in-flight limit
QUIET_LAG = 0.002  # seconds: a loop turn shorter than this means little else waits
PAUSE = 0.005  # seconds to step aside when the loop is busy
MAX_WAIT = 0.1  # at most this long per turn asked for, so the work still moves under load


async def quiet_turn() -> None:
    """Return once a turn of the event loop runs quickly (ordinary work is not waiting),
    or after MAX_WAIT: background work calls this so that sends and frames go first."""
    loop = asyncio.get_running_loop()
    waited = 0.0
    while True:
        started = loop.time()
        await asyncio.sleep(0)
        if loop.time() - started < QUIET_LAG or waited >= MAX_WAIT:
            return
        await asyncio.sleep(PAUSE)
        waited += PAUSE


def lane_cap(wanted: int, provider_limits: Mapping[str, int], room: int) -> int:
    """How many announcement deliveries may be in flight at once: `wanted`, but never
    more than half of any provider's limit or of the node's room for deliveries."""
    limits = [*provider_limits.values(), room]
    return max(1, min(wanted, *(limit // SHARE for limit in limits)))


class Lane(Generic[T]):
    def __init__(self) -> None:
        self.queue: list[T] = []
        self.wake = asyncio.Event()
        # Deliveries in flight; made at start, once the providers' limits are known.
        self.cap = asyncio.Semaphore(1)
        # Set whenever the queue shrinks or a job is recorded done.
        self._progress = asyncio.Event()
        # Message ids of this lane with pushes not yet recorded (kind "announcement").
        self.messages: set[str] = set()

    def add(self, items: list[T], message_ids: Collection[str]) -> None:
        self.queue += items
        self.messages.update(message_ids)
        self.wake.set()

    def progressed(self) -> None:
        self._progress.set()

    async def wait_below(self, limit: int) -> None:
        """Until fewer than `limit` items wait to be planned."""
        while len(self.queue) >= limit:
            self._progress.clear()
            await self._progress.wait()

    async def wait_done(self, jobs: Collection[str], held: Mapping[str, object]) -> None:
        """Until none of these jobs is held any more (recorded done, or let go)."""
        while any(job in held for job in jobs):
            self._progress.clear()
            await self._progress.wait()
