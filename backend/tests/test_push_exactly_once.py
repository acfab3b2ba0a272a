"""Push work is held safely and boundedly: every job a node holds stays leased (queued,
planning, waiting for room, delivering, done but not yet recorded), a node deletes only
the jobs still its own, and deliveries planned but not finished are capped per node (and
the messages waiting to be planned: past that, jobs wait in the database)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import utcnow
from app.messenger.models import PushAttempt, PushJob
from tests.fakes import Mode
from tests.helpers import Client, Node, User, eventually, make_settings, push_job_of, start_node
from tests.push_world import PushWorld, start_push_world

D = "/api/v1/messenger/devices/register"


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("push-once"))


@pytest.fixture(autouse=True)
def fresh(world: PushWorld) -> None:
    world.reset()


async def web_device(api: Client, user: User, token: str) -> None:
    r = await api.http.post(
        D,
        json={"device_token": token, "platform": "web", "provider": "web_push"},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text


async def job_row(node: Node, message_id: str) -> PushJob | None:
    return await push_job_of(node.services.engine, message_id)


async def outcomes(node: Node, message_id: str) -> list[str]:
    async with node.services.engine.connect() as conn:
        rows = await conn.execute(
            select(PushAttempt.outcome).where(PushAttempt.message_id == message_id)
        )
        return sorted(rows.scalars())


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_a_node_whose_planning_is_slow_keeps_its_lease(
    world: PushWorld, postgresql_url: str
) -> None:
    # Leases of 2 s renewed every 0.2 s; a rival node looks for expired work every 0.1 s.
    holder = await start_node(
        make_settings(
            postgresql_url,
            **world.settings,
            push_lease_seconds=2.0,
            push_recovery_interval_seconds=0.2,
        )
    )
    rival = await start_node(
        make_settings(postgresql_url, **world.settings, push_recovery_interval_seconds=0.1)
    )
    api = Client(holder)
    blocker = create_async_engine(postgresql_url)
    try:
        alice, bob = await api.user(), await api.user()
        conv = await api.conversation(alice, bob)
        web = world.webpush.subscribe()
        await web_device(api, bob, web)

        async with blocker.connect() as lock:
            # Planning reads the devices: with their table locked it waits, job held.
            await lock.execute(text("LOCK TABLE device_tokens IN ACCESS EXCLUSIVE MODE"))
            message = (await api.send(alice, conv["id"], "slow to plan")).json()

            async def planning_waits() -> bool:
                async with blocker.connect() as conn:
                    waiting = await conn.scalar(
                        text(
                            "SELECT count(*) FROM pg_locks WHERE NOT granted"
                            " AND relation = 'device_tokens'::regclass"
                        )
                    )
                return bool(waiting)

            await eventually(planning_waits, what="planning to wait on the devices")
            first = await job_row(holder, message["id"])
            assert first is not None and first.claimed_by == holder.services.settings.node_id

            # The job's first lease ran out long ago; renewed, it is still the holder's.
            async def renewed_past_first_lease() -> bool:
                job = await job_row(holder, message["id"])
                assert job is not None
                assert job.claimed_by == holder.services.settings.node_id
                return job.lease_until > first.lease_until + timedelta(seconds=2)

            await eventually(renewed_past_first_lease, what="the lease to be renewed")
            await lock.rollback()

        await eventually(lambda: world.accepted("web_push", web), what="bob's push")

        async def done() -> bool:
            return await job_row(holder, message["id"]) is None

        await eventually(done, what="the job to be done")
        # Pushed once, by the holder: the rival never took it up.
        assert len(world.webpush.received_for(web)) == 1
        assert await outcomes(holder, message["id"]) == ["delivered"]
    finally:
        await api.close()
        await blocker.dispose()
        await rival.stop()
        await holder.stop()


async def test_a_node_that_lost_its_job_does_not_delete_it(
    world: PushWorld, postgresql_url: str
) -> None:
    node = await start_node(make_settings(postgresql_url, **world.settings))
    api = Client(node)
    try:
        alice, bob = await api.user(), await api.user()
        conv = await api.conversation(alice, bob)
        web = world.webpush.subscribe(Mode.HANG, Mode.OK)
        await web_device(api, bob, web)
        message = (await api.send(alice, conv["id"], "whose job is it")).json()
        await eventually(lambda: world.webpush.received_for(web), what="the first attempt")

        # Meanwhile the node stalled past its lease, and another node took the job over.
        async with node.services.engine.begin() as conn:
            await conn.execute(
                update(PushJob)
                .where(PushJob.id == (await job_row(node, message["id"])).id)  # type: ignore[union-attr]
                .values(claimed_by="new-owner", lease_until=utcnow() + timedelta(hours=1))
            )
        world.webpush.release_hanging()  # 503: retried, then delivered

        # The old node records its outcome (in the transaction that deletes done jobs)...
        await eventually(lambda: outcomes(node, message["id"]), what="the outcome")
        assert await outcomes(node, message["id"]) == ["delivered"]
        # ... and leaves the new owner's job alone.
        job = await job_row(node, message["id"])
        assert job is not None and job.claimed_by == "new-owner"
    finally:
        async with node.services.engine.begin() as conn:
            await conn.execute(delete(PushJob).where(PushJob.claimed_by == "new-owner"))
        await api.close()
        await node.stop()


async def test_pending_deliveries_are_capped_and_planning_waits(
    world: PushWorld, postgresql_url: str
) -> None:
    node = await start_node(
        make_settings(
            postgresql_url,
            **{
                **world.settings,
                "push_max_pending_deliveries": 2,
                "push_max_attempts": 1,
                "push_timeout_seconds": 30.0,
                "push_lease_seconds": 2.0,
                "push_recovery_interval_seconds": 0.2,
            },
        )
    )
    api = Client(node)
    try:
        alice, bob = await api.user(), await api.user()
        conv = await api.conversation(alice, bob)
        # The first two pushes hang until released; the rest are accepted.
        web = world.webpush.subscribe(Mode.HANG, Mode.HANG, Mode.OK)
        await web_device(api, bob, web)
        waiting = metric("messenger_push_deliveries_waiting")
        deferred = metric("messenger_push_jobs_deferred_total")
        sent = utcnow()

        async def send(content: str) -> dict:
            r = await api.send(alice, conv["id"], content)
            assert r.status_code == 201, r.text
            return dict(r.json())

        # Two deliveries fill the room (each sent once the one before is pushed: planned
        # in one batch, they would make one push); planning waits for room with the third.
        messages = [await send("m0")]
        await eventually(lambda: len(world.webpush.received_for(web)) == 1, what="one call")
        messages.append(await send("m1"))
        await eventually(lambda: len(world.webpush.received_for(web)) == 2, what="two calls")
        messages.append(await send("m2"))
        await eventually(
            lambda: metric("messenger_push_deliveries_waiting") == waiting + 1,
            what="planning to wait for room",
        )
        # Two more wait to be planned; beyond that a job is left in the database.
        messages += [await send("m3"), await send("m4"), await send("m5")]
        assert metric("messenger_push_jobs_deferred_total") == deferred + 1
        assert len(world.webpush.received_for(web)) == 2

        # Every job held (delivering, waiting for room, queued) is still the node's, leased
        # past its first lease; the one left in the database is not renewed.
        node_id = node.services.settings.node_id

        async def held_renewed() -> bool:
            jobs = [await job_row(node, m["id"]) for m in messages]
            assert all(j is not None and j.claimed_by == node_id for j in jobs)
            renewed = [j.lease_until > sent + timedelta(seconds=3) for j in jobs]  # type: ignore[union-attr]
            assert renewed[5] is False
            return all(renewed[:5])

        await eventually(held_renewed, what="the leases to be renewed")
        assert len(world.webpush.received_for(web)) == 2

        # The two give up; the rest go, the one left behind once its lease has run out.
        world.webpush.release_hanging()

        async def all_done() -> bool:
            return all([await job_row(node, m["id"]) is None for m in messages])

        await eventually(all_done, what="every job to be done")
        # m3 and m4 waited to be planned together: m4's push stands for both.
        assert len(world.webpush.received_for(web)) == 5
        assert len(world.accepted("web_push", web)) == 3
        assert [await outcomes(node, m["id"]) for m in messages] == [
            ["gave_up"],
            ["gave_up"],
            ["delivered"],
            [],
            ["delivered"],
            ["delivered"],
        ]
        assert metric("messenger_push_deliveries_waiting") == waiting
    finally:
        await api.close()
        await node.stop()
