"""/api/v1/admin: admins only, the push statistics (raw and rolled up), the push log,
user lookup, and `make admin` (app.cli admin)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import Route

from app import admin_stats, metrics
from app.admin_stats import raw_counts, rolled_up_counts, rolled_up_days, run_rollup
from app.cli import main as cli
from app.main import create_app
from app.messenger.models import DeviceToken, Message, Notification, PushAttempt, PushDecision
from app.models import PushStatsDaily, PushStatsDay, User
from tests.conftest import migrated_database
from tests.helpers import SECRET, Client, Node, make_settings, start_node
from tests.helpers import User as Account

BACKEND = Path(__file__).resolve().parents[1]


def _admin_routes() -> list[tuple[str, str]]:
    """Every route under /api/v1/admin the app serves, with each of its methods: a new
    route is checked here without anyone listing it."""
    app = create_app(make_settings("sqlite+aiosqlite:///unused-never-opened.db"))
    app.state.services.passwords.close()
    return sorted(
        (route.path, method)
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith("/api/v1/admin")
        for method in route.methods or ()
        if method != "HEAD"
    )


ADMIN_ROUTES = _admin_routes()


@dataclass
class World:
    url: str
    node: Node
    client: Client

    @property
    def engine(self) -> AsyncEngine:
        engine: AsyncEngine = self.node.services.engine
        return engine


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """A node on a database of its own: the statistics count every row there is."""
    async with AsyncExitStack() as stack:
        directory = tmp_path_factory.mktemp("admin")
        url = await stack.enter_async_context(migrated_database(request.param, directory))
        node = await start_node(make_settings(url, stats_rollup_interval_seconds=3600))
        stack.push_async_callback(node.stop)
        client = Client(node)
        stack.push_async_callback(client.close)
        yield World(url, node, client)


async def set_admin(world: World, user: Account, is_admin: bool = True) -> None:
    async with world.engine.begin() as conn:
        await conn.execute(update(User).where(User.id == user.id).values(is_admin=is_admin))


def _concrete(path: str, user_id: int) -> str:
    return path.replace("{user_id:int}", str(user_id))


async def _call(world: World, method: str, path: str, headers: dict[str, str]) -> Any:
    body = {"json": {}} if method in {"POST", "PUT", "PATCH"} else {}
    return await world.client.http.request(method, path, headers=headers, **body)


def test_the_admin_routes_are_found() -> None:
    assert ("/api/v1/admin/stats", "GET") in ADMIN_ROUTES
    assert ("/api/v1/admin/users/{user_id:int}", "GET") in ADMIN_ROUTES


@pytest.mark.parametrize(("path", "method"), ADMIN_ROUTES)
async def test_every_admin_route_refuses_others(world: World, path: str, method: str) -> None:
    user = await world.client.user()
    url = _concrete(path, user.id)
    r = await _call(world, method, url, {})
    assert r.status_code == 401, r.text
    r = await _call(world, method, url, {"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401, r.text
    r = await _call(world, method, url, user.headers)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    "path", ["/api/v1/admin/stats", "/api/v1/admin/push-log", "/api/v1/admin/users"]
)
async def test_an_admin_may_read(world: World, path: str) -> None:
    admin = await world.client.user()
    await set_admin(world, admin)
    r = await world.client.http.get(path, headers=admin.headers)
    assert r.status_code == 200, r.text


async def test_me_shows_is_admin_and_revoking_takes_effect_at_once(world: World) -> None:
    admin = await world.client.user()
    r = await world.client.http.get("/api/v1/me", headers=admin.headers)
    assert r.json()["is_admin"] is False
    await set_admin(world, admin)
    r = await world.client.http.get("/api/v1/me", headers=admin.headers)
    assert r.json()["is_admin"] is True
    r = await world.client.http.get("/api/v1/admin/stats", headers=admin.headers)
    assert r.status_code == 200
    await set_admin(world, admin, False)
    r = await world.client.http.get("/api/v1/admin/stats", headers=admin.headers)
    assert r.status_code == 403


@pytest.mark.parametrize(
    "query",
    [
        "days=0",
        "days=400",
        "days=abc",
        "days=-1",
        "days=99999999999",
        "limit=0",
        "limit=99999999999",
        "user_id=abc",
        "user_id=2147483648",
        "before=zzz",
        # Ids past the 32-bit columns (a 500 on PostgreSQL before), and past year 9999.
        "before=a.99999999999.1000",
        "before=d.2147483648.1000",
        "before=a.0.1000",
        "before=a.1.999999999999999999",
    ],
)
async def test_bad_parameters_are_422(world: World, query: str) -> None:
    admin = await world.client.user()
    await set_admin(world, admin)
    path = "/api/v1/admin/stats" if query.startswith("days") else "/api/v1/admin/push-log"
    r = await world.client.http.get(f"{path}?{query}", headers=admin.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_field"


# -- statistics --------------------------------------------------------------------------


def _at(day_offset: int, seconds: float = 0.0) -> datetime:
    """10:00 UTC of today minus day_offset days, plus seconds."""
    day = datetime.now(UTC).date() - timedelta(days=day_offset)
    return datetime.combine(day, time(10), UTC) + timedelta(seconds=seconds)


async def _seed_stats(world: World) -> dict[str, Any]:
    """Known rows three and two days ago; what the statistics must say of them."""
    a, b = await world.client.user(), await world.client.user()
    conversation = (await world.client.conversation(a, b))["id"]
    sent = _at(3)
    messages = [str(uuid.uuid4()) for _ in range(6)]
    attempts: list[dict[str, Any]] = []

    def attempt(i: int, provider: str, outcome: str, after_ms: float, day: int = 3) -> None:
        delivered = outcome == "delivered"
        # A delivered push is accepted `after_ms` after its commit and written by a flush
        # 30 s later: commit-to-accepted is read from accepted_at, not the flush.
        written = after_ms / 1000 + (30 if delivered else 0)
        attempts.append(
            {
                "message_id": messages[i],
                "device_id": str(uuid.uuid4()),
                "user_id": b.id,
                "provider": provider,
                "outcome": outcome,
                "attempts": 1,
                "latency_ms": 5.0,
                "created_at": _at(day, written),
                "accepted_at": _at(day, after_ms / 1000) if delivered else None,
                "conversation_id": conversation,
                "seq": 1000 + i,
            }
        )

    # Commit to accepted 40, 80, 200 and 2000 ms: buckets 50, 100, 250, 2500.
    for i, ms in enumerate((40, 80, 200, 2000)):
        attempt(i, "fcm", "delivered", ms)
    # Failures written in the same instant as the decisions (one flush writes both).
    attempt(4, "fcm", "failed", 0)
    attempt(4, "apns", "dead_token", 0)
    attempt(4, "web_push", "gave_up", 0)
    attempt(5, "apns", "delivered", 600, day=2)  # two days ago: 600 ms, bucket 1000
    decisions = [
        {
            "user_id": b.id,
            "conversation_id": conversation,
            "message_id": None,
            "first_seq": 1000,
            # One run of online decisions is five messages: the skipped count is 7.
            "last_seq": 1004 if k == 2 else 1000,
            "reason": reason,
            "created_at": sent,
        }
        for k, reason in enumerate(["sent"] * 2 + ["online"] * 3 + ["muted", "quiet_hours"])
    ]
    notifications = [
        {
            "id": str(uuid.uuid4()),
            "user_id": b.id,
            "kind": "message",
            "conversation_id": conversation,
            "message_id": messages[i],
            "title": "t",
            "body": "b",
            "created_at": sent,
            # Opened after 30 s (bucket 60) and 2 h (bucket 21600); two never.
            "opened_at": {0: sent + timedelta(seconds=30), 1: sent + timedelta(hours=2)}.get(i),
        }
        for i in range(4)
    ]
    now = datetime.now(UTC)

    def device(provider: str, last_used_days: int, active: bool) -> dict[str, Any]:
        token = uuid.uuid4().hex
        return {
            "id": str(uuid.uuid4()),
            "user_id": b.id,
            "token": token,
            "token_key": token,
            "platform": "web" if provider == "web_push" else "android",
            "provider": provider,
            "device_name": "phone",
            "is_active": active,
            "created_at": sent,
            "last_used_at": now - timedelta(days=last_used_days),
        }

    devices = [device("fcm", 45, True), device("fcm", 100, False), device("web_push", 100, True)]
    async with world.engine.begin() as conn:
        await conn.execute(
            insert(Message),
            [
                {
                    "id": m,
                    "conversation_id": conversation,
                    "seq": 1000 + i,
                    "sender_id": a.id,
                    "content": "hi",
                    "created_at": _at(2 if i == 5 else 3),
                }
                for i, m in enumerate(messages)
            ],
        )
        await conn.execute(insert(PushAttempt), attempts)
        await conn.execute(insert(PushDecision), decisions)
        await conn.execute(insert(Notification), notifications)
        await conn.execute(insert(DeviceToken), devices)
    return {"user": b, "devices": devices}


@pytest.fixture(scope="module")
async def seeded(world: World) -> dict[str, Any]:
    return await _seed_stats(world)


def _day(body: dict[str, Any], offset: int) -> dict[str, Any]:
    wanted = (datetime.now(UTC).date() - timedelta(days=offset)).isoformat()
    return next(day for day in body["series"] if day["day"] == wanted)


def _check_seeded_days(body: dict[str, Any]) -> None:
    day = _day(body, 3)
    assert day["pushes"] == {
        "fcm": {"delivered": 4, "failed": 1},
        "apns": {"dead_token": 1},
        "web_push": {"gave_up": 1},
    }
    assert (day["pushes_total"], day["delivered"], day["success_rate"]) == (7, 4, 0.5714)
    # Messages, not decision rows: as messenger_pushes_skipped_total counts them.
    assert day["skipped"] == {"online": 7, "muted": 1, "quiet_hours": 1}
    assert day["commit_to_accepted_ms"] == {"count": 4, "p50": 100, "p95": 2500}
    assert (day["notifications"], day["opened"], day["open_rate"]) == (4, 2, 0.5)
    assert day["time_to_open_seconds"] == {"count": 2, "p50": 60, "p95": 21600}
    assert day["devices_registered"] == {"fcm": 2, "web_push": 1}
    later = _day(body, 2)
    assert later["pushes"] == {"apns": {"delivered": 1}}
    assert later["commit_to_accepted_ms"] == {"count": 1, "p50": 1000, "p95": 1000}
    assert later["skipped"] == {} and later["open_rate"] is None
    quiet = _day(body, 5)
    assert quiet["pushes_total"] == 0 and quiet["success_rate"] is None
    assert body["devices_inactive"] == {"30": 2, "60": 1, "90": 1}


async def test_stats_from_raw_rows_then_rolled_up(world: World, seeded: dict[str, Any]) -> None:
    admin = await world.client.user()
    await set_admin(world, admin)
    # Whether the node's own rollup ran yet or not, the figures are the same: check both.
    r = await world.client.http.get("/api/v1/admin/stats?days=7", headers=admin.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["series"]) == 7 and body["days"] == 7
    assert body["to"] == datetime.now(UTC).date().isoformat()
    _check_seeded_days(body)
    report = await run_rollup(world.engine)
    assert report.ran
    r = await world.client.http.get("/api/v1/admin/stats?days=7", headers=admin.headers)
    rolled = r.json()
    _check_seeded_days(rolled)
    # Today now comes from the rollup too: as of its run, not of the request.
    assert datetime.fromisoformat(rolled["as_of"]) <= datetime.now(UTC)
    assert rolled["series"] == body["series"]


async def test_rollup_is_idempotent_and_equals_the_raw_rows(
    world: World, seeded: dict[str, Any]
) -> None:
    today = datetime.now(UTC).date()
    first = today - timedelta(days=6)
    await run_rollup(world.engine)
    async with world.engine.connect() as conn:
        once = sorted(
            (await conn.execute(select(PushStatsDaily.__table__))).all(), key=lambda r: tuple(r)
        )
        rolled = await rolled_up_counts(conn, first, today + timedelta(days=1))
        raw = await raw_counts(conn, first, today + timedelta(days=1))
    assert {d: sorted(rows) for d, rows in rolled.items()} == {
        d: sorted(rows) for d, rows in raw.items()
    }
    assert today - timedelta(days=3) in rolled
    await run_rollup(world.engine)
    async with world.engine.connect() as conn:
        twice = sorted(
            (await conn.execute(select(PushStatsDaily.__table__))).all(), key=lambda r: tuple(r)
        )
    assert once == twice and once


async def test_rollup_keeps_days_whose_raw_rows_are_gone(
    world: World, seeded: dict[str, Any]
) -> None:
    """Past RECENT_DAYS a rolled-up day is kept as it is: the cleanup may have removed its
    push records since."""
    await run_rollup(world.engine)
    tomorrow = datetime.now(UTC) + timedelta(days=3)  # the seeded days are out of reach
    await run_rollup(world.engine, now=tomorrow)
    async with world.engine.connect() as conn:
        day = datetime.now(UTC).date() - timedelta(days=3)
        kept = await rolled_up_counts(conn, day, day + timedelta(days=1))
    assert ("push", "fcm", "delivered", 4) in kept[day]


# -- the push log ------------------------------------------------------------------------


async def test_push_log_pages_newest_first_with_reasons(
    world: World, seeded: dict[str, Any]
) -> None:
    admin = await world.client.user()
    await set_admin(world, admin)
    user = seeded["user"]
    seen: list[dict[str, Any]] = []
    before = None
    for _ in range(20):
        params: dict[str, Any] = {"user_id": user.id, "limit": 3}
        if before:
            params["before"] = before
        r = await world.client.http.get(
            "/api/v1/admin/push-log", params=params, headers=admin.headers
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["entries"]) <= 3
        seen.extend(page["entries"])
        before = page["next_before"]
        if before is None:
            break
    assert len(seen) == 8 + 7  # every delivery and every decision, once
    assert len({entry["id"] for entry in seen}) == len(seen)
    times = [datetime.fromisoformat(entry["created_at"]) for entry in seen]
    assert times == sorted(times, reverse=True)
    assert seen[0]["reason"] == "sent" and seen[0]["provider"] == "apns"  # two days ago
    deliveries = [e["reason"] for e in seen if e["type"] == "delivery"]
    assert sorted(deliveries) == ["dead_token", "failed", "failed"] + ["sent"] * 5
    decisions = sorted(e["reason"] for e in seen if e["type"] == "decision")
    assert decisions == ["muted", "online", "online", "online", "quiet_hours", "sent", "sent"]
    # Decisions written with deliveries come first among rows of the same instant.
    same = [e["type"] for e in seen if e["created_at"] == seen[-1]["created_at"]]
    assert same == ["decision"] * 7 + ["delivery"] * 3


async def test_push_log_limit_is_capped(world: World, seeded: dict[str, Any]) -> None:
    admin = await world.client.user()
    await set_admin(world, admin)
    r = await world.client.http.get("/api/v1/admin/push-log?limit=100000", headers=admin.headers)
    assert r.status_code == 200
    assert len(r.json()["entries"]) >= 15  # everyone's log, past the cap asked for


async def test_user_lookup_shows_devices_without_tokens(
    world: World, seeded: dict[str, Any]
) -> None:
    admin = await world.client.user()
    await set_admin(world, admin)
    user = seeded["user"]
    r = await world.client.http.get(
        "/api/v1/admin/users", params={"q": user.username[:6]}, headers=admin.headers
    )
    assert r.status_code == 200
    assert user.id in [u["id"] for u in r.json()["users"]]
    r = await world.client.http.get(f"/api/v1/admin/users/{user.id}", headers=admin.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["username"] == user.username and body["user"]["is_admin"] is False
    assert {d["id"] for d in body["devices"]} == {d["id"] for d in seeded["devices"]}
    for device in body["devices"]:
        assert set(device) == {
            "id",
            "platform",
            "provider",
            "name",
            "is_active",
            "created_at",
            "last_used_at",
        }
    for secret in (d["token"] for d in seeded["devices"]):
        assert secret not in r.text
    assert len(body["push_log"]) == 15
    r = await world.client.http.get("/api/v1/admin/users/2147483647", headers=admin.headers)
    assert r.status_code == 404
    r = await world.client.http.get("/api/v1/admin/users?q=" + "x" * 65, headers=admin.headers)
    assert r.status_code == 422


# -- make admin --------------------------------------------------------------------------


def _cli_env(url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": url, "SECRET_KEY": SECRET, "LOG_LEVEL": "WARNING"}


async def _run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """`python -m app.cli ...` as `make admin` runs it: its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        *args,
        cwd=BACKEND,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_make_admin_grants_and_revokes(world: World) -> None:
    user = await world.client.user()
    env = _cli_env(world.url)
    code, out, err = await _run_cli(env, "admin", user.username.upper())
    assert code == 0, err
    assert "now an admin" in out
    r = await world.client.http.get("/api/v1/admin/stats?days=1", headers=user.headers)
    assert r.status_code == 200
    code, out, err = await _run_cli(env, "admin", user.username, "--revoke")
    assert code == 0, err
    assert "no longer an admin" in out
    r = await world.client.http.get("/api/v1/admin/stats?days=1", headers=user.headers)
    assert r.status_code == 403


