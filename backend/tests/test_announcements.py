"""Announcements: admins broadcast to everyone or a list; each recipient gets it in their
read-only Announcements conversation, live or pushed; the job is durable and batched,
and its pushes never hold up ordinary ones."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import utcnow
from app.messenger import broadcast
from app.messenger.broadcast import Broadcasts, client_msg_id
from app.messenger.broadcast_chunk import TITLE
from app.messenger.models import Announcement, Conversation, Message, PushJob, ScheduledMessage
from app.models import User
from tests.cluster import Cluster, connect
from tests.conftest import migrate, migrated_database
from tests.fakes import Mode
from tests.helpers import (
    Client,
    Node,
    Socket,
    eventually,
    iso_from_now,
    make_settings,
    start_node,
)
from tests.helpers import User as Account
from tests.push_world import PushWorld, start_push_world

pytest_plugins = ["tests.cluster_fixtures"]

A = "/api/v1/admin/announcements"
D = "/api/v1/messenger/devices/register"
C = "/api/v1/messenger/conversations"
LIMIT = 4  # PUSH_CONCURRENCY: the announcement lane may hold 2 of each provider's slots


@dataclass
class World:
    node: Node
    client: Client
    push: PushWorld

    @property
    def engine(self) -> AsyncEngine:
        engine: AsyncEngine = self.node.services.engine
        return engine


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """A node on a database of its own ("everyone" is every user there), with the push
    fakes, small chunks (several per announcement) and a small push limit."""
    async with AsyncExitStack() as stack:
        directory = tmp_path_factory.mktemp("announcements")
        push = await start_push_world(stack, directory)
        url = await stack.enter_async_context(migrated_database(request.param, directory))
        settings = {
            **push.settings,
            "push_concurrency": LIMIT,
            "push_timeout_seconds": 30.0,  # a hanging call keeps its slot through a test
            "announcement_chunk": 3,
            "announcement_poll_seconds": 0.05,
            "announcement_rate_per_hour": 100_000,
            "announcement_burst": 100_000,
            # Recipients who were looking and then left are pushed within a second.
            "push_recheck_interval_seconds": 0.2,
        }
        node = await start_node(make_settings(url, **settings))
        stack.push_async_callback(node.stop)
        client = Client(node)
        stack.push_async_callback(client.close)
        yield World(node, client, push)


async def admin_of(world: World) -> Account:
    admin = await world.client.user()
    async with world.engine.begin() as conn:
        await conn.execute(update(User).where(User.id == admin.id).values(is_admin=True))
    return admin


async def web_device(world: World, user: Account, *modes: Mode) -> str:
    token = world.push.webpush.subscribe(*modes)
    r = await world.client.http.post(
        D,
        json={"device_token": token, "platform": "web", "provider": "web_push"},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text
    return token


async def announce(world: World, admin: Account, **body: Any) -> str:
    r = await world.client.http.post(
        A, json={"title": "Maintenance", "content": "down at 2am", **body}, headers=admin.headers
    )
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "sending"
    announcement_id: str = r.json()["id"]
    return announcement_id


async def finished(world: World, admin: Account, announcement_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        r = await world.client.http.get(f"{A}/{announcement_id}", headers=admin.headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body if body["status"] == "done" else None

    result: dict[str, Any] = await eventually(done, within=20.0, what="the announcement done")
    return result


async def held_announcement(
    world: World,
    admin: Account,
    user_ids: list[int],
    node_id: str,
    announcement_id: str | None = None,
    lease: timedelta = timedelta(hours=1),
) -> Any:
    """An announcement to `user_ids`, sending, its lease held by `node_id`: the row."""
    a = Announcement.__table__
    announcement_id = announcement_id or str(uuid.uuid4())
    async with world.engine.begin() as conn:
        await conn.execute(
            insert(a).values(
                id=announcement_id,
                created_by=admin.id,
                title="Maintenance",
                content="down at 2am",
                audience="list",
                user_ids=user_ids,
                status="sending",
                claimed_by=node_id,
                lease_until=utcnow() + lease,
                created_at=utcnow(),
            )
        )
        return (await conn.execute(select(a).where(a.c.id == announcement_id))).one()


async def ordinary_push_goes_first(
    world: World, sender: Account, conversation_id: str, token: str, held: list[str]
) -> None:
    """An ordinary message's push arrives at once, while the announcement's pushes to the
    `held` devices still hang in the lane (every one of its slots taken)."""
    r = await world.client.send(sender, conversation_id, "ordinary")
    assert r.status_code == 201
    await eventually(
        lambda: world.push.accepted("web_push", token), within=5.0, what="the ordinary push"
    )
    assert world.node.services.push.lane.cap.locked()
    assert not any(world.push.accepted("web_push", t) for t in held)


async def announcement_messages(engine: AsyncEngine, announcement_id: str) -> list[Any]:
    """(recipient, seq, last_seq) of each message the announcement wrote."""
    c, m = Conversation.__table__.c, Message.__table__.c
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(c.created_by, m.seq, c.last_seq, c.type)
                    .join(Conversation.__table__, c.id == m.conversation_id)
                    .where(m.client_msg_id == client_msg_id(announcement_id))
                )
            ).all()
        )


async def test_only_admins_may_announce(world: World) -> None:
    user = await world.client.user()
    body = {"title": "t", "content": "c"}
    assert (await world.client.http.post(A, json=body)).status_code == 401
    r = await world.client.http.post(A, json=body, headers=user.headers)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    r = await world.client.http.get(f"{A}/whatever", headers=user.headers)
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"title": "x" * 201, "content": "c"}, "invalid_field"),
        ({"title": "", "content": "c"}, "invalid_field"),
        ({"title": "t", "content": "   "}, "empty_content"),
        ({"title": "t", "content": "x" * 4001}, "message_too_long"),
        ({"title": "t", "content": "c", "user_ids": []}, "invalid_field"),
        ({"title": "t", "content": "c", "user_ids": ["1"]}, "invalid_field"),
        ({"title": "t", "content": "c", "user_ids": [0]}, "invalid_field"),
        ({"title": "t", "content": "c", "user_ids": list(range(1, 100_002))}, "invalid_field"),
    ],
)
async def test_bad_input_is_refused(world: World, body: dict[str, Any], code: str) -> None:
    admin = await admin_of(world)
    r = await world.client.http.post(A, json=body, headers=admin.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code


async def test_an_unknown_announcement_is_404(world: World) -> None:
    admin = await admin_of(world)
    r = await world.client.http.get(f"{A}/no-such-one", headers=admin.headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "announcement_not_found"


async def test_a_list_gets_it_live_or_pushed_and_muting_silences_it(world: World) -> None:
    api = world.client
    admin = await admin_of(world)
    online, pushed, muted = await api.user(), await api.user(), await api.user()
    pushed_token = await web_device(world, pushed)
    muted_token = await web_device(world, muted)
    socket = await Socket.connect(world.node, online)
    try:
        await socket.send({"type": "ping"})
        await socket.expect("pong")
        # The first makes the muted user's Announcements conversation; they mute it.
        first = await announce(world, admin, user_ids=[muted.id])
        await finished(world, admin, first)
        r = await api.http.get(C, headers=muted.headers)
        (conversation,) = [c for c in r.json()["conversations"] if c["type"] == "announcement"]
        assert conversation["title"] == TITLE
        r = await api.http.put(
            f"{C}/{conversation['id']}/settings", json={"muted": True}, headers=muted.headers
        )
        assert r.status_code == 200, r.text
        world.push.reset()

        unknown = 2_000_000_000
        ids = [online.id, pushed.id, muted.id, unknown]
        announcement_id = await announce(world, admin, user_ids=ids)
        frame = await socket.expect("message.new")
        assert frame["message"]["sender_id"] == admin.id
        assert frame["message"]["content"] == "Maintenance\n\ndown at 2am"
        report = await finished(world, admin, announcement_id)
        assert report["recipients"] == 3
        assert report["failed"] == 1  # the unknown id
        assert report["delivered_live"] == 1
        assert report["pushed"] == 1
        assert report["finished_at"] is not None
        accepted = world.push.accepted("web_push", pushed_token)
        assert len(accepted) == 1
        assert accepted[0].payload is not None
        assert world.push.accepted("web_push", muted_token) == []
        # One message each, in each one's own Announcements conversation.
        rows = await announcement_messages(world.engine, announcement_id)
        assert sorted(r.created_by for r in rows) == sorted([online.id, pushed.id, muted.id])
        assert {r.type for r in rows} == {"announcement"}
    finally:
        await socket.close()


async def test_nobody_may_send_into_the_announcements_conversation(world: World) -> None:
    api = world.client
    admin = await admin_of(world)
    user = await api.user()
    await finished(world, admin, await announce(world, admin, user_ids=[user.id]))
    r = await api.http.get(C, headers=user.headers)
    (conversation,) = [c for c in r.json()["conversations"] if c["type"] == "announcement"]
    assert conversation["participant_ids"] == [user.id]
    r = await api.send(user, conversation["id"], "hello?")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "read_only"
    # Over a socket too.
    socket = await Socket.connect(world.node, user)
    try:
        await socket.send(
            {
                "type": "message.send",
                "conversation_id": conversation["id"],
                "content": "hello?",
                "client_msg_id": "x1",
            }
        )
        error = await socket.expect("error")
        assert error["code"] == "read_only"
    finally:
        await socket.close()
    # The admin is no participant either.
    r = await api.send(admin, conversation["id"], "hello")
    assert r.status_code == 403
    # A second announcement lands in the same conversation, next seq.
    second = await announce(world, admin, user_ids=[user.id])
    await finished(world, admin, second)
    messages = await api.messages(user, conversation["id"])
    assert [m["seq"] for m in messages] == [1, 2] or [m["seq"] for m in messages] == [2, 1]


async def test_to_everyone_each_user_gets_it_once(world: World) -> None:
    admin = await admin_of(world)
    await world.client.user()
    async with world.engine.connect() as conn:
        users = await conn.scalar(select(func.count()).select_from(User.__table__))
    announcement_id = await announce(world, admin)
    report = await finished(world, admin, announcement_id)
    assert report["recipients"] == users
    assert report["failed"] == 0
    rows = await announcement_messages(world.engine, announcement_id)
    assert len(rows) == users
    assert len({r.created_by for r in rows}) == users
    # No gap: each conversation's newest seq is the announcement's message.
    assert all(r.seq == r.last_seq for r in rows)


async def test_a_job_left_by_a_dead_node_is_resumed_with_no_duplicate_and_no_gap(
    world: World,
) -> None:
    api = world.client
    admin = await admin_of(world)
    users = [await api.user() for _ in range(7)]
    ids = sorted(u.id for u in users)
    announcement_id = "00000000-dead-4000-8000-" + ids[0].to_bytes(6, "big").hex()
    row = await held_announcement(world, admin, ids, "dead-node", announcement_id)
    a = Announcement.__table__
    # The dead node wrote its first chunk (cursor in the middle), then died.
    node = world.node.services
    dead = Broadcasts(
        node.engine,
        make_settings("sqlite://", node_id="dead-node", announcement_chunk=3),
        node.presence,
        node.fanout,
        node.push,
    )
    await dead._write_chunk(row, ids[:3])
    async with world.engine.begin() as conn:
        await conn.execute(
            update(a)
            .where(a.c.id == announcement_id)
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )
        # Its push job's lease runs out too; a node takes it up (now, not at its next
        # recovery round), and the announcement is done only once that job is.
        await conn.execute(
            update(PushJob)
            .where(PushJob.announcement_id == announcement_id)
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )
    assert await node.push.recover() == 1
    report = await finished(world, admin, announcement_id)
    assert report["recipients"] == 7
    assert report["failed"] == 0
    rows = await announcement_messages(world.engine, announcement_id)
    assert sorted(r.created_by for r in rows) == ids  # each once: no duplicate, no gap
    assert all(r.seq == r.last_seq for r in rows)


async def test_progress_is_readable_while_it_runs_and_ordinary_pushes_go_first(
    world: World,
) -> None:
    """Announcement pushes to a provider that hangs take the lane's slots (half the
    provider's); an ordinary message's push is still accepted at once meanwhile."""
    api = world.client
    admin = await admin_of(world)
    slow = [await api.user() for _ in range(5)]
    slow_tokens = [await web_device(world, u, Mode.HANG) for u in slow]
    alice, carol = await api.user(), await api.user()
    carol_token = await web_device(world, carol)
    to_carol = await api.conversation(alice, carol)
    push = world.node.services.push
    try:
        announcement_id = await announce(world, admin, user_ids=[u.id for u in slow])
        # Two announcement pushes hang in the lane's slots; the rest wait in the lane.
        await eventually(lambda: push.lane.cap.locked(), what="the lane's slots all taken")

        async def progress() -> dict[str, Any] | None:
            r = await api.http.get(f"{A}/{announcement_id}", headers=admin.headers)
            body: dict[str, Any] = r.json()
            # Its second chunk may still be under way when the first's pushes hang.
            return body if body["recipients"] == 5 else None

        running = await eventually(progress, what="both chunks written")
        assert running["status"] == "sending"
        assert running["pushed"] == 0
        await ordinary_push_goes_first(world, alice, to_carol["id"], carol_token, slow_tokens)
    finally:
        for token in slow_tokens:
            sub_id = json.loads(token)["endpoint"].rsplit("/", 1)[1]
            world.push.webpush.modes.set(sub_id, Mode.OK)
        world.push.webpush.release_hanging()
    report = await finished(world, admin, announcement_id)
    assert report["pushed"] == 5
    world.push.reset()


async def test_re_checked_announcement_pushes_stay_behind_ordinary_pushes(world: World) -> None:
    """Recipients who were looking when it arrived and then left are pushed by the
    re-check: those pushes go to the announcement lane too. With the provider hanging on
    them, they hold the lane's slots only, and an ordinary push still goes out at once."""
    api = world.client
    admin = await admin_of(world)
    slow = [await api.user() for _ in range(5)]
    slow_tokens = [await web_device(world, u, Mode.HANG) for u in slow]
    slow_subs = {json.loads(t)["endpoint"].rsplit("/", 1)[1] for t in slow_tokens}
    alice, carol = await api.user(), await api.user()
    carol_token = await web_device(world, carol)
    to_carol = await api.conversation(alice, carol)
    sockets = [await Socket.connect(world.node, u) for u in slow]
    try:
        announcement_id = await announce(world, admin, user_ids=[u.id for u in slow])
        for socket in sockets:
            await socket.expect("message.new")
        report = await finished(world, admin, announcement_id)
        assert (report["delivered_live"], report["pushed"]) == (5, 0)  # all were looking
        for socket in sockets:
            await socket.close()
        # They left without reading: the re-check pushes them, two at a time (the lane's).
        await eventually(
            lambda: len([r for r in world.push.webpush.received if r.sub_id in slow_subs]) >= 2,
            what="the re-check's pushes under way",
        )
        async with world.engine.connect() as conn:
            marked = set(
                (
                    await conn.execute(
                        select(PushJob.announcement_id).where(
                            PushJob.recipient_id.in_([u.id for u in slow])
                        )
                    )
                ).scalars()
            )
        assert marked == {announcement_id}  # taken up into the lane by any node, too
        await ordinary_push_goes_first(world, alice, to_carol["id"], carol_token, slow_tokens)
    finally:
        for socket in sockets:
            await socket.close()
        for sub_id in slow_subs:
            world.push.webpush.modes.set(sub_id, Mode.OK)
        world.push.webpush.release_hanging()
    await eventually(
        lambda: all(world.push.accepted("web_push", t) for t in slow_tokens),
        within=40.0,
        what="the re-check's pushes once the provider answers",
    )
    world.push.reset()


