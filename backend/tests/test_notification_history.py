"""The notification history: one notification per (user, message) with its deliveries,
its id in every provider's payload, opens, dismissing, the unread count, the test push
to one's own devices, the reasons `failed` and `dead_token`, what the send path pays
for it, and the batched cleanup of old push records."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, func, insert, select, text, update

from app.db import utcnow
from app.messenger.action_tokens import issue_action_token
from app.messenger.batched_delete import BATCH
from app.messenger.cleanup import run_cleanup
from app.messenger.models import DeviceToken, Notification, PushAttempt, PushDecision
from app.notification_history import MAX_LIMIT, TEST_PUSH_BURST
from tests.fakes import Mode
from tests.helpers import Client, Node, User, eventually, make_settings, start_node
from tests.push_world import PushWorld, start_push_world

D = "/api/v1/messenger/devices"
N = "/api/v1/me/notifications"
TEST_PUSH = "/api/v1/me/devices/test-push"


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("history"))


def _settings(url: str, world: PushWorld) -> Any:
    # One quick retry, so a provider that is down is given up on at once.
    return make_settings(
        url,
        **{
            **world.settings,
            "push_max_attempts": 2,
            "push_backoff_base_seconds": 0.01,
            "push_backoff_max_seconds": 0.02,
        },
    )


@pytest.fixture(scope="module")
async def pg_push_node(world: PushWorld, postgresql_url: str) -> AsyncIterator[Node]:
    node = await start_node(_settings(postgresql_url, world))
    yield node
    await node.stop()


@pytest.fixture(scope="module")
async def sqlite_push_node(world: PushWorld, sqlite_url: str) -> AsyncIterator[Node]:
    node = await start_node(_settings(sqlite_url, world))
    yield node
    await node.stop()


@pytest.fixture(params=["postgresql", "sqlite"])
def push_node(request: pytest.FixtureRequest) -> Node:
    """A node with push on, on each database."""
    node: Node = request.getfixturevalue(
        "pg_push_node" if request.param == "postgresql" else "sqlite_push_node"
    )
    return node


@pytest.fixture
async def api(push_node: Node) -> AsyncIterator[Client]:
    client = Client(push_node)
    yield client
    await client.close()


@pytest.fixture
async def pg_api(pg_push_node: Node) -> AsyncIterator[Client]:
    client = Client(pg_push_node)
    yield client
    await client.close()


async def add_device(api: Client, user: User, provider: str, token: str) -> str:
    platform = {"web_push": "web", "fcm": "android", "apns": "ios"}[provider]
    r = await api.http.post(
        f"{D}/register",
        json={"device_token": token, "platform": platform, "provider": provider},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["device_token_id"])


async def history(api: Client, user: User, **params: Any) -> dict[str, Any]:
    r = await api.http.get(N, params=params, headers=user.headers)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def pushed(api: Client, sender: User, to: User, conversation_id: str, text: str) -> dict:
    """Send a message and wait until `to` has its notification with every delivery."""
    r = await api.send(sender, conversation_id, text)
    assert r.status_code == 201, r.text
    message_id = r.json()["id"]

    async def found() -> dict | None:
        for item in (await history(api, to, limit=MAX_LIMIT))["notifications"]:
            if item["message_id"] == message_id and item["deliveries"]:
                return dict(item)
        return None

    item = await eventually(found, what="the notification with its deliveries")
    assert isinstance(item, dict)
    return item


async def test_one_notification_per_message_with_a_delivery_per_device(
    api: Client, world: PushWorld
) -> None:
    alice = await api.user(display_name="Alice")
    bob = await api.user(display_name="Bob")
    conv = await api.conversation(alice, bob)
    web, fcm = world.webpush.subscribe(), world.fcm_token()
    web_id = await add_device(api, bob, "web_push", web)
    fcm_id = await add_device(api, bob, "fcm", fcm)

    item = await pushed(api, alice, bob, conv["id"], "Lunch?")
    await eventually(lambda: _two_deliveries(api, bob, item["id"]), what="both devices' deliveries")
    one = (await api.http.get(f"{N}/{item['id']}", headers=bob.headers)).json()
    assert one["kind"] == "message" and one["conversation_id"] == conv["id"]
    assert one["title"] == "Alice • Alice" and one["body"] == "Lunch?"
    assert one["opened_at"] is None and one["time_to_open_ms"] is None
    assert sorted(
        (d["device_id"], d["provider"], d["outcome"]) for d in one["deliveries"]
    ) == sorted([(web_id, "web_push", "delivered"), (fcm_id, "fcm", "delivered")])
    assert all(d["at"] for d in one["deliveries"])
    # Each provider's payload carries the notification's id.
    [w] = world.accepted("web_push", web)
    assert w.payload["data"]["notification_id"] == one["id"]
    [f] = world.accepted("fcm", fcm)
    assert f.message["data"]["notification_id"] == one["id"]
    # Only one notification for the message, however many devices.
    async with api.node.services.engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.message_id == one["message_id"])
        )
    assert count == 1
    # Not alice's: another user's id is unknown.
    r = await api.http.get(f"{N}/{one['id']}", headers=alice.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "notification_not_found"


async def _two_deliveries(api: Client, user: User, notification_id: str) -> bool:
    r = await api.http.get(f"{N}/{notification_id}", headers=user.headers)
    return len(r.json()["deliveries"]) == 2


async def test_apns_payload_carries_the_notification_id(pg_api: Client, world: PushWorld) -> None:
    alice, bob = await pg_api.user(), await pg_api.user()
    conv = await pg_api.conversation(alice, bob)
    token = world.apns_token()
    await add_device(pg_api, bob, "apns", token)
    item = await pushed(pg_api, alice, bob, conv["id"], "hi")
    [a] = world.accepted("apns", token)
    assert a.payload["notification_id"] == item["id"]


async def test_list_order_paging_and_limit_cap(api: Client, world: PushWorld) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    await add_device(api, bob, "fcm", world.fcm_token())
    ids = []
    for i in range(3):
        ids.append((await pushed(api, alice, bob, conv["id"], f"m{i}"))["id"])
    newest_first = list(reversed(ids))
    assert [n["id"] for n in (await history(api, bob))["notifications"]] == newest_first
    page1 = (await history(api, bob, limit=2))["notifications"]
    assert [n["id"] for n in page1] == newest_first[:2]
    page2 = (await history(api, bob, limit=2, before=page1[-1]["id"]))["notifications"]
    assert [n["id"] for n in page2] == newest_first[2:]
    # A limit past the cap is capped, not refused; nonsense is refused.
    assert len((await history(api, bob, limit=10_000))["notifications"]) == 3
    for bad in ({"limit": "0"}, {"limit": "x"}, {"before": "nope"}, {"before": str(uuid.uuid4())}):
        r = await api.http.get(N, params=bad, headers=bob.headers)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_field"
    # Alice's cursor is not Bob's.
    r = await api.http.get(N, params={"before": ids[0]}, headers=alice.headers)
    assert r.status_code == 422
    assert (await api.http.get(N)).status_code == 401


async def test_opened_by_the_owner_once_and_unread_count(api: Client, world: PushWorld) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    await add_device(api, bob, "fcm", world.fcm_token())
    first = await pushed(api, alice, bob, conv["id"], "one")
    second = await pushed(api, alice, bob, conv["id"], "two")
    assert (await history(api, bob))["unread"] == 2

    url = f"{N}/{first['id']}/opened"
    r = await api.http.post(url, json={"how": "sideways"}, headers=bob.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field"
    r = await api.http.post(url, json={"how": "click"}, headers=alice.headers)
    assert r.status_code == 404
    r = await api.http.post(f"{N}/not-an-id/opened", json={"how": "click"}, headers=bob.headers)
    assert r.status_code == 404
    r = await api.http.post(url, json={"how": "click"})
    assert r.status_code == 401

    clicks = metric("messenger_notifications_opened_total", how="click")
    r = await api.http.post(url, json={"how": "click"}, headers=bob.headers)
    assert r.status_code == 200, r.text
    assert metric("messenger_notifications_opened_total", how="click") == clicks + 1
    opened = r.json()
    assert opened["opened_how"] == "click" and opened["time_to_open_ms"] >= 0
    # The first open wins.
    r = await api.http.post(url, json={"how": "background"}, headers=bob.headers)
    assert r.status_code == 200 and r.json() == opened
    listed = {n["id"]: n for n in (await history(api, bob))["notifications"]}
    assert listed[first["id"]]["opened_how"] == "click"
    assert listed[first["id"]]["opened_at"] == opened["opened_at"]
    assert listed[second["id"]]["opened_at"] is None
    assert (await history(api, bob))["unread"] == 1


async def test_opened_with_the_action_token_of_its_push(pg_api: Client, world: PushWorld) -> None:
    """What the service worker does on a click: it has the push's action token only."""
    alice, bob, carol = await pg_api.user(), await pg_api.user(), await pg_api.user()
    conv = await pg_api.conversation(alice, bob)
    other = await pg_api.conversation(carol, bob)
    web = world.webpush.subscribe()
    await add_device(pg_api, bob, "web_push", web)
    item = await pushed(pg_api, alice, bob, conv["id"], "hello")
    elsewhere = await pushed(pg_api, carol, bob, other["id"], "psst")
    token = world.accepted("web_push", web)[0].payload["action_token"]

    # Good for its conversation's notifications only.
    r = await pg_api.http.post(
        f"{N}/{elsewhere['id']}/opened", json={"how": "click", "action_token": token}
    )
    assert r.status_code == 404
    r = await pg_api.http.post(
        f"{N}/{item['id']}/opened", json={"how": "foreground", "action_token": "forged"}
    )
    assert r.status_code == 401
    forged = issue_action_token("not-the-key-" * 4, bob.id, "dev", conv["id"])
    r = await pg_api.http.post(
        f"{N}/{item['id']}/opened", json={"how": "foreground", "action_token": forged}
    )
    assert r.status_code == 401
    r = await pg_api.http.post(
        f"{N}/{item['id']}/opened", json={"how": "foreground", "action_token": token}
    )
    assert r.status_code == 200, r.text
    assert r.json()["opened_how"] == "foreground"


