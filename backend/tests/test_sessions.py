"""Sessions: short access tokens, rotating refresh tokens with reuse detection, logout,
the sessions list, and revocation that reaches REST at once and sockets (on every node)
within seconds; sockets close when their token expires unless an `auth` frame renews
it, and may authenticate by a first frame instead of the URL."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx2
import jwt
import orjson
import pydantic
import pytest
import websockets
from sqlalchemy import select, update

from app.config import Settings
from app.db import utcnow
from app.messenger.cleanup import run_cleanup
from app.models import Session as DbSession
from app.sessions import SessionStore
from tests.helpers import (
    SECRET,
    Client,
    Node,
    Socket,
    User,
    eventually,
    make_settings,
    start_node,
)

PASSWORD = "correct horse battery"  # what Client.user registers with
CONTRACT_SECONDS = 5  # a revoked session's sockets close within this (API.md)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client: Client, user: User, **headers: str) -> dict[str, Any]:
    """Another session for the user (another device signing in)."""
    r = await client.http.post(
        "/api/v1/auth/login",
        json={"username": user.username, "password": PASSWORD},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


async def refresh(client: Client, refresh_token: Any) -> httpx2.Response:
    return await client.http.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})


async def me(client: Client, token: str) -> httpx2.Response:
    return await client.http.get("/api/v1/me", headers=bearer(token))


def assert_refused(r: httpx2.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_token"


async def closed_with(ws: websockets.ClientConnection, within: float) -> int | None:
    """The close code of a socket the server closes within `within` seconds."""
    await asyncio.wait_for(ws.wait_closed(), within)
    return ws.close_code


async def open_by_frame(node: Node, token: str) -> websockets.ClientConnection:
    ws = await websockets.connect(node.ws_url)
    await ws.send(orjson.dumps({"type": "auth", "access_token": token}).decode())
    return ws


async def next_frame(ws: websockets.ClientConnection, type_: str) -> dict[str, Any]:
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        if frame["type"] == type_:
            return dict(frame)


async def pong(ws: websockets.ClientConnection) -> None:
    """A positive sign that the socket is open and served."""
    await ws.send('{"type": "ping"}')
    await next_frame(ws, "pong")


@pytest.fixture(scope="module")
async def strict(db_url: str) -> AsyncIterator[Client]:
    """A node with short tokens, a short wait for the first frame and few sessions each."""
    node = await start_node(
        make_settings(
            db_url,
            access_token_ttl_seconds=4,
            websocket_auth_timeout_seconds=0.5,
            max_sessions_per_user=3,
        )
    )
    client = Client(node)
    yield client
    await client.close()
    await node.stop()


# -- tokens -------------------------------------------------------------------------------


async def test_login_answers_a_session(client: Client) -> None:
    u = await client.user()
    body = await login(client, u, **{"User-Agent": "test-agent/1"})
    assert body["token_type"] == "bearer" and body["expires_in"] == 900
    assert body["user"]["id"] == u.id
    claims = jwt.decode(body["access_token"], SECRET, algorithms=["HS256"])
    assert claims["sid"] == body["session_id"] and claims["sub"] == str(u.id)
    assert claims["exp"] - claims["iat"] <= 15 * 60
    assert body["refresh_token"].startswith(body["session_id"] + ".")
    assert (await me(client, body["access_token"])).json()["id"] == u.id


def test_access_tokens_live_at_most_fifteen_minutes() -> None:
    with pytest.raises(pydantic.ValidationError):
        Settings(_env_file=None, access_token_ttl_seconds=901)


async def test_refresh_rotates(client: Client) -> None:
    u = await client.user()
    r = await refresh(client, u.refresh_token)
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["expires_in"] == 900 and second["session_id"] == u.session_id
    assert second["refresh_token"] != u.refresh_token
    assert (await me(client, second["access_token"])).json()["id"] == u.id
    # The access token of before stays good until it expires: the session stands.
    assert (await me(client, u.token)).status_code == 200
    r = await refresh(client, second["refresh_token"])
    assert r.status_code == 200, r.text
    assert r.json()["refresh_token"] not in {u.refresh_token, second["refresh_token"]}


@pytest.fixture(scope="module")
async def no_grace_node(db_url: str) -> AsyncIterator[Node]:
    """No grace for a spent refresh token: any reuse revokes at once."""
    node = await start_node(make_settings(db_url, refresh_reuse_grace_seconds=0))
    yield node
    await node.stop()


@pytest.fixture
async def no_grace(no_grace_node: Node) -> AsyncIterator[Client]:
    c = Client(no_grace_node)
    yield c
    await c.close()


async def test_reusing_a_spent_refresh_token_revokes_the_session(
    no_grace: Client, caplog: pytest.LogCaptureFixture
) -> None:
    client = no_grace
    u = await client.user()
    other = await login(client, u)  # another device: not touched by the reuse
    r = await refresh(client, u.refresh_token)
    assert r.status_code == 200
    current = r.json()
    assert_refused(await refresh(client, u.refresh_token))  # the spent one, again
    # The whole session is gone: the thief's and the owner's tokens alike.
    assert_refused(await refresh(client, current["refresh_token"]))
    assert_refused(await me(client, current["access_token"]))
    assert_refused(await me(client, u.token))
    assert (await me(client, other["access_token"])).status_code == 200
    reuse = [rec.getMessage() for rec in caplog.records if "reused" in rec.getMessage()]
    assert len(reuse) == 1 and u.session_id in reuse[0] and f"user={u.id}" in reuse[0]
    assert current["refresh_token"].split(".", 1)[1] not in caplog.text
    assert u.refresh_token.split(".", 1)[1] not in caplog.text


async def test_a_refresh_whose_answer_was_lost_may_be_retried_for_a_while(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Within REFRESH_REUSE_GRACE_SECONDS the token spent last renews again: its answer
    never reached the client. The tokens of that lost answer then stop working, and a
    token spent before it is reuse, as ever."""
    u = await client.user()
    lost = await refresh(client, u.refresh_token)  # the answer the client never saw
    assert lost.status_code == 200
    retried = await refresh(client, u.refresh_token)
    assert retried.status_code == 200, retried.text
    again = retried.json()
    assert again["refresh_token"] != lost.json()["refresh_token"]
    assert (await me(client, again["access_token"])).status_code == 200
    # The session goes on from the retried answer.
    nxt = await refresh(client, again["refresh_token"])
    assert nxt.status_code == 200, nxt.text
    assert not [rec for rec in caplog.records if "reused" in rec.getMessage()]
    # The lost answer's refresh token is neither current nor the one spent last: reuse.
    assert_refused(await refresh(client, lost.json()["refresh_token"]))
    assert_refused(await refresh(client, nxt.json()["refresh_token"]))