async def test_every_socket_on_every_node_gets_it(cluster: Cluster) -> None:
    a, b = await cluster.node(announcement_poll_seconds=0.05), await cluster.node()
    await eventually(lambda: cluster.subscribed(a, b), what="both nodes subscribed")
    api = Client(a)
    try:
        admin = await api.user()
        async with a.services.engine.begin() as conn:
            await conn.execute(update(User).where(User.id == admin.id).values(is_admin=True))
        bob = await api.user()
        on_a, on_b = await connect(a, bob), await connect(b, bob)
        try:
            r = await api.http.post(
                A,
                json={"title": "Hi", "content": "all", "user_ids": [bob.id]},
                headers=admin.headers,
            )
            assert r.status_code == 202, r.text
            for socket in (on_a, on_b):
                frame = await socket.expect("message.new")
                assert frame["message"]["client_msg_id"] == client_msg_id(r.json()["id"])
        finally:
            await on_a.close()
            await on_b.close()
    finally:
        await api.close()


async def test_each_admin_has_a_rate(tmp_path_factory: pytest.TempPathFactory) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('announcement-rate') / 'm.db'}"
    await migrate(url)
    node = await start_node(make_settings(url, announcement_rate_per_hour=1, announcement_burst=1))
    api = Client(node)
    try:
        admin, other = await api.user(), await api.user()
        async with node.services.engine.begin() as conn:
            await conn.execute(
                update(User).where(User.id.in_([admin.id, other.id])).values(is_admin=True)
            )
        body = {"title": "t", "content": "c", "user_ids": [admin.id]}
        assert (await api.http.post(A, json=body, headers=admin.headers)).status_code == 202
        r = await api.http.post(A, json=body, headers=admin.headers)
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["Retry-After"]) > 0
        # Another admin's bucket is their own.
        assert (await api.http.post(A, json=body, headers=other.headers)).status_code == 202
    finally:
        await api.close()
        await node.stop()