async def test_dismiss_one_and_clear_all(api: Client, world: PushWorld) -> None:
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    await add_device(api, bob, "fcm", world.fcm_token())
    ids = [(await pushed(api, alice, bob, conv["id"], f"m{i}"))["id"] for i in range(3)]

    assert (await api.http.delete(f"{N}/{ids[0]}", headers=alice.headers)).status_code == 404
    r = await api.http.delete(f"{N}/{ids[0]}", headers=bob.headers)
    assert r.status_code == 200 and r.json()["dismissed"] is True
    got = await history(api, bob)
    assert [n["id"] for n in got["notifications"]] == [ids[2], ids[1]]
    assert got["unread"] == 2
    # Still there by its id (dismissed, not deleted).
    one = (await api.http.get(f"{N}/{ids[0]}", headers=bob.headers)).json()
    assert one["dismissed_at"] is not None

    r = await api.http.delete(N, headers=bob.headers)
    assert r.status_code == 200 and r.json() == {"dismissed": 2}
    assert await history(api, bob) == {"notifications": [], "unread": 0}


async def test_test_push_to_own_devices_with_results_and_a_cap(
    api: Client, world: PushWorld
) -> None:
    bob = await api.user()
    assert (await api.http.post(TEST_PUSH, headers=bob.headers)).status_code == 409
    web, fcm = world.webpush.subscribe(), world.fcm_token()
    web_id = await add_device(api, bob, "web_push", web)
    fcm_id = await add_device(api, bob, "fcm", fcm)
    world.fcm.modes.set(fcm, Mode.DEAD)

    r = await api.http.post(TEST_PUSH, headers=bob.headers)
    assert r.status_code == 202, r.text
    started = r.json()
    assert sorted((d["device_id"], d["provider"]) for d in started["devices"]) == sorted(
        [(web_id, "web_push"), (fcm_id, "fcm")]
    )

    async def results() -> dict | None:
        r = await api.http.get(f"{N}/{started['id']}", headers=bob.headers)
        body = r.json()
        return body if len(body["deliveries"]) == 2 else None

    one = await eventually(results, what="the test push's outcomes")
    assert one["kind"] == "test" and one["message_id"] is None
    assert {d["device_id"]: d["outcome"] for d in one["deliveries"]} == {
        web_id: "delivered",
        fcm_id: "dead_token",
    }
    [w] = world.accepted("web_push", web)
    assert w.payload["type"] == "test" and w.payload["data"]["notification_id"] == started["id"]
    assert started["id"] in [n["id"] for n in (await history(api, bob))["notifications"]]

    # The dead device is gone; the cap counts every call (the first, with no device, too).
    for _ in range(TEST_PUSH_BURST - 2):
        assert (await api.http.post(TEST_PUSH, headers=bob.headers)).status_code == 202
    r = await api.http.post(TEST_PUSH, headers=bob.headers)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "rate_limited"


