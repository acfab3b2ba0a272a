"""A push delay lives in the database: the delayed job outlives its node, goes out once
at its time on whichever node is up, and not at all once the message is read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.messenger.models import PushAttempt, PushDecision, PushJob
from tests.helpers import Client, Node, User, eventually, make_settings, start_node
from tests.push_world import PushWorld, start_push_world

D = "/api/v1/messenger/devices/register"


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("push-delay"))


@pytest.fixture(autouse=True)
def fresh(world: PushWorld) -> None:
    world.reset()


async def web_device(api: Client, user: User, world: PushWorld) -> str:
    token = world.webpush.subscribe()
    r = await api.http.post(
        D,
        json={"device_token": token, "platform": "web", "provider": "web_push"},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text
    return token


async def delay(api: Client, user: User, seconds: int) -> None:
    r = await api.http.put(
        "/api/v1/me/notification-settings",
        json={"push_delay_seconds": seconds},
        headers=user.headers,
    )
    assert r.status_code == 200, r.text


async def jobs(node: Node) -> list[Any]:
    async with node.services.engine.connect() as conn:
        return list(await conn.execute(select(PushJob)))


async def attempts(node: Node, message_ids: list[str]) -> list[Any]:
    async with node.services.engine.connect() as conn:
        return list(
            await conn.execute(select(PushAttempt).where(PushAttempt.message_id.in_(message_ids)))
        )


async def test_a_delayed_push_survives_its_node(world: PushWorld, db_url: str) -> None:
    # Recovery rounds an hour apart: the new node must find the delayed job by itself.
    settings = make_settings(db_url, **world.settings)
    first = await start_node(settings)
    api = Client(first)
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    token = await web_device(api, bob, world)
    await delay(api, bob, 3)
    message = (await api.send(alice, conv["id"], "are you there?")).json()
    await api.close()

    async def delayed_only() -> Any:
        held = [j for j in await jobs(first) if message["id"] in j.message_ids]
        return held[0] if len(held) == 1 and held[0].after_delay else None

    job = await eventually(delayed_only, what="the commit's job to become a delayed one")
    assert job.claimed_by is None and job.recipient_id == bob.id
    due = datetime.fromisoformat(message["created_at"]) + timedelta(seconds=3)
    assert job.lease_until == due
    await first.stop()
    assert world.webpush.received_for(token) == []

    second = await start_node(settings)
    try:
        [row] = await eventually(
            lambda: attempts(second, [message["id"]]), within=15, what="the delayed push"
        )
        assert row.outcome == "delivered" and (row.conversation_id, row.seq) == (conv["id"], 1)
        assert due <= row.created_at < due + timedelta(seconds=3)
        assert len(world.accepted("web_push", token)) == 1
        await eventually(lambda: _no_job_for(second, message["id"]), what="the job to end")
        async with second.services.engine.connect() as conn:
            [decision] = await conn.execute(
                select(PushDecision).where(PushDecision.user_id == bob.id)
            )
        assert (decision.reason, decision.message_id) == ("sent", message["id"])
    finally:
        await second.stop()


async def _no_job_for(node: Node, message_id: str) -> bool:
    return not any(message_id in j.message_ids for j in await jobs(node))


async def test_delayed_pushes_go_out_once_with_two_nodes(
    world: PushWorld, postgresql_url: str
) -> None:
    # Both nodes also look for due work every 0.1 s: they race for every delayed job.
    settings = make_settings(postgresql_url, **world.settings, push_recovery_interval_seconds=0.1)
    nodes = await asyncio.gather(start_node(settings), start_node(settings))
    apis = [Client(n) for n in nodes]
    try:
        sender = await apis[0].user()
        members = [await apis[0].user() for _ in range(12)]
        conv = await apis[0].conversation(sender, *members, title="Delayed")
        tokens = {}
        for m in members:
            tokens[m.id] = await web_device(apis[0], m, world)
            await delay(apis[0], m, 1)
        sent = []
        for i in range(6):  # sent through both nodes
            r = await apis[i % 2].send(sender, conv["id"], f"batch {i}")
            assert r.status_code == 201, r.text
            sent.append(r.json())
        ids = [m["id"] for m in sent]
        newest = sent[-1]

        async def newest_pushed() -> list[Any]:
            rows = await attempts(nodes[0], [newest["id"]])
            return rows if len(rows) >= len(members) else []

        await eventually(newest_pushed, within=20, what="every member's newest push")
        # Let any duplicate show itself: every job gone, then count.
        for m in sent:
            await eventually(lambda m=m: _no_job_for(nodes[0], m["id"]), what="the jobs to end")
        rows = await attempts(nodes[0], ids)
        # Messages planned together push the newest alone, which says how many: each
        # member has the newest, and no message twice.
        assert len({(r.message_id, r.user_id) for r in rows}) == len(rows)
        assert {r.user_id for r in rows if r.message_id == newest["id"]} == tokens.keys()
        for m in members:
            mine = [r for r in rows if r.user_id == m.id]
            assert len(world.accepted("web_push", tokens[m.id])) == len(mine)
        created = {m["id"]: datetime.fromisoformat(m["created_at"]) for m in sent}
        assert all(r.created_at >= created[r.message_id] + timedelta(seconds=1) for r in rows)
        # Every message is decided for every member once, `sent`, pushed or covered.
        async with nodes[0].services.engine.connect() as conn:
            runs = list(
                await conn.execute(
                    select(PushDecision).where(PushDecision.conversation_id == conv["id"])
                )
            )
        for m in members:
            seqs = [
                seq for r in runs if r.user_id == m.id for seq in range(r.first_seq, r.last_seq + 1)
            ]
            assert sorted(seqs) == [s["seq"] for s in sent]
            assert {r.reason for r in runs if r.user_id == m.id} == {"sent"}
    finally:
        for api in apis:
            await api.close()
        for n in nodes:
            await n.stop()