def test_make_admin_names_an_unknown_user(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in _cli_env(sqlite_url).items():
        monkeypatch.setenv(name, value)
    assert cli(["admin", "nobody-by-that-name"]) == 1
    assert "no user 'nobody-by-that-name'" in capsys.readouterr().err


async def test_stats_of_a_year_read_raw_rows_of_the_missing_days_only(
    world: World, seeded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment with a few days of data: after a rollup every day of the year is
    rolled up (the empty ones too), and a year's stats with two days not rolled up
    computes those two days from raw rows, not the year between them."""
    admin = await world.client.user()
    await set_admin(world, admin)
    await run_rollup(world.engine)
    today = datetime.now(UTC).date()
    async with world.engine.connect() as conn:
        marked = await rolled_up_days(conn, today - timedelta(days=364), today + timedelta(days=1))
    assert len(marked) == 365
    gap = today - timedelta(days=3)
    async with world.engine.begin() as conn:
        days = PushStatsDay.__table__
        await conn.execute(delete(days).where(days.c.day.in_([gap, today])))
    scanned: list[tuple[date, date]] = []
    real = admin_stats.raw_counts

    async def recorded(conn: Any, first: date, end: date) -> Any:
        scanned.append((first, end))
        return await real(conn, first, end)

    monkeypatch.setattr(admin_stats, "raw_counts", recorded)
    r = await world.client.http.get("/api/v1/admin/stats?days=365", headers=admin.headers)
    assert r.status_code == 200, r.text
    assert scanned == [(gap, gap + timedelta(days=1)), (today, today + timedelta(days=1))]
    body = r.json()
    assert len(body["series"]) == 365
    _check_seeded_days(body)  # the raw day and the rolled-up ones agree
    monkeypatch.undo()
    await run_rollup(world.engine)  # the two days rolled up again for the other tests
    async with world.engine.connect() as conn:
        assert {gap, today} <= await rolled_up_days(conn, gap, today + timedelta(days=1))


async def test_one_users_push_log_is_read_by_index(world: World) -> None:
    """ORDER BY (created_at, id) of one user's records walks (user_id, created_at, id)."""
    if not world.url.startswith("postgresql"):
        pytest.skip("EXPLAIN is PostgreSQL's")
    async with world.engine.begin() as conn:
        # A test database's tables are small enough for a scan: ask for the index's plan.
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        for table, index in (
            (PushAttempt.__table__, "ix_push_attempts_user_created"),
            (PushDecision.__table__, "ix_push_decisions_user_created"),
        ):
            query = (
                select(table)
                .where(table.c.user_id == 7)
                .order_by(table.c.created_at.desc(), table.c.id.desc())
                .limit(101)
            )
            sql = query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
            plan = "\n".join((await conn.execute(text(f"EXPLAIN {sql}"))).scalars())
            assert index in plan and "Sort" not in plan, plan


async def test_every_node_sets_the_inactive_device_gauge(
    world: World, seeded: dict[str, Any]
) -> None:
    """The node that finds the rollup taken by another still sets the gauge: an alert
    or dashboard reading any node sees the figures."""
    if not world.url.startswith("postgresql"):
        pytest.skip("one node per database on SQLite: no lock to lose")
    for days in ("30", "60", "90"):
        metrics.devices_inactive.labels(days).set(-1)
    async with world.engine.connect() as holder:
        await holder.begin()
        assert await holder.scalar(select(func.pg_try_advisory_xact_lock(admin_stats.LOCK_KEY)))
        report = await run_rollup(world.engine)
        await holder.rollback()
    assert not report.ran
    gauge = {
        days: REGISTRY.get_sample_value("messenger_devices_inactive", {"days": days})
        for days in ("30", "60", "90")
    }
    assert gauge == {"30": 2.0, "60": 1.0, "90": 1.0}