async def test_two_refreshes_with_one_token_at_once_revoke_the_session(no_grace: Client) -> None:
    client = no_grace
    u = await client.user()
    answers = await asyncio.gather(*(refresh(client, u.refresh_token) for _ in range(2)))
    assert sorted(r.status_code for r in answers) == [200, 401]
    winner = next(r.json() for r in answers if r.status_code == 200)
    assert_refused(await refresh(client, winner["refresh_token"]))


async def test_a_made_up_secret_for_a_known_session_is_refused_and_ends_nothing(
    client: Client,
) -> None:
    u = await client.user()
    forged = f"{u.session_id}.{'A' * 43}.{'B' * 22}"
    assert_refused(await refresh(client, forged))
    assert (await refresh(client, u.refresh_token)).status_code == 200


@pytest.mark.parametrize(
    "token",
    [
        "",
        "x",
        "a.b",
        "a.b.c",
        str(uuid.uuid4()),
        f"{uuid.uuid4()}.",
        f"{uuid.uuid4()}.{'A' * 43}.{'B' * 22}",  # well formed, no such session
        f"{str(uuid.uuid4()).upper()}.{'A' * 43}.{'B' * 22}",
        "é" * 200,
        "x" * 512,
        "'; DROP TABLE sessions; --",
    ],
    ids=lambda t: repr(t[:20]),
)
async def test_malformed_refresh_tokens_are_401(client: Client, token: str) -> None:
    assert_refused(await refresh(client, token))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{}", 422),
        (b'{"refresh_token": 12}', 422),
        (b'{"refresh_token": null}', 422),
        (b'{"refresh_token": ["a"]}', 422),
        (b'{"refresh_token": "' + b"x" * 600 + b'"}', 422),
        (b'{"refresh_token": "a\\u0000b"}', 422),
        (b"not json", 400),
        (b"[]", 400),
    ],
)
async def test_bad_refresh_bodies_are_4xx(client: Client, body: bytes, status: int) -> None:
    r = await client.http.post("/api/v1/auth/refresh", content=body)
    assert r.status_code == status, r.text


# -- logout and the sessions list ---------------------------------------------------------


