"""The push planning loop: the ordinary queue plans a batch and starts its deliveries
before the next; the announcement lane plans its next batch while the last one's
deliveries wait for the lane's slots, one batch starting at a time, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncEngine

from app.messenger.presence import Presence
from app.messenger.push.service import PushService, Queued
from tests.helpers import eventually, make_settings


class Planner:
    """Stands in for the planning of a batch (deciding needs the database): records each
    batch, and gives a start that waits for its own gate, as deliveries wait for a slot."""

    def __init__(self) -> None:
        self.planned: list[list[int]] = []
        self.started: list[int] = []
        self.gates = [asyncio.Event() for _ in range(3)]

    async def plan(self, batch: list[Queued]) -> Coroutine[Any, Any, None]:
        self.planned.append(cast(list[int], batch))
        n = len(self.planned) - 1

        async def start() -> None:
            await self.gates[n].wait()
            self.started.append(n)

        return start()


async def run_loop(overlap: bool) -> tuple[Planner, PushService, asyncio.Task[None]]:
    service = PushService(
        make_settings("sqlite://"), cast(AsyncEngine, None), cast(Presence, None), providers={}
    )
    planner = Planner()
    service._plan = planner.plan  # type: ignore[method-assign]
    queue = cast(list[Queued], [1, 2, 3, 4, 5, 6])
    wake = asyncio.Event()
    wake.set()
    loop = asyncio.create_task(service._plan_loop(queue, wake, 2, overlap=overlap))
    return planner, service, loop


async def stop(service: PushService, loop: asyncio.Task[None]) -> None:
    for task in (loop, service._starting):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_lane_plans_one_batch_ahead_and_starts_them_in_order() -> None:
    planner, service, loop = await run_loop(overlap=True)
    try:
        # The first batch's deliveries wait for slots: the second is planned meanwhile,
        # and no third until the first has started.
        await eventually(lambda: len(planner.planned) == 2, what="the second batch planned")
        await asyncio.sleep(0.05)
        assert planner.planned == [[1, 2], [3, 4]]
        assert planner.started == []
        # The second batch's slots free up first: its deliveries still start after the
        # first batch's.
        planner.gates[1].set()
        await asyncio.sleep(0.05)
        assert planner.started == []
        planner.gates[0].set()
        await eventually(lambda: len(planner.planned) == 3, what="the third batch planned")
        planner.gates[2].set()
        await eventually(lambda: planner.started == [0, 1, 2], what="all started, in order")
    finally:
        await stop(service, loop)


async def test_the_ordinary_queue_starts_a_batch_before_planning_the_next() -> None:
    planner, service, loop = await run_loop(overlap=False)
    try:
        await eventually(lambda: len(planner.planned) == 1, what="the first batch planned")
        await asyncio.sleep(0.05)
        assert len(planner.planned) == 1
        planner.gates[0].set()
        await eventually(lambda: len(planner.planned) == 2, what="the second batch planned")
        assert planner.started == [0]
    finally:
        await stop(service, loop)