def metric(name: str, **labels: str) -> float:
    """A metric's value in this process (every node of a test shares the registry)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_unreached_notifications_are_decided_failed_or_dead_token(
    pg_api: Client, world: PushWorld
) -> None:
    skipped = {
        r: metric("messenger_pushes_skipped_total", reason=r) for r in ("failed", "dead_token")
    }
    alice, bob, carol = await pg_api.user(), await pg_api.user(), await pg_api.user()
    to_bob = await pg_api.conversation(alice, bob)
    to_carol = await pg_api.conversation(alice, carol)
    dead, down = world.fcm_token(), world.fcm_token()
    world.fcm.modes.set(dead, Mode.DEAD)
    world.fcm.modes.set(down, Mode.DOWN, Mode.DOWN)
    await add_device(pg_api, bob, "fcm", dead)
    await add_device(pg_api, carol, "fcm", down)
    await pushed(pg_api, alice, bob, to_bob["id"], "to a dead token")
    await pushed(pg_api, alice, carol, to_carol["id"], "to a provider that is down")

    async def reasons(user: User) -> set[str]:
        async with pg_api.node.services.engine.connect() as conn:
            rows = await conn.execute(
                select(PushDecision.reason).where(PushDecision.user_id == user.id)
            )
            return {r.reason for r in rows}

    await eventually(lambda: _has(reasons(bob), "dead_token"), what="dead_token decided")
    await eventually(lambda: _has(reasons(carol), "failed"), what="failed decided")
    assert await reasons(bob) == {"sent", "dead_token"}
    assert await reasons(carol) == {"sent", "failed"}
    for reason, before in skipped.items():
        assert metric("messenger_pushes_skipped_total", reason=reason) >= before + 1


async def _has(found: Any, reason: str) -> bool:
    return reason in await found


@contextmanager
def statements(node: Node) -> Iterator[list[str]]:
    """Every SQL statement the node's engine sends meanwhile."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engine = node.services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


