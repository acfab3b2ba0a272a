"""Device registration for push: register, refresh, move, unregister, list, validate; a
device is bound to the session that registered it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select

from app.messenger.models import DeviceToken
from app.models import Session as DbSession
from tests.helpers import Client, User

D = "/api/v1/messenger/devices"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def subscription(endpoint: str | None = None, reverse: bool = False) -> dict:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    sub = {
        "endpoint": endpoint or f"https://fcm.googleapis.com/fcm/send/{b64(os.urandom(12))}",
        "keys": {"p256dh": b64(point), "auth": b64(os.urandom(16))},
    }
    if reverse:
        sub = {"keys": dict(reversed(list(sub["keys"].items()))), "endpoint": sub["endpoint"]}
    return sub


async def register(client: Client, user, **body) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    r = await client.http.post(f"{D}/register", json=body, headers=user.headers)
    return r.status_code, r.json()


async def test_register_refresh_move_unregister(client: Client) -> None:
    a, b = await client.user(), await client.user()
    token = "a1" * 32
    status, body = await register(
        client, a, device_token=token, platform="ios", provider="apns", device_name="iPhone"
    )
    assert status == 201
    assert body == {
        "status": "registered",
        "device_token_id": body["device_token_id"],
        "user_id": a.id,
        "platform": "ios",
    }

    status, again = await register(client, a, device_token=token, platform="ios", provider="apns")
    assert status == 200 and again["device_token_id"] == body["device_token_id"]

    # The phone changed hands: the token moves to the caller, as a new device (nothing
    # of a's, such as its action tokens or delivery history, names it any more).
    status, moved = await register(client, b, device_token=token, platform="ios", provider="apns")
    assert status == 200 and moved["user_id"] == b.id
    assert moved["device_token_id"] != body["device_token_id"]
    assert (await client.http.get(D, headers=a.headers)).json()["devices"] == []
    devices = (await client.http.get(D, headers=b.headers)).json()["devices"]
    assert len(devices) == 1
    device = devices[0]
    assert set(device) == {
        "id",
        "platform",
        "provider",
        "device_name",
        "is_active",
        "registered_at",
        "last_used_at",
    }
    assert device["provider"] == "apns" and device["is_active"] is True

    # Only the owner can remove it.
    assert (await client.http.delete(f"{D}/{token}", headers=a.headers)).status_code == 404
    r = await client.http.delete(f"{D}/{token}", headers=b.headers)
    assert r.status_code == 200 and r.json()["success"] is True and r.json()["message"]
    assert (await client.http.get(D, headers=b.headers)).json()["devices"] == []


async def test_web_push_subscription_is_one_device_whatever_key_order(client: Client) -> None:
    a = await client.user()
    sub = subscription()
    status, first = await register(
        client, a, device_token=json.dumps(sub), platform="web", provider="web_push"
    )
    assert status == 201
    reordered = {
        "keys": {"auth": sub["keys"]["auth"], "p256dh": sub["keys"]["p256dh"]},
        "endpoint": sub["endpoint"],
    }
    status, second = await register(
        client, a, device_token=json.dumps(reordered, indent=2), platform="web", provider="web_push"
    )
    assert status == 200 and second["device_token_id"] == first["device_token_id"]
    assert len((await client.http.get(D, headers=a.headers)).json()["devices"]) == 1
    # The token is percent-encoded in the path and contains '/'.
    r = await client.http.delete(f"{D}/{quote(json.dumps(reordered), safe='')}", headers=a.headers)
    assert r.status_code == 200
    assert (await client.http.get(D, headers=a.headers)).json()["devices"] == []


def _bad_subscriptions() -> list[tuple[str, str]]:
    good = subscription()
    no_endpoint = {"keys": good["keys"]}
    bad_point = {**good, "keys": {**good["keys"], "p256dh": b64(b"\x04" + b"\x01" * 64)}}
    short_auth = {**good, "keys": {**good["keys"], "auth": b64(b"x" * 8)}}
    not_url = {**good, "endpoint": "not a url"}
    return [
        ("not json", "{not json"),
        ("no endpoint", json.dumps(no_endpoint)),
        ("no keys", json.dumps({"endpoint": good["endpoint"]})),
        ("not a P-256 point", json.dumps(bad_point)),
        ("auth not 16 bytes", json.dumps(short_auth)),
        ("endpoint not a URL", json.dumps(not_url)),
        ("a list", json.dumps([good])),
    ]


@pytest.mark.parametrize(
    ("name", "token"), _bad_subscriptions(), ids=[n for n, _ in _bad_subscriptions()]
)
async def test_malformed_subscription_is_422(pg_client: Client, name: str, token: str) -> None:
    a = await pg_client.user()
    status, body = await register(
        pg_client, a, device_token=token, platform="web", provider="web_push"
    )
    assert status == 422, name
    assert body["error"]["code"] == "invalid_subscription"
    assert (await pg_client.http.get(D, headers=a.headers)).json()["devices"] == []


@pytest.mark.parametrize(
    ("platform", "provider", "token", "code"),
    [
        ("android", "apns", "ab" * 32, "invalid_field"),
        ("ios", "web_push", json.dumps(subscription()), "invalid_field"),
        ("web", "apns", "ab" * 32, "invalid_field"),
        ("ios", "apns", "not-hex-token", "invalid_token_format"),
        ("android", "fcm", "has spaces in it but is long", "invalid_token_format"),
        ("android", "fcm", "", "invalid_field"),
    ],
)
async def test_platform_and_provider_must_agree(
    pg_client: Client, platform: str, provider: str, token: str, code: str
) -> None:
    a = await pg_client.user()
    status, body = await register(
        pg_client, a, device_token=token, platform=platform, provider=provider
    )
    assert status == 422 and body["error"]["code"] == code


async def test_vapid_key_says_when_web_push_is_off(pg_client: Client) -> None:
    a = await pg_client.user()
    r = await pg_client.http.get("/api/v1/messenger/push/vapid-public-key", headers=a.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "web_push_off"


async def bindings(client: Client, user: User) -> dict[str, str | None]:
    """Device id -> the session it is bound to."""
    async with client.node.services.engine.connect() as conn:
        rows = await conn.execute(
            select(DeviceToken.id, DeviceToken.session_id).where(DeviceToken.user_id == user.id)
        )
        return {r.id: r.session_id for r in rows}


async def test_a_device_is_bound_to_the_session_that_registered_it_last(client: Client) -> None:
    a = await client.user()
    r = await client.http.post(
        "/api/v1/auth/login", json={"username": a.username, "password": "correct horse battery"}
    )
    other = User(a.id, a.username, r.json()["access_token"], a.display_name)
    token = "c3" * 32
    status, first = await register(client, a, device_token=token, platform="ios", provider="apns")
    assert status == 201
    assert await bindings(client, a) == {first["device_token_id"]: a.session_id}
    status, again = await register(
        client, other, device_token=token, platform="ios", provider="apns"
    )
    assert status == 200 and again["device_token_id"] == first["device_token_id"]
    assert await bindings(client, a) == {first["device_token_id"]: r.json()["session_id"]}


async def test_a_registration_racing_a_logout_leaves_no_device_on(client: Client) -> None:
    """However a registration and its session's end interleave, the device is either
    refused or switched off with the session."""
    for _ in range(8):
        a = await client.user()
        registering = register(
            client, a, device_token=json.dumps(subscription()), platform="web", provider="web_push"
        )
        logout = client.http.post("/api/v1/auth/logout", headers=a.headers)
        (status, _), out = await asyncio.gather(registering, logout)
        assert status in (201, 401) and out.status_code == 200
        async with client.node.services.engine.connect() as conn:
            on = (
                await conn.execute(
                    select(DeviceToken.id)
                    .join(DbSession, DbSession.id == DeviceToken.session_id)
                    .where(
                        DeviceToken.user_id == a.id,
                        DeviceToken.is_active.is_(True),
                        DbSession.revoked_at.is_not(None),
                    )
                )
            ).all()
        assert on == []