async def test_logout_revokes_the_session(client: Client) -> None:
    u = await client.user()
    other = await login(client, u)
    r = await client.http.post("/api/v1/auth/logout", headers=u.headers)
    assert r.status_code == 200 and r.json() == {"success": True}
    assert_refused(await me(client, u.token))
    assert_refused(await refresh(client, u.refresh_token))
    assert_refused(await client.http.post("/api/v1/auth/logout", headers=u.headers))
    assert (await me(client, other["access_token"])).status_code == 200
    r = await client.http.post("/api/v1/auth/logout")
    assert r.status_code == 401


async def test_the_sessions_list_marks_the_current_one(client: Client) -> None:
    u = await client.user()
    phone = await login(client, u, **{"User-Agent": "phone/2.0"})
    r = await client.http.get("/api/v1/me/sessions", headers=bearer(phone["access_token"]))
    assert r.status_code == 200, r.text
    sessions = {s["id"]: s for s in r.json()["sessions"]}
    assert set(sessions) == {u.session_id, phone["session_id"]}
    mine = sessions[phone["session_id"]]
    assert mine["current"] is True and sessions[u.session_id]["current"] is False
    assert mine["user_agent"] == "phone/2.0" and mine["ip"] == "127.0.0.1"
    assert set(mine) == {"id", "created_at", "last_used_at", "user_agent", "ip", "current"}
    assert mine["created_at"] <= mine["last_used_at"]
    # A refresh is a use.
    before = sessions[u.session_id]["last_used_at"]
    assert (await refresh(client, u.refresh_token)).status_code == 200
    r = await client.http.get("/api/v1/me/sessions", headers=u.headers)
    after = next(s for s in r.json()["sessions"] if s["id"] == u.session_id)
    assert after["last_used_at"] > before and after["current"] is True


async def test_revoking_another_session(client: Client) -> None:
    u = await client.user()
    laptop = await login(client, u)
    r = await client.http.delete(f"/api/v1/me/sessions/{laptop['session_id']}", headers=u.headers)
    assert r.status_code == 200, r.text
    # Refused at once.
    assert_refused(await me(client, laptop["access_token"]))
    assert_refused(await refresh(client, laptop["refresh_token"]))
    r = await client.http.get("/api/v1/me/sessions", headers=u.headers)
    assert [s["id"] for s in r.json()["sessions"]] == [u.session_id]
    # Gone: a second revocation finds nothing.
    r = await client.http.delete(f"/api/v1/me/sessions/{laptop['session_id']}", headers=u.headers)
    assert r.status_code == 404