async def test_history_rides_along_with_the_batched_outcome_writes(
    pg_api: Client, world: PushWorld
) -> None:
    """A group message pushed to many members: the notifications are written with the
    deliveries, one statement per flush, not a round trip per push."""
    alice = await pg_api.user()
    members = [await pg_api.user() for _ in range(20)]
    group = await pg_api.conversation(alice, *members, title="crowd")
    for member in members:
        await add_device(pg_api, member, "fcm", world.fcm_token())
    with statements(pg_api.node) as seen:
        r = await pg_api.send(alice, group["id"], "everyone")
        assert r.status_code == 201
        message_id = r.json()["id"]

        async def all_written() -> bool:
            async with pg_api.node.services.engine.connect() as conn:
                n = await conn.scalar(
                    select(func.count())
                    .select_from(PushAttempt)
                    .where(
                        PushAttempt.message_id == message_id,
                        PushAttempt.notification_id.is_not(None),
                    )
                )
            return n == len(members)

        await eventually(all_written, what="20 deliveries with their notification")
    written = [s for s in seen if s.lstrip().upper().startswith("INSERT INTO NOTIFICATIONS")]
    attempts = [s for s in seen if s.lstrip().upper().startswith("INSERT INTO PUSH_ATTEMPTS")]
    # One notifications insert per attempts insert (the same flush), far fewer than pushes.
    assert 1 <= len(written) == len(attempts) < len(members)
    assert not [
        s for s in seen if "notifications" in s.lower() and s not in written and "SELECT" not in s
    ]
    async with pg_api.node.services.engine.connect() as conn:
        rows = list(
            await conn.execute(select(Notification).where(Notification.message_id == message_id))
        )
    assert sorted(r.user_id for r in rows) == sorted(m.id for m in members)


