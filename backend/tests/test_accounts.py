"""Accounts: register, log in, tokens, user search, login flood control."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest

from app.db import utcnow
from tests.helpers import SECRET, Client, make_settings, start_node


async def test_register_login_me(pg_client: Client) -> None:
    http = pg_client.http
    r = await http.post(
        "/api/v1/auth/register",
        json={"username": "Ada_L", "password": "analytical engine", "display_name": "Ada"},
    )
    assert r.status_code == 201
    user = r.json()
    assert user == {"id": user["id"], "username": "ada_l", "display_name": "Ada", "is_bot": False}

    r = await http.post("/api/v1/auth/register", json={"username": "ADA_l", "password": "x" * 10})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "username_taken"

    r = await http.post(
        "/api/v1/auth/login", json={"username": "ada_l", "password": "analytical engine"}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["user"] == user

    r = await http.get("/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert r.status_code == 200 and r.json() == {**user, "is_admin": False}


async def test_wrong_password_and_unknown_user_are_401(pg_client: Client) -> None:
    u = await pg_client.user()
    for body in (
        {"username": u.username, "password": "wrong password"},
        {"username": "nobody_here", "password": "whatever it is"},
    ):
        r = await pg_client.http.post("/api/v1/auth/login", json=body)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_credentials"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Bearer not-a-jwt",
        "Basic Zm9vOmJhcg==",
        "Bearer " + jwt.encode({"sub": "1", "exp": utcnow() + timedelta(hours=1)}, "x" * 40),
        "Bearer " + jwt.encode({"sub": "1", "exp": utcnow() - timedelta(seconds=5)}, SECRET),
        "Bearer " + jwt.encode({"sub": "1"}, SECRET),
    ],
    ids=["missing", "empty", "garbage", "basic", "other-key", "expired", "no-expiry"],
)
async def test_bad_tokens_are_401(pg_client: Client, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    r = await pg_client.http.get("/api/v1/me", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] in {"unauthorized", "invalid_token"}


async def test_user_search_and_lookup(pg_client: Client) -> None:
    a = await pg_client.user(display_name="Searcher")
    b = await pg_client.user(name=f"zed_{a.username}", display_name="Zed")
    r = await pg_client.http.get("/api/v1/users", params={"query": "ZED_"}, headers=a.headers)
    assert r.status_code == 200
    zed = {"id": b.id, "username": b.username, "display_name": "Zed", "is_bot": False}
    assert zed in r.json()["users"]
    # LIKE wildcards in the query are taken literally.
    r = await pg_client.http.get("/api/v1/users", params={"query": "%"}, headers=a.headers)
    assert r.json()["users"] == []
    r = await pg_client.http.get(f"/api/v1/users/{b.id}", headers=a.headers)
    assert r.json()["display_name"] == "Zed"
    for missing in ("999999999", "99999999999999999999"):
        r = await pg_client.http.get(f"/api/v1/users/{missing}", headers=a.headers)
        assert r.status_code == 404


async def test_login_attempts_are_limited(postgresql_url: str) -> None:
    # The address's own bucket is set apart: this test is about the username's.
    settings = make_settings(
        postgresql_url, login_burst=3, login_rate_per_minute=1, login_address_burst=100
    )
    node = await start_node(settings)
    client = Client(node)
    try:
        u = await client.user()  # one successful login already
        statuses = []
        for _ in range(4):
            r = await client.http.post(
                "/api/v1/auth/login", json={"username": u.username, "password": "wrong password"}
            )
            statuses.append(r.status_code)
        assert statuses[:2] == [401, 401]
        assert statuses[-1] == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "rate_limited"
        # Another username from the same address is not held back.
        other = await client.user()
        assert other.token
    finally:
        await client.close()
        await node.stop()