@pytest.mark.parametrize("which", ["another user's", "unknown", "too long"])
async def test_a_session_that_is_not_yours_is_404(client: Client, which: str) -> None:
    u, other = await client.user(), await client.user()
    session_id = {
        "another user's": other.session_id,
        "unknown": str(uuid.uuid4()),
        "too long": "x" * 300,
    }[which]
    r = await client.http.delete(f"/api/v1/me/sessions/{session_id}", headers=u.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    assert (await me(client, other.token)).status_code == 200
    assert (await refresh(client, other.refresh_token)).status_code == 200


async def test_log_out_everywhere_else(client: Client) -> None:
    u = await client.user()
    others = [await login(client, u), await login(client, u)]
    outsider = await client.user()
    r = await client.http.delete("/api/v1/me/sessions", headers=u.headers)
    assert r.status_code == 200 and r.json() == {"success": True, "revoked": 2}
    for session in others:
        assert_refused(await me(client, session["access_token"]))
    assert (await me(client, u.token)).status_code == 200
    assert (await me(client, outsider.token)).status_code == 200


async def test_sessions_past_the_cap_end_least_recently_used_first(strict: Client) -> None:
    u = await strict.user()  # the first of at most 3
    second, third = await login(strict, u), await login(strict, u)
    assert (await refresh(strict, u.refresh_token)).status_code == 200  # first: used now
    fourth = await login(strict, u)
    r = await strict.http.get("/api/v1/me/sessions", headers=bearer(fourth["access_token"]))
    ids = {s["id"] for s in r.json()["sessions"]}
    assert ids == {u.session_id, third["session_id"], fourth["session_id"]}
    assert_refused(await refresh(strict, second["refresh_token"]))


async def test_a_session_pushed_out_past_the_cap_switches_its_devices_off(
    strict: Client, caplog: pytest.LogCaptureFixture
) -> None:
    u = await strict.user()
    r = await strict.http.post(
        "/api/v1/messenger/devices/register",
        json={"device_token": "d4" * 32, "platform": "ios", "provider": "apns"},
        headers=u.headers,
    )
    assert r.status_code == 201, r.text
    device_id = r.json()["device_token_id"]
    with caplog.at_level(logging.INFO, logger="app.sessions"):
        latest = [await login(strict, u) for _ in range(3)][-1]
    r = await strict.http.get("/api/v1/messenger/devices", headers=bearer(latest["access_token"]))
    assert [(d["id"], d["is_active"]) for d in r.json()["devices"]] == [(device_id, False)]
    assert f"sessions over the cap revoked user={u.id} count=1 devices_off=1" in caplog.text


# -- sockets ------------------------------------------------------------------------------


async def test_a_revoked_sessions_sockets_close_with_4401(client: Client) -> None:
    u = await client.user()
    laptop = await login(client, u)
    doomed = [
        await websockets.connect(f"{client.node.ws_url}?token={laptop['access_token']}"),
        await open_by_frame(client.node, laptop["access_token"]),
    ]
    await next_frame(doomed[1], "auth.ok")
    kept = await Socket.connect(client.node, u)
    r = await client.http.delete(f"/api/v1/me/sessions/{laptop['session_id']}", headers=u.headers)
    assert r.status_code == 200
    for ws in doomed:
        assert await closed_with(ws, CONTRACT_SECONDS) == 4401
    await kept.send({"type": "ping"})
    await kept.expect("pong")
    await kept.close()
    # And the token opens no new socket.
    ws = await websockets.connect(f"{client.node.ws_url}?token={laptop['access_token']}")
    assert await closed_with(ws, CONTRACT_SECONDS) == 4401


async def test_revocation_reaches_every_node(db_url: str) -> None:
    """Two nodes on one database, no Redis: logging out on one closes the session's
    socket on the other, and the other refuses its token at once."""
    a = await start_node(make_settings(db_url))
    b = await start_node(make_settings(db_url))
    on_a, on_b = Client(a), Client(b)
    try:
        u = await on_a.user()
        ws = await websockets.connect(f"{b.ws_url}?token={u.token}")
        await pong(ws)
        r = await on_a.http.post("/api/v1/auth/logout", headers=u.headers)
        assert r.status_code == 200
        assert_refused(await me(on_b, u.token))
        assert await closed_with(ws, CONTRACT_SECONDS) == 4401
    finally:
        await on_a.close()
        await on_b.close()
        await a.stop()
        await b.stop()


async def test_first_frame_auth(client: Client) -> None:
    u, peer = await client.user(), await client.user()
    conv = await client.conversation(peer, u)
    ws = await open_by_frame(client.node, u.token)
    ok = await next_frame(ws, "auth.ok")
    assert ok["user_id"] == u.id and ok["session_id"] == u.session_id
    assert 0 < ok["expires_in"] <= 900
    r = await client.send(peer, conv["id"], "hello by frame")
    assert r.status_code == 201
    new = await next_frame(ws, "message.new")
    assert new["message"]["content"] == "hello by frame"
    await ws.close()


@pytest.mark.parametrize(
    "first",
    [
        '{"type": "ping"}',
        '{"type": "auth"}',
        '{"type": "auth", "access_token": "garbage"}',
        '{"type": "auth", "access_token": 5}',
        "not json",
        None,  # nothing at all
    ],
)
async def test_a_socket_without_a_token_needs_an_auth_frame_first(
    strict: Client, first: str | None
) -> None:
    ws = await websockets.connect(strict.node.ws_url)
    if first is not None:
        await ws.send(first)
    assert await closed_with(ws, 5) == 4401


async def test_a_revoked_token_opens_no_socket(client: Client) -> None:
    u = await client.user()
    await client.http.post("/api/v1/auth/logout", headers=u.headers)
    ws = await open_by_frame(client.node, u.token)
    assert await closed_with(ws, 5) == 4401
    ws = await websockets.connect(client.node.ws_url, additional_headers=u.headers)
    assert await closed_with(ws, 5) == 4401


async def test_auth_frames_that_cannot_renew_keep_the_socket(client: Client) -> None:
    u, other = await client.user(), await client.user()
    ws = await websockets.connect(f"{client.node.ws_url}?token={u.token}")
    for token in ("garbage", other.token):
        await ws.send(orjson.dumps({"type": "auth", "access_token": token}).decode())
        error = await next_frame(ws, "error")
        assert error["code"] == "invalid_token"
    await ws.send(orjson.dumps({"type": "auth", "access_token": u.token}).decode())
    assert (await next_frame(ws, "auth.ok"))["user_id"] == u.id
    await pong(ws)
    await ws.close()


async def test_an_expired_token_closes_the_socket_unless_renewed(strict: Client) -> None:
    """Tokens live 4 s here. Two sockets on one token: the one that sends a fresh
    token outlives the first token, then closes when the fresh one expires."""
    u = await strict.user()
    kept = await websockets.connect(f"{strict.node.ws_url}?token={u.token}")
    lapsing = await websockets.connect(f"{strict.node.ws_url}?token={u.token}")
    # Expiry is in whole seconds: refreshed this late, the fresh token ends 2 s later.
    first_expiry = jwt.decode(u.token, SECRET, algorithms=["HS256"])["exp"]
    await eventually(lambda: time.time() >= first_expiry - 2, what="a later second")
    r = await refresh(strict, u.refresh_token)
    assert r.status_code == 200
    fresh = r.json()["access_token"]
    await kept.send(orjson.dumps({"type": "auth", "access_token": fresh}).decode())
    await next_frame(kept, "auth.ok")
    assert await closed_with(lapsing, 10) == 4401  # when the first token expired
    await pong(kept)  # past the first token's life
    assert await closed_with(kept, 10) == 4401  # when the fresh one expired


async def test_revocations_are_looked_up_once_per_poll_not_per_frame(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames cost no lookup: a hundred pings, and the store is asked nothing."""
    u = await client.user()
    ws = await websockets.connect(f"{client.node.ws_url}?token={u.token}")
    await pong(ws)
    calls: list[str] = []
    store: SessionStore = client.node.services.session_store
    verify = store.verify

    async def counting(token: str) -> Any:
        calls.append("verify")
        return await verify(token)

    monkeypatch.setattr(store, "verify", counting)
    for _ in range(100):
        await ws.send('{"type": "ping"}')
    for _ in range(100):
        await next_frame(ws, "pong")
    assert calls == []
    await ws.close()


async def test_revocation_log_lines_carry_ids_only(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app")
    u = await client.user()
    laptop = await login(client, u)
    ws = await websockets.connect(f"{client.node.ws_url}?token={laptop['access_token']}")
    await pong(ws)
    await client.http.delete(f"/api/v1/me/sessions/{laptop['session_id']}", headers=u.headers)
    assert await closed_with(ws, CONTRACT_SECONDS) == 4401
    lines = [r.getMessage() for r in caplog.records if laptop["session_id"] in r.getMessage()]
    assert any("session revoked" in line for line in lines), lines
    for secret in (laptop["access_token"], laptop["refresh_token"], u.token, PASSWORD):
        assert secret not in caplog.text


async def test_cleanup_removes_long_ended_sessions(client: Client, db_url: str) -> None:
    u = await client.user()
    revoked, expired, recent = [await login(client, u) for _ in range(3)]
    engine = client.node.services.engine
    long_ago = utcnow() - timedelta(days=31)
    async with engine.begin() as conn:
        await conn.execute(
            update(DbSession)
            .where(DbSession.id == revoked["session_id"])
            .values(revoked_at=long_ago)
        )
        await conn.execute(
            update(DbSession)
            .where(DbSession.id == expired["session_id"])
            .values(expires_at=long_ago)
        )
        await conn.execute(
            update(DbSession)
            .where(DbSession.id == recent["session_id"])
            .values(revoked_at=utcnow())
        )
    report = await run_cleanup(engine, make_settings(db_url))
    assert report.ran and report.sessions_removed >= 2
    async with engine.connect() as conn:
        left = set(
            (await conn.execute(select(DbSession.id).where(DbSession.user_id == u.id))).scalars()
        )
    assert left == {u.session_id, recent["session_id"]}


async def test_the_sessions_list_shows_where_a_session_was_last_refreshed_from(
    client: Client,
) -> None:
    """A stolen refresh token used elsewhere shows in the owner's list: the session's
    browser and address are those of its latest refresh, not only of its login."""
    u = await client.user()
    other = await login(client, u, **{"User-Agent": "OwnersPhone/1.0"})
    r = await client.http.post(
        "/api/v1/auth/refresh",
        json={"refresh_token": other["refresh_token"]},
        headers={"User-Agent": "Elsewhere/2.0"},
    )
    assert r.status_code == 200, r.text
    r = await client.http.get("/api/v1/me/sessions", headers=bearer(u.token))
    assert r.status_code == 200, r.text
    [refreshed] = [s for s in r.json()["sessions"] if s["id"] == other["session_id"]]
    assert refreshed["user_agent"] == "Elsewhere/2.0" and not refreshed["current"]