async def test_cleanup_removes_old_push_records_in_batches(pg_api: Client) -> None:
    """100,000 old rows in each push record table go, a batch per statement; newer stay."""
    node = pg_api.node
    settings = node.services.settings
    user = await pg_api.user()
    old = utcnow() - timedelta(days=settings.push_attempt_retention_days + 1)
    engine = node.services.engine
    tag = uuid.uuid4().hex[:8]
    async with engine.begin() as conn:
        params = {"old": old, "user": user.id, "tag": tag}
        await conn.execute(
            text(
                "INSERT INTO push_attempts (message_id, device_id, user_id, provider, outcome,"
                " attempts, created_at) SELECT :tag || '-' || g, 'd', :user, 'fcm', 'delivered',"
                " 1, :old FROM generate_series(1, 100000) g"
            ),
            params,
        )
        await conn.execute(
            text(
                "INSERT INTO push_decisions (user_id, conversation_id, first_seq, last_seq,"
                " reason, created_at) SELECT :user, :tag, g, g, 'online', :old"
                " FROM generate_series(1, 100000) g"
            ),
            params,
        )
        await conn.execute(
            text(
                "INSERT INTO notifications (id, user_id, kind, title, body, created_at)"
                " SELECT :tag || '-' || g, :user, 'test', 't', 'b', :old"
                " FROM generate_series(1, 100000) g"
            ),
            params,
        )
        await conn.execute(
            text(
                "INSERT INTO notifications (id, user_id, kind, title, body, created_at)"
                " VALUES (:tag || '-new', :user, 'test', 't', 'b', now())"
            ),
            params,
        )
    deletes: list[int] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM"):
            deletes.append(cursor.rowcount)

    # Small writes go on meanwhile, as the push service's flushes do: none may wait long.
    writer = await pg_api.user()
    waits: list[float] = []
    cleaning = True

    async def write_while_cleaning() -> None:
        while cleaning:
            started = time.perf_counter()
            async with engine.begin() as conn:
                await conn.execute(
                    insert(PushAttempt).values(
                        message_id=str(uuid.uuid4()),
                        device_id="d",
                        user_id=writer.id,
                        provider="fcm",
                        outcome="delivered",
                        attempts=1,
                        created_at=utcnow(),
                    )
                )
            waits.append(time.perf_counter() - started)

    event.listen(engine.sync_engine, "after_cursor_execute", after)
    writes = asyncio.create_task(write_while_cleaning())
    started = time.perf_counter()
    try:
        report = await run_cleanup(engine, settings)
    finally:
        took = time.perf_counter() - started
        cleaning = False
        await writes
        event.remove(engine.sync_engine, "after_cursor_execute", after)
    assert report.ran
    # No lock held across the cleanup: each write waits a fraction of the whole.
    assert len(waits) >= 10, (len(waits), took)
    assert max(waits) < took / 5, (max(waits), took)
    assert report.attempts_removed >= 100_000
    assert report.decisions_removed >= 100_000
    assert report.notifications_removed >= 100_000
    batches = report.push_record_batches
    assert batches.largest == BATCH and batches.batches >= 3 * 100_000 // BATCH
    assert max(deletes) <= BATCH
    async with engine.connect() as conn:
        left = await conn.scalar(
            select(func.count()).select_from(Notification).where(Notification.user_id == user.id)
        )
        old_left = await conn.scalar(
            select(func.count()).select_from(PushAttempt).where(PushAttempt.user_id == user.id)
        )
    assert left == 1 and old_left == 0


async def test_notifications_follow_the_push_record_retention(
    api: Client, world: PushWorld
) -> None:
    """On either database: past the retention a notification goes, a newer one stays."""
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    await add_device(api, bob, "fcm", world.fcm_token())
    old = await pushed(api, alice, bob, conv["id"], "old")
    new = await pushed(api, alice, bob, conv["id"], "new")
    settings = api.node.services.settings
    engine = api.node.services.engine
    async with engine.begin() as conn:
        await conn.execute(
            update(Notification)
            .where(Notification.id == old["id"])
            .values(created_at=utcnow() - timedelta(days=settings.push_attempt_retention_days + 1))
        )
    report = await run_cleanup(engine, settings)
    assert report.notifications_removed >= 1
    assert [n["id"] for n in (await history(api, bob))["notifications"]] == [new["id"]]


# -- deleted messages, read marks, open tokens, limits ----------------------------------


MESSAGES = "/api/v1/messenger/conversations"


async def _stored_text(node: Node, notification_id: str) -> tuple[str, str]:
    async with node.services.engine.connect() as conn:
        row = (
            await conn.execute(
                select(Notification.title, Notification.body).where(
                    Notification.id == notification_id
                )
            )
        ).one()
    return row.title, row.body