async def announcements_conversation(world: World, user: Account) -> str:
    r = await world.client.http.get(C, headers=user.headers)
    (conversation,) = [c for c in r.json()["conversations"] if c["type"] == "announcement"]
    conversation_id: str = conversation["id"]
    return conversation_id


async def test_quiet_hours_notify_none_blocks_and_delay_do_not_hold_it_muting_does(
    world: World,
) -> None:
    api = world.client
    admin = await admin_of(world)
    quiet, silent, blocking, delayed, muted = [await api.user() for _ in range(5)]
    tokens = {u.id: await web_device(world, u) for u in (quiet, silent, blocking, delayed, muted)}
    first = await announce(world, admin, user_ids=[silent.id, muted.id])
    await finished(world, admin, first)
    world.push.reset()
    now = utcnow()
    window = {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=1)).strftime("%H:%M"),
    }
    settings = "/api/v1/me/notification-settings"
    r = await api.http.put(settings, json={"quiet_hours": window}, headers=quiet.headers)
    assert r.status_code == 200, r.text
    r = await api.http.put(settings, json={"push_delay_seconds": 600}, headers=delayed.headers)
    assert r.status_code == 200, r.text
    r = await api.http.put(f"/api/v1/me/blocks/{admin.id}", headers=blocking.headers)
    assert r.status_code in (200, 201, 204), r.text
    for user, change in ((silent, {"notify": "none"}), (muted, {"muted": True})):
        conversation_id = await announcements_conversation(world, user)
        r = await api.http.put(f"{C}/{conversation_id}/settings", json=change, headers=user.headers)
        assert r.status_code == 200, r.text

    announcement_id = await announce(
        world, admin, user_ids=[quiet.id, silent.id, blocking.id, delayed.id, muted.id]
    )
    report = await finished(world, admin, announcement_id)
    # Everyone but the one who muted it got the push, at once (no delay of minutes).
    assert report["pushed"] == 4
    for user in (quiet, silent, blocking, delayed):
        assert len(world.push.accepted("web_push", tokens[user.id])) == 1
    assert world.push.accepted("web_push", tokens[muted.id]) == []
    world.push.reset()


