"""What one client can make the REST API do: registration, login, conversation and
device limits, the device cap, the bounded argon2 pool, and which client address counts
behind a load balancer."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import AsyncIterator

import httpx2
import pytest

from tests import schema_check
from tests.cluster import Cluster
from tests.helpers import Client, User, make_settings, start_node

pytest_plugins = ["tests.cluster_fixtures"]

PASSWORD = "correct horse battery"
D = "/api/v1/messenger/devices"


@contextlib.asynccontextmanager
async def node_with(database_url: str, **limits: object) -> AsyncIterator[Client]:
    """A node of its own with these limits."""
    node = await start_node(make_settings(database_url, **limits))
    client = Client(node)
    try:
        yield client
    finally:
        await client.close()
        await node.stop()


def from_address(address: str) -> dict[str, str]:
    """Headers of a request that a trusted proxy passed on for this client."""
    return {"X-Forwarded-For": address}


async def register(client: Client, address: str) -> httpx2.Response:
    body = {"username": f"u{secrets.token_hex(5)}", "password": PASSWORD}
    return await client.http.post("/api/v1/auth/register", json=body, headers=from_address(address))


async def login(
    client: Client, username: str, address: str, password: str = "wrong password"
) -> int:
    r = await client.http.post(
        "/api/v1/auth/login",
        json={"username": username, "password": password},
        headers=from_address(address),
    )
    if r.status_code == 429:
        assert_rate_limited(r)
    return r.status_code


def assert_rate_limited(r: httpx2.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1


async def test_registration_is_limited_per_address(sqlite_url: str) -> None:
    async with node_with(
        sqlite_url, registration_burst=2, registration_rate_per_minute=1
    ) as limited:
        for _ in range(2):
            assert (await register(limited, "203.0.113.5")).status_code == 201
        assert_rate_limited(await register(limited, "203.0.113.5"))
        # Another address has its own bucket.
        assert (await register(limited, "203.0.113.6")).status_code == 201
        # An IPv6 client counts by its /64: another address in the same /64 is no way round.
        assert (await register(limited, "2001:db8::1")).status_code == 201
        assert (await register(limited, "2001:db8::2")).status_code == 201
        assert_rate_limited(await register(limited, "2001:db8::3"))
        assert (await register(limited, "2001:db8:0:1::1")).status_code == 201


async def test_login_is_limited_per_username_and_per_address(sqlite_url: str) -> None:
    async with node_with(sqlite_url, login_burst=3, login_rate_per_minute=1) as limited:
        victim = await limited.user()  # one good login, from 127.0.0.1
        # Guessing one password from many addresses: the username's bucket runs out.
        statuses = [await login(limited, victim.username, f"198.51.100.{i}") for i in (1, 2, 3)]
        assert statuses == [401, 401, 429]
        # Even with the right password from a new address, while the bucket is empty...
        assert await login(limited, victim.username, "198.51.100.9", PASSWORD) == 429
        # ...but not where the victim already holds a session: no lockout by strangers.
        assert await login(limited, victim.username, "127.0.0.1", PASSWORD) == 200
        # Trying many usernames from one address: the address's bucket runs out.
        names = []
        for _ in range(4):
            r = await register(limited, "10.1.1.1")
            names.append(r.json()["username"])
        statuses = [await login(limited, name, "192.0.2.7") for name in names]
        assert statuses == [401, 401, 401, 429]
        # Someone else, from elsewhere, is not held back.
        assert await login(limited, names[3], "192.0.2.8", PASSWORD) == 200


async def test_the_address_bucket_can_be_set_apart(sqlite_url: str) -> None:
    """Many users behind one address (NAT) log in while each username keeps its limit."""
    async with node_with(
        sqlite_url, login_burst=2, login_rate_per_minute=1, login_address_burst=50
    ) as limited:
        users = [await limited.user() for _ in range(6)]  # six good logins from one address
        for user in users:
            assert await login(limited, user.username, "192.0.2.9", PASSWORD) == 200
        # The username's own bucket still holds, from an address new to it.
        assert await login(limited, users[0].username, "192.0.2.10", PASSWORD) == 429


async def test_new_conversations_are_limited_per_user(sqlite_url: str) -> None:
    async with node_with(
        sqlite_url, conversation_burst=2, conversation_rate_per_minute=1
    ) as limited:
        a, b, c = await limited.user(), await limited.user(), await limited.user()
        direct = await limited.conversation(a, b)
        await limited.conversation(a, b, c, title="one")
        path = "/api/v1/messenger/conversations"
        body = {"type": "group", "participant_ids": [b.id, c.id], "title": "two"}
        assert_rate_limited(await limited.http.post(path, json=body, headers=a.headers))
        # Opening the existing direct conversation creates nothing, and is not refused.
        body = {"type": "direct", "participant_ids": [b.id]}
        r = await limited.http.post(path, json=body, headers=a.headers)
        assert r.status_code == 200 and r.json()["id"] == direct["id"]
        # Another user's bucket is their own.
        assert (await limited.conversation(b, c, title="theirs"))["title"] == "theirs"


def fcm_token() -> str:
    return "fcm:" + secrets.token_urlsafe(32)


async def register_device(client: Client, user: User, token: str) -> httpx2.Response:
    return await client.http.post(
        f"{D}/register",
        json={"device_token": token, "platform": "android", "provider": "fcm"},
        headers=user.headers,
    )


async def test_device_registration_is_limited_per_user(sqlite_url: str) -> None:
    async with node_with(
        sqlite_url, device_registration_burst=3, device_registration_rate_per_minute=1
    ) as limited:
        a, b = await limited.user(), await limited.user()
        token = fcm_token()
        statuses = [
            (await register_device(limited, a, t)).status_code for t in (token, fcm_token())
        ]
        # Refreshing a known token counts too: it is the same work.
        statuses.append((await register_device(limited, a, token)).status_code)
        assert statuses == [201, 201, 200]
        assert_rate_limited(await register_device(limited, a, fcm_token()))
        assert (await register_device(limited, b, fcm_token())).status_code == 201


async def device_ids(client: Client, user: User) -> set[str]:
    r = await client.http.get(D, headers=user.headers)
    return {d["id"] for d in r.json()["devices"]}


async def test_the_21st_device_evicts_the_least_recently_used(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await client.user(), await client.user()
    tokens = [fcm_token() for _ in range(20)]
    ids = []
    for token in tokens:
        r = await register_device(client, a, token)
        assert r.status_code == 201
        ids.append(r.json()["device_token_id"])
    # The first device is used again: the second is now the least recently used.
    assert (await register_device(client, a, tokens[0])).status_code == 200

    r = await register_device(client, a, fcm_token())
    assert r.status_code == 201
    newest = r.json()["device_token_id"]
    assert await device_ids(client, a) == (set(ids) - {ids[1]}) | {newest}
    evicted = [r.getMessage() for r in caplog.records if "device evicted" in r.getMessage()]
    assert evicted == [f"device evicted, over the limit device={ids[1]} user={a.id} for={newest}"]
    # It is gone, not hidden: unregistering its token finds nothing.
    assert (await client.http.delete(f"{D}/{tokens[1]}", headers=a.headers)).status_code == 404

    # A token that moves from another user counts for the one it moves to.
    moved = fcm_token()
    assert (await register_device(client, b, moved)).status_code == 201
    r = await register_device(client, a, moved)
    assert r.status_code == 200
    mine = await device_ids(client, a)
    assert len(mine) == 20 and ids[2] not in mine and r.json()["device_token_id"] in mine


async def test_a_full_argon2_pool_answers_503(sqlite_url: str) -> None:
    async with node_with(sqlite_url, password_hash_concurrency=1, password_hash_queue=1) as limited:
        user = await limited.user()
        pool = limited.node.services.passwords
        gate = threading.Event()
        # One hash running and one waiting: the pool is full.
        holders = [asyncio.ensure_future(pool.run(gate.wait, 30)) for _ in range(2)]
        good_login = {"username": user.username, "password": PASSWORD}
        try:
            r = await limited.http.post("/api/v1/auth/login", json=good_login)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "busy"
            assert r.headers["Retry-After"] == "1"
            body = {"username": "waiting_one", "password": PASSWORD}
            r = await limited.http.post("/api/v1/auth/register", json=body)
            assert r.status_code == 503 and r.json()["error"]["code"] == "busy"
        finally:
            gate.set()
            await asyncio.gather(*holders)
        # Room again: the same login goes through.
        assert (await limited.http.post("/api/v1/auth/login", json=good_login)).status_code == 200


async def test_login_limits_hold_across_nodes(cluster: Cluster) -> None:
    """With Redis, a username's bucket is one for the cluster."""
    limit = {"login_burst": 2, "login_rate_per_minute": 1, "login_address_burst": 100}
    n1, n2 = await cluster.node(**limit), await cluster.node(**limit)
    api1, api2 = Client(n1), Client(n2)
    try:
        user = await api1.user()  # one login, on n1
        assert await login(api2, user.username, "198.51.100.20") == 401
        assert await login(api1, user.username, "198.51.100.21") == 429
        assert await login(api2, user.username, "198.51.100.22", PASSWORD) == 429
    finally:
        await api1.close()
        await api2.close()


async def test_forwarded_addresses_count_only_from_trusted_peers(cluster: Cluster) -> None:
    """`python -m app` believes X-Forwarded-For from FORWARDED_ALLOW_IPS, and only there."""
    limit = {"registration_burst": 1, "registration_rate_per_minute": 1}
    trusted = await cluster.process_node(forwarded_allow_ips="127.0.0.1", **limit)
    untrusted = await cluster.process_node(forwarded_allow_ips="192.0.2.1", **limit)
    for node, expected in ((trusted, [201, 201, 429]), (untrusted, [201, 429, 429])):
        statuses = []
        async with httpx2.AsyncClient(
            event_hooks=schema_check.EVENT_HOOKS, base_url=node.url
        ) as http:
            for address in ("198.51.100.1", "198.51.100.2", "198.51.100.2"):
                body = {"username": f"u{secrets.token_hex(5)}", "password": PASSWORD}
                r = await http.post(
                    "/api/v1/auth/register", json=body, headers=from_address(address)
                )
                statuses.append(r.status_code)
        assert statuses == expected