async def test_deleting_a_message_blanks_its_notifications_an_edit_does_not(
    api: Client, world: PushWorld
) -> None:
    """The history keeps what the user was shown through an edit; a deletion leaves no
    text behind, in the database either."""
    alice, bob = await api.user(display_name="Alice"), await api.user()
    conv = await api.conversation(alice, bob)
    await add_device(api, bob, "fcm", world.fcm_token())
    kept = await pushed(api, alice, bob, conv["id"], "see you at noon")
    gone = await pushed(api, alice, bob, conv["id"], "my secret address")

    path = f"{MESSAGES}/{conv['id']}/messages"
    r = await api.http.patch(
        f"{path}/{kept['message_id']}", json={"content": "see you at one"}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    r = await api.http.delete(f"{path}/{gone['message_id']}", headers=alice.headers)
    assert r.status_code == 200, r.text

    items = {n["id"]: n for n in (await history(api, bob))["notifications"]}
    assert items[kept["id"]]["body"] == "see you at noon"  # as notified
    assert (items[gone["id"]]["title"], items[gone["id"]]["body"]) == ("", "")
    assert await _stored_text(api.node, gone["id"]) == ("", "")
    assert len(items[gone["id"]]["deliveries"]) == 1  # the record of the push stays


async def test_a_push_in_flight_when_its_message_is_deleted_leaves_no_text(
    api: Client, world: PushWorld
) -> None:
    """The deletion commits while the push is with the provider: the history row is
    written afterwards, with the outcome, and must not bring the text back."""
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    token = world.fcm_token()
    await add_device(api, bob, "fcm", token)
    world.fcm.script(token, Mode.HANG, Mode.OK)
    r = await api.send(alice, conv["id"], "delete me before the push lands")
    assert r.status_code == 201, r.text
    message_id = r.json()["id"]
    await eventually(lambda: bool(world.fcm.received_for(token)), what="the push to hang")

    r = await api.http.delete(
        f"{MESSAGES}/{conv['id']}/messages/{message_id}", headers=alice.headers
    )
    assert r.status_code == 200, r.text
    world.fcm.release_hanging()  # a 503, then the retry goes through

    async def written() -> dict | None:
        for item in (await history(api, bob))["notifications"]:
            if item["message_id"] == message_id and item["deliveries"]:
                return dict(item)
        return None

    item = await eventually(written, what="the notification of the deleted message")
    assert (item["title"], item["body"]) == ("", "")
    assert await _stored_text(api.node, item["id"]) == ("", "")


async def test_unread_leaves_out_what_was_read_in_the_app(api: Client, world: PushWorld) -> None:
    """Read in the app: not counted as unread and shown read, yet not opened."""
    alice, bob = await api.user(), await api.user()
    conv = await api.conversation(alice, bob)
    await add_device(api, bob, "fcm", world.fcm_token())
    first = await pushed(api, alice, bob, conv["id"], "one")
    second = await pushed(api, alice, bob, conv["id"], "two")
    got = await history(api, bob)
    assert got["unread"] == 2 and not any(n["read"] for n in got["notifications"])

    seq = min(m["seq"] for m in await api.messages(bob, conv["id"]))  # the first only
    r = await api.http.post(f"{MESSAGES}/{conv['id']}/read", json={"seq": seq}, headers=bob.headers)
    assert r.status_code == 200, r.text

    async def counted() -> dict | None:
        page = await history(api, bob)
        return page if page["unread"] == 1 else None

    page = await eventually(counted, what="the read message left out of unread")
    read = {n["id"]: n["read"] for n in page["notifications"]}
    assert read == {first["id"]: True, second["id"]: False}
    one = (await api.http.get(f"{N}/{first['id']}", headers=bob.headers)).json()
    assert one["read"] is True and one["opened_at"] is None  # read, not opened


async def test_opens_by_token_are_rate_limited_per_user(pg_api: Client, world: PushWorld) -> None:
    alice, bob = await pg_api.user(), await pg_api.user()
    conv = await pg_api.conversation(alice, bob)
    web = world.webpush.subscribe()
    await add_device(pg_api, bob, "web_push", web)
    item = await pushed(pg_api, alice, bob, conv["id"], "hello")
    token = world.accepted("web_push", web)[0].payload["action_token"]
    burst = pg_api.node.services.settings.send_burst
    statuses: list[int] = []
    # The bucket refills as the calls go on: far faster than its rate, it runs dry.
    while 429 not in statuses and len(statuses) < 20 * burst:
        r = await pg_api.http.post(
            f"{N}/{item['id']}/opened", json={"how": "click", "action_token": token}
        )
        statuses.append(r.status_code)
    assert statuses[-1] == 429 and set(statuses[:burst]) == {200}, statuses
    assert int(r.headers["Retry-After"]) >= 1


async def test_a_web_test_push_carries_an_open_token_for_itself_only(
    pg_api: Client, world: PushWorld
) -> None:
    """Through the alias POST /api/v1/notifications/test: the Web Push payload has an
    open token that records this notification's open, and nothing else."""
    bob = await pg_api.user()
    web = world.webpush.subscribe()
    await add_device(pg_api, bob, "web_push", web)
    r = await pg_api.http.post("/api/v1/notifications/test", headers=bob.headers)
    assert r.status_code == 202, r.text
    first = r.json()["id"]
    payload = (await eventually(lambda: world.accepted("web_push", web), what="the test push"))[
        0
    ].payload
    assert payload["type"] == "test" and "action_token" not in payload
    token = payload["open_token"]

    r = await pg_api.http.post(TEST_PUSH, headers=bob.headers)
    assert r.status_code == 202, r.text
    second = r.json()["id"]
    # Good for its notification only, and never for the notification actions.
    r = await pg_api.http.post(f"{N}/{second}/opened", json={"how": "click", "action_token": token})
    assert r.status_code == 401, r.text
    r = await pg_api.http.post(
        "/api/v1/messenger/notification-actions/read", json={"action_token": token, "seq": 1}
    )
    assert r.status_code == 401, r.text
    r = await pg_api.http.post(f"{N}/{first}/opened", json={"how": "click", "action_token": token})
    assert r.status_code == 200, r.text
    assert r.json()["opened_how"] == "click"
    # The device switched off, the token is done.
    async with pg_api.node.services.engine.begin() as conn:
        await conn.execute(
            update(DeviceToken).where(DeviceToken.user_id == bob.id).values(is_active=False)
        )
    r = await pg_api.http.post(f"{N}/{first}/opened", json={"how": "click", "action_token": token})
    assert r.status_code == 401, r.text


def _registration_failures() -> float:
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "messenger_device_registration_failures"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


async def test_a_clients_bad_registrations_are_not_counted_as_failures(api: Client) -> None:
    """Only the server's own failures feed the registration alert: one account sending
    junk tokens cannot fire it."""
    bob = await api.user()
    before = _registration_failures()
    for body in (
        {"device_token": "x", "platform": "web", "provider": "web_push"},  # not a subscription
        {"device_token": "", "platform": "android", "provider": "fcm"},
        {"device_token": "t" * 100, "platform": "android", "provider": "nope"},
    ):
        r = await api.http.post(f"{D}/register", json=body, headers=bob.headers)
        assert 400 <= r.status_code < 500, r.text
    assert _registration_failures() == before


async def test_a_test_push_keeps_to_the_providers_limit_and_the_pending_cap(
    world: PushWorld, postgresql_url: str
) -> None:
    """Three devices, FCM limited to one call in flight: the test push takes three places
    among the pending deliveries and calls FCM once at a time, as any push would."""
    node = await start_node(make_settings(postgresql_url, **world.settings, push_concurrency_fcm=1))
    api = Client(node)
    try:
        bob = await api.user()
        tokens = [world.fcm_token() for _ in range(3)]
        for token in tokens:
            world.fcm.script(token, Mode.HANG)
            await add_device(api, bob, "fcm", token)
        pending = REGISTRY.get_sample_value("messenger_push_deliveries_pending") or 0.0

        def calls() -> int:
            return sum(len(world.fcm.received_for(token)) for token in tokens)

        r = await api.http.post(TEST_PUSH, headers=bob.headers)
        assert r.status_code == 202, r.text
        await eventually(
            lambda: REGISTRY.get_sample_value("messenger_push_deliveries_pending") == pending + 3,
            what="three pending deliveries",
        )
        await eventually(lambda: calls() >= 1, what="the first call")
        assert calls() == 1  # the other two wait for the provider's one slot
        for n in (2, 3):
            world.fcm.release_hanging()  # answers the call in flight: the next one starts
            await eventually(lambda n=n: calls() >= n, what=f"call {n}")  # type: ignore[misc]
            assert calls() == n
        world.fcm.release_hanging()

        async def recorded() -> bool:
            item = (await history(api, bob))["notifications"][0]
            return len(item["deliveries"]) == 3

        await eventually(recorded, what="the three outcomes")
    finally:
        await api.close()
        await node.stop()
