"""Web Push goes only to real push services, follows no redirect, reads little of an
answer, and one slow push service host cannot take every slot."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import tracemalloc
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.config import ConfigError
from app.messenger.push import endpoints
from app.messenger.push.base import Outcome
from app.messenger.push.delivery import RetryPolicy, deliver
from app.messenger.push.endpoints import (
    EndpointPolicy,
    EndpointRefused,
    NonPublicAddress,
    is_public_address,
    resolve_public,
)
from app.messenger.push.webpush import WebPushConfig, WebPushProvider
from tests.fakes import Mode, provider_maker, sample_device, sample_notification
from tests.fakes.webpush import FakePushService, VapidKeys, gzip_bomb, make_vapid_keys
from tests.helpers import Client, Node, eventually, make_settings, start_node

D = "/api/v1/messenger/devices"

# Every address the issue registered with 201, and their cousins.
REFUSED = {
    "database port": "https://127.0.0.1:5432/x",
    "cloud metadata": "https://169.254.169.254/latest/meta-data/",
    "private network": "https://10.0.0.1/admin",
    "metadata by name": "https://metadata.google.internal/computeMetadata/v1/",
    "localhost": "https://localhost/x",
    "localhost port": "https://localhost:6379/x",
    "IPv6 loopback": "https://[::1]/x",
    "IPv4-mapped IPv6": "https://[::ffff:127.0.0.1]/x",
    "decimal IP": "https://2130706433/x",
    "octal IP": "https://0177.0.0.1/x",
    "hex IP": "https://0x7f.0.0.1/x",
    "one hex number": "https://0x7f000001/x",
    "short IP": "https://127.1/x",
    "userinfo on a known host": "https://user:secret@fcm.googleapis.com/fcm/send/x",
    "known host as userinfo": "https://fcm.googleapis.com@169.254.169.254/x",
    "backslash trick": "https://fcm.googleapis.com\\@10.0.0.1/x",
    "fragment trick": "https://fcm.googleapis.com#@10.0.0.1/x",
    "known host, odd port": "https://fcm.googleapis.com:8443/fcm/send/x",
    "known host, database port": "https://updates.push.services.mozilla.com:5432/x",
    "plain http": "http://fcm.googleapis.com/fcm/send/x",
    "known host as a prefix": "https://fcm.googleapis.com.evil.example/x",
    "known host in the path": "https://evil.example/fcm.googleapis.com/x",
    "wildcard's own parent": "https://notify.windows.com/x",
    "look-alike suffix": "https://evilnotify.windows.com/x",
    "trailing dot": "https://fcm.googleapis.com./x",
    "no path": "https://fcm.googleapis.com",
    "whitespace": "https://fcm.googleapis.com/fcm/send/a b",
}

ALLOWED = {
    "Chrome (FCM)": "https://fcm.googleapis.com/fcm/send/{id}:APA91b{id}",
    "Chrome (FCM, wp)": "https://fcm.googleapis.com/wp/{id}",
    "older Chrome": "https://android.googleapis.com/gcm/send/{id}",
    "Chromium without Google keys": "https://jmt17.google.com/fcm/send/{id}",
    "Firefox": "https://updates.push.services.mozilla.com/wpush/v2/{id}",
    "Firefox (short host)": "https://push.services.mozilla.com/wpush/v1/{id}",
    "Edge (WNS)": "https://wns2-par02p.notify.windows.com/w/?token={id}%2f{id}%3d",
    "Safari": "https://web.push.apple.com/{id}",
    "explicit https port": "https://fcm.googleapis.com:443/fcm/send/{id}",
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def subscription(endpoint: str) -> str:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    keys = {"p256dh": b64(point), "auth": b64(os.urandom(16))}
    return json.dumps({"endpoint": endpoint.format(id=b64(os.urandom(12))), "keys": keys})


async def register(client: Client, user, token: str) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    body = {"device_token": token, "platform": "web", "provider": "web_push"}
    r = await client.http.post(f"{D}/register", json=body, headers=user.headers)
    return r.status_code, r.json()


# ---- The policy


@pytest.mark.parametrize("endpoint", REFUSED.values(), ids=REFUSED.keys())
def test_policy_refuses(endpoint: str) -> None:
    with pytest.raises(EndpointRefused) as refused:
        EndpointPolicy().check(endpoint)
    assert "subscription endpoint" in str(refused.value)
    assert endpoint not in str(refused.value)


@pytest.mark.parametrize("endpoint", ALLOWED.values(), ids=ALLOWED.keys())
def test_policy_allows_the_push_services(endpoint: str) -> None:
    endpoint = endpoint.format(id="abc")
    target = EndpointPolicy().check(endpoint)
    assert str(target.url) == endpoint.replace(":443/", "/")  # sent as written
    assert target.origin.startswith("https://") and target.origin.count("/") == 2


def test_extra_hosts_and_the_staging_switch() -> None:
    policy = EndpointPolicy.from_settings(
        make_settings("", web_push_extra_hosts=" Push.Example.test , *.corp.example")
    )
    assert policy.check("https://push.example.test/p/1").service == "push.example.test"
    assert policy.check("https://eu.push.corp.example/p/1").service == "*.corp.example"
    assert policy.check("https://fcm.googleapis.com/fcm/send/1").service == "fcm.googleapis.com"
    for endpoint in ("https://corp.example/p/1", "https://push.example.test:8443/p/1"):
        with pytest.raises(EndpointRefused):
            policy.check(endpoint)

    for bad in ("10.0.0.1", "*.0.0.1", "push.example.test:443", "https://push.example.test"):
        with pytest.raises(ConfigError):
            EndpointPolicy.from_settings(make_settings("", web_push_extra_hosts=bad))

    # Staging lifts the host, address, port and scheme checks; a user name still fails.
    staging = EndpointPolicy.from_settings(make_settings("", web_push_allow_any_endpoint=True))
    assert staging.check("http://127.0.0.1:5432/x").service == "127.0.0.1:5432"
    with pytest.raises(EndpointRefused):
        staging.check("http://user@127.0.0.1:5432/x")


async def test_resolver_keeps_only_public_addresses() -> None:
    with pytest.raises(NonPublicAddress):
        await resolve_public("localhost", 443)


# IPv6 forms that lead to a private IPv4 address (10.0.0.1, 127.0.0.1, 169.254.169.254)
# through a translator or a tunnel; Python's is_global passes most of them.
PRIVATE_INSIDE_IPV6 = {
    "NAT64 well-known prefix": "64:ff9b::a00:1",
    "NAT64 well-known prefix, metadata": "64:ff9b::a9fe:a9fe",
    "NAT64 local-use prefix": "64:ff9b:1::a00:1",
    "6to4": "2002:a00:1::",
    "6to4 of loopback": "2002:7f00:1::1",
    "IPv4-compatible": "::10.0.0.1",
    "IPv4-compatible loopback": "::127.0.0.1",
    "IPv4-mapped": "::ffff:10.0.0.1",
    "IPv4-mapped metadata": "::ffff:169.254.169.254",
    "Teredo, private client": "2001:0:4136:e378:8000:63bf:f5ff:fffe",
}
# The same forms around a public IPv4 address, and plain public addresses.
PUBLIC = {
    "NAT64 well-known prefix": "64:ff9b::808:808",
    "NAT64 local-use prefix": "64:ff9b:1::808:808",
    "6to4": "2002:808:808::1",
    "IPv4-mapped": "::ffff:8.8.8.8",
    "IPv4": "142.250.74.106",
    "IPv6": "2a00:1450:4001:80b::200a",
}


@pytest.mark.parametrize("address", PRIVATE_INSIDE_IPV6.values(), ids=PRIVATE_INSIDE_IPV6.keys())
def test_an_ipv6_form_of_a_private_ipv4_address_is_not_public(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", PUBLIC.values(), ids=PUBLIC.keys())
def test_public_addresses_stay_public(address: str) -> None:
    assert is_public_address(address)


@pytest.mark.parametrize("address", ["", "fcm.googleapis.com", "10.0.0.1", "::1", "fe80::1%eth0"])
def test_what_is_not_a_public_address(address: str) -> None:
    assert not is_public_address(address)


async def test_resolver_drops_ipv6_forms_of_private_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: tuple[str, ...] = ()

    async def fixed(host: str, port: int) -> list[str]:
        """Stands in for the system resolver: the name "resolves" to `answers`."""
        return list(answers)

    monkeypatch.setattr(endpoints, "resolve_any", fixed)
    answers = tuple(PRIVATE_INSIDE_IPV6.values())
    with pytest.raises(NonPublicAddress):
        await resolve_public("push.example.test", 443)

    answers = (*PRIVATE_INSIDE_IPV6.values(), "64:ff9b::808:808", "8.8.4.4")
    assert await resolve_public("push.example.test", 443) == ["64:ff9b::808:808", "8.8.4.4"]


# ---- Registration


async def test_registration_refuses_every_address_not_a_push_service(pg_client: Client) -> None:
    a = await pg_client.user()
    for name, endpoint in REFUSED.items():
        status, body = await register(pg_client, a, subscription(endpoint))
        assert status == 422, name
        assert body["error"]["code"] == "invalid_subscription", name
        assert "subscription endpoint" in body["error"]["message"], name
    r = await pg_client.http.get(D, headers=a.headers)
    assert r.json()["devices"] == []  # nothing half-written


async def test_registration_accepts_the_push_services(pg_client: Client) -> None:
    a = await pg_client.user()
    for name, endpoint in ALLOWED.items():
        status, body = await register(pg_client, a, subscription(endpoint))
        assert status == 201, (name, body)
    r = await pg_client.http.get(D, headers=a.headers)
    assert len(r.json()["devices"]) == len(ALLOWED)


@pytest.fixture(scope="module")
async def extra_hosts_node(sqlite_url: str) -> AsyncIterator[Node]:
    node = await start_node(make_settings(sqlite_url, web_push_extra_hosts="push.corp.example"))
    yield node
    await node.stop()


async def test_registration_with_an_operator_host(extra_hosts_node: Node) -> None:
    client = Client(extra_hosts_node)
    try:
        a = await client.user()
        ok = "https://push.corp.example/send/{id}"
        assert (await register(client, a, subscription(ok)))[0] == 201
        for refused in ("https://push.corp.example:8080/send/x", "https://corp.example/send/x"):
            status, body = await register(client, a, subscription(refused))
            assert (status, body["error"]["code"]) == (422, "invalid_subscription")
    finally:
        await client.close()


# ---- Sending


@pytest.fixture(scope="module")
def vapid() -> VapidKeys:
    return make_vapid_keys()


@pytest.fixture(scope="module")
async def push_service(vapid: VapidKeys) -> AsyncIterator[FakePushService]:
    async with FakePushService(vapid.public) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_fake(push_service: FakePushService) -> None:
    push_service.reset()
    push_service.redirects_followed = 0


@pytest.fixture
async def make_provider(vapid: VapidKeys):  # type: ignore[no-untyped-def]
    def build(**overrides) -> WebPushProvider:  # type: ignore[no-untyped-def]
        fields = {
            "private_key": vapid.private_raw,
            "subject": "mailto:ops@example.com",
            "timeout_seconds": 2.0,
            "endpoints": EndpointPolicy(allow_any=True),  # the fake is on 127.0.0.1
            **overrides,
        }
        return WebPushProvider(WebPushConfig(**fields))

    async with provider_maker(build) as make:
        yield make


async def test_send_never_contacts_an_endpoint_not_allowed(
    make_provider, push_service: FakePushService, caplog: pytest.LogCaptureFixture
) -> None:
    strict = await make_provider(endpoints=EndpointPolicy())
    token = push_service.subscribe()  # on http://127.0.0.1:<port>: allowed only in staging
    keys = json.loads(token)["keys"]
    stored = [token] + [json.dumps({"endpoint": e, "keys": keys}) for e in REFUSED.values()]

    caplog.set_level(logging.DEBUG, logger="app.messenger.push.webpush")
    for stored_token in stored:
        device = sample_device("web_push", stored_token)
        caplog.clear()
        result = await strict.send(device, sample_notification())
        assert result.outcome is Outcome.DEAD_TOKEN and result.status is None
        [line] = [r.getMessage() for r in caplog.records if r.name.endswith("webpush")]
        assert f"device={device.id}" in line and "service=-" in line
        endpoint = json.loads(stored_token)["endpoint"]
        assert endpoint not in line and endpoint.split("://")[1].split("/")[0] not in line

    # The fake is up and answers a provider allowed to reach it: it had nothing before.
    staging = await make_provider()
    result = await staging.send(sample_device("web_push", token), sample_notification())
    assert result.outcome is Outcome.DELIVERED
    assert [r.status for r in push_service.received] == [201]


async def test_a_name_resolving_to_a_private_address_is_not_connected(make_provider) -> None:
    # An operator listed a host that resolves to loopback: refused before connecting,
    # and not retried (retrying would not change it).
    provider = await make_provider(endpoints=EndpointPolicy(extra_hosts=("localhost",)))
    token = subscription("https://localhost/push/{id}")

    result = await provider.send(sample_device("web_push", token), sample_notification())

    assert result.outcome is Outcome.FAILED
    assert result.error == "the push service has no public address"


async def test_redirect_is_not_followed(make_provider, push_service: FakePushService) -> None:
    provider = await make_provider()
    token = push_service.subscribe(Mode.REDIRECT, Mode.OK)
    device = sample_device("web_push", token)

    first = await provider.send(device, sample_notification())
    second = await provider.send(device, sample_notification())

    assert (first.outcome, first.status) == (Outcome.FAILED, 307)
    assert second.outcome is Outcome.DELIVERED
    assert push_service.redirects_followed == 0


async def test_a_gzip_answer_is_not_inflated(make_provider, push_service: FakePushService) -> None:
    provider = await make_provider()
    token = push_service.subscribe(Mode.GZIP_BOMB)
    gzip_bomb()  # made before measuring

    tracemalloc.start()
    try:
        result = await provider.send(sample_device("web_push", token), sample_notification())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (result.outcome, result.status) == (Outcome.FAILED, 400)
    assert peak < 8 * 2**20  # inflated, the answer alone is 100 MiB


async def test_an_endless_answer_is_cut_off(make_provider, push_service: FakePushService) -> None:
    # Read to the end, it would run into the 2 s timeout (RETRY); cut off, it is classified.
    provider = await make_provider()
    token = push_service.subscribe(Mode.ENDLESS)

    result = await provider.send(sample_device("web_push", token), sample_notification())

    assert (result.outcome, result.status) == (Outcome.DELIVERED, 201)


async def test_one_hung_host_leaves_slots_for_the_others(
    make_provider, push_service: FakePushService, vapid: VapidKeys
) -> None:
    provider = await make_provider(timeout_seconds=60.0, per_host_concurrency=2)
    provider_limit = asyncio.Semaphore(4)
    policy = RetryPolicy(max_attempts=1, base_seconds=0.1, max_seconds=1, timeout_seconds=60)
    hung = push_service.subscribe(Mode.HANG)

    async with FakePushService(vapid.public) as other_host:
        waiting = [
            asyncio.create_task(
                deliver(
                    provider,
                    sample_device("web_push", hung),
                    sample_notification(),
                    policy,
                    provider_limit,
                )
            )
            for _ in range(6)
        ]
        try:
            await eventually(lambda: len(push_service.received) == 2, what="two hung pushes")
            token = other_host.subscribe()
            done = await deliver(
                provider,
                sample_device("web_push", token),
                sample_notification(),
                policy,
                provider_limit,
            )
            assert done.outcome is Outcome.DELIVERED
            # The other four waited for the hung host's slots, not for the provider's.
            assert len(push_service.received) == 2
        finally:
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