async def test_every_push_failed_counts_as_failed(world: World) -> None:
    api = world.client
    admin = await admin_of(world)
    fine, broken = await api.user(), await api.user()
    await web_device(world, fine)
    await web_device(world, broken, Mode.DEAD)
    announcement_id = await announce(world, admin, user_ids=[fine.id, broken.id])
    report = await finished(world, admin, announcement_id)
    assert report["recipients"] == 2
    assert report["pushed"] == 1
    assert report["failed"] == 1  # every device of `broken` refused it
    world.push.reset()


async def test_read_only_holds_beyond_the_participant_cache(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """With room for one conversation in the cache, read-only conversations pushed out of
    it still refuse sends, reactions and typing."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('announcement-cache') / 'm.db'}"
    await migrate(url)
    node = await start_node(
        make_settings(url, participant_cache_size=1, announcement_poll_seconds=0.05)
    )
    api = Client(node)
    world = World(node, api, None)  # type: ignore[arg-type]  # no pushes here
    try:
        admin = await admin_of(world)
        users = [await api.user() for _ in range(3)]
        await finished(world, admin, await announce(world, admin, user_ids=[u.id for u in users]))
        conversations = [await announcements_conversation(world, u) for u in users]
        for user, conversation_id in zip(users, conversations, strict=True):
            # Another conversation read in between takes the cache's one place.
            other = await api.conversation(user, admin)
            await api.messages(user, other["id"])
            r = await api.send(user, conversation_id, "hello?")
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "read_only"
        [message] = await api.messages(users[0], conversations[0])
        r = await api.http.put(
            f"{C}/{conversations[0]}/messages/{message['id']}/reactions/%F0%9F%91%8D",
            headers=users[0].headers,
        )
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "read_only"
        socket = await Socket.connect(node, users[1])
        try:
            await socket.send({"type": "typing", "conversation_id": conversations[1]})
            error = await socket.expect("error")
            assert error["code"] == "read_only"
        finally:
            await socket.close()
    finally:
        await api.close()
        await node.stop()


async def test_a_taken_over_announcement_job_stays_behind_ordinary_pushes(world: World) -> None:
    """A push job of an announcement whose node died is taken up into the low-priority
    lane: with its pushes hanging, an ordinary push still goes out at once."""
    api = world.client
    admin = await admin_of(world)
    slow = [await api.user() for _ in range(5)]
    slow_tokens = [await web_device(world, u, Mode.HANG) for u in slow]
    alice, carol = await api.user(), await api.user()
    carol_token = await web_device(world, carol)
    to_carol = await api.conversation(alice, carol)
    node = world.node.services
    a = Announcement.__table__
    announcement_id = "00000000-0000-4000-8000-" + slow[0].id.to_bytes(6, "big").hex()
    row = await held_announcement(world, admin, [u.id for u in slow], "dead-node", announcement_id)
    dead = Broadcasts(
        node.engine,
        make_settings("sqlite://", node_id="dead-node", announcement_chunk=5),
        node.presence,
        node.fanout,
        node.push,
    )
    await dead._write_chunk(row, sorted(u.id for u in slow))
    async with world.engine.begin() as conn:
        await conn.execute(
            update(PushJob)
            .where(PushJob.announcement_id == announcement_id)
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )
    push = node.push
    try:
        assert await push.recover() == 1
        await eventually(lambda: push.lane.cap.locked(), what="the lane's slots all taken")
        await ordinary_push_goes_first(world, alice, to_carol["id"], carol_token, slow_tokens)
    finally:
        for token in slow_tokens:
            sub_id = json.loads(token)["endpoint"].rsplit("/", 1)[1]
            world.push.webpush.modes.set(sub_id, Mode.OK)
        world.push.webpush.release_hanging()
        async with world.engine.begin() as conn:
            await conn.execute(update(a).where(a.c.id == announcement_id).values(status="done"))
    await eventually(
        lambda: all(world.push.accepted("web_push", t) for t in slow_tokens),
        within=40.0,
        what="the announcement's pushes once the provider answers",
    )
    world.push.reset()


async def test_a_chunks_push_job_is_leased_by_the_database_clock(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose clock runs an hour ahead writes a chunk: its push job's lease ends
    one push lease after the database's now(), as every lease does, not an hour later
    (which would strand the job if that node died)."""
    if world.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serves one node: its clock is the database's")
    admin = await admin_of(world)
    ids = sorted([(await world.client.user()).id for _ in range(2)])
    row = await held_announcement(world, admin, ids, "skewed-node", lease=timedelta(minutes=5))
    announcement_id = row.id
    a = Announcement.__table__
    node = world.node.services
    settings = make_settings("sqlite://", node_id="skewed-node")
    skewed = Broadcasts(node.engine, settings, node.presence, node.fanout, node.push)
    monkeypatch.setattr(broadcast, "utcnow", lambda: utcnow() + timedelta(hours=1))

    async def database_now() -> Any:
        async with world.engine.connect() as conn:
            return await conn.scalar(select(func.now()))

    before = await database_now()
    chunk = await skewed._write_chunk(row, ids)
    after = await database_now()
    try:
        async with world.engine.connect() as conn:
            lease_until = await conn.scalar(
                select(PushJob.lease_until).where(PushJob.id == chunk.job_id)
            )
        lease = timedelta(seconds=settings.push_lease_seconds)
        assert before + lease <= lease_until <= after + lease
    finally:
        async with world.engine.begin() as conn:
            await conn.execute(PushJob.__table__.delete().where(PushJob.id == chunk.job_id))
            await conn.execute(update(a).where(a.c.id == announcement_id).values(status="done"))


async def test_no_other_way_of_writing_gets_into_the_announcements_conversation(
    world: World,
) -> None:
    """Scheduling, a reply from the push, a bot, a webhook, an edit or a deletion: each is
    refused (403), and the conversation holds the announcement alone."""
    api = world.client
    admin = await admin_of(world)
    user = await api.user()
    token = await web_device(world, user)
    r = await api.http.post(
        "/api/v1/me/bots", json={"username": f"b{user.id}"}, headers=user.headers
    )
    assert r.status_code == 201, r.text
    bot = Account(r.json()["id"], r.json()["username"], r.json()["token"], "bot")
    world.push.reset()
    await finished(world, admin, await announce(world, admin, user_ids=[user.id, bot.id]))
    conversation_id = await announcements_conversation(world, user)
    [message] = await api.messages(user, conversation_id)
    path = f"{C}/{conversation_id}"

    r = await api.send(user, conversation_id, "later", send_at=iso_from_now(3600))
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "read_only"
    [pushed] = world.push.accepted("web_push", token)
    assert pushed.payload is not None
    # Mark as read is offered; Reply is not (and refused, should a client try it).
    assert [a["action"] for a in pushed.payload["actions"]] == ["read"]
    r = await api.http.post(
        "/api/v1/messenger/notification-actions/reply",
        json={"action_token": pushed.payload["action_token"], "content": "from the lock screen"},
    )
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "read_only"
    r = await api.send(bot, await announcements_conversation(world, bot), "beep")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "read_only"
    r = await api.http.post(f"{path}/webhooks", json={"name": "hook"}, headers=user.headers)
    assert r.status_code == 403, r.text
    r = await api.http.patch(
        f"{path}/messages/{message['id']}", json={"content": "mine now"}, headers=user.headers
    )
    assert r.status_code == 403, r.text
    r = await api.http.delete(f"{path}/messages/{message['id']}", headers=user.headers)
    assert r.status_code == 403, r.text

    assert await api.messages(user, conversation_id) == [message]
    r = await api.http.get("/api/v1/messenger/scheduled", headers=user.headers)
    assert r.json()["scheduled"] == []
    world.push.reset()


async def test_a_scheduled_message_into_it_fails_when_due_and_sends_nothing(
    world: World,
) -> None:
    """Firing checks again: a scheduled row for the Announcements conversation (however
    it got there) fails `read_only` at its time and writes no message."""
    api = world.client
    admin = await admin_of(world)
    user = await api.user()
    await finished(world, admin, await announce(world, admin, user_ids=[user.id]))
    conversation_id = await announcements_conversation(world, user)
    before = await api.messages(user, conversation_id)
    scheduled_id = str(uuid.uuid4())
    async with world.engine.begin() as conn:
        await conn.execute(
            insert(ScheduledMessage).values(
                id=scheduled_id,
                conversation_id=conversation_id,
                sender_id=user.id,
                content="sneaking in",
                send_at=utcnow() - timedelta(seconds=1),
                status="pending",
                created_at=utcnow(),
            )
        )

    async def failed() -> Any:
        async with world.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(ScheduledMessage.status, ScheduledMessage.error).where(
                        ScheduledMessage.id == scheduled_id
                    )
                )
            ).one()
        return row if row.status != "pending" else None

    row = await eventually(failed, what="the scheduled message fired")
    assert (row.status, row.error) == ("failed", "read_only")
    assert await api.messages(user, conversation_id) == before


async def test_counting_reads_the_attempts_by_message_alone() -> None:
    """The count of an announcement's pushes finds its attempts through their messages,
    with no bound on their time: on tables never analysed, PostgreSQL paired such a bound
    with the message index and read every attempt of the announcement once per message
    (52 s for 100,000 recipients, past the statement timeout)."""
    query = str(broadcast.push_counts_query(str(uuid.uuid4()), 1))
    assert "push_attempts.message_id" in query
    assert "push_attempts.created_at" not in query


async def test_a_count_that_keeps_failing_still_finishes_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count at the end fails at every try (a statement timeout, say): the
    announcement is recorded done with its counts as they stand, not claimed again and
    counted again after every lease for ever."""
    admin = await admin_of(world)
    user = await world.client.user()

    async def failing(*_: Any) -> broadcast.PushCounts:
        raise RuntimeError("canceling statement due to statement timeout")

    monkeypatch.setattr(broadcast, "push_counts", failing)
    monkeypatch.setattr(broadcast, "FINAL_COUNT_BACKOFF", 0.0)
    report = await finished(world, admin, await announce(world, admin, user_ids=[user.id]))
    assert (report["recipients"], report["pushed"], report["failed"]) == (1, 0, 0)
