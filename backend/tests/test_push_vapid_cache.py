"""VAPID tokens signed once per push service origin and reused until near expiry."""

from __future__ import annotations

import pytest
from aiohttp import web
from py_vapid import Vapid02

from app.messenger.push.endpoints import EndpointPolicy
from app.messenger.push.vapid_cache import VapidCache
from app.messenger.push.webpush import WebPushConfig, WebPushProvider
from tests.fakes import provider_maker, sample_device, sample_notification
from tests.fakes.webpush import FakePushService, VapidKeys, make_vapid_keys

SUBJECT = "mailto:ops@example.com"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _cache(clock: Clock, **kwargs: int) -> VapidCache:
    vapid = Vapid02()
    vapid.generate_keys()
    return VapidCache(
        vapid, SUBJECT, expiry_seconds=1000, renew_before_seconds=100, clock=clock, **kwargs
    )


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"]


def test_same_audience_reuses_the_token_until_near_expiry() -> None:
    clock = Clock()
    cache = _cache(clock)
    first = cache.headers("https://push.example")

    clock.now += 899  # 1 s before the renewal margin starts
    assert _token(cache.headers("https://push.example")) == _token(first)
    assert cache.signed == 1
    # The token says what it was signed for, verifiable with the public key.
    assert Vapid02.verify(_token(first))


def test_a_different_audience_gets_its_own_token() -> None:
    clock = Clock()
    cache = _cache(clock)
    a = cache.headers("https://a.example")
    b = cache.headers("https://b.example")

    assert _token(a) != _token(b)
    assert cache.signed == 2 and len(cache) == 2
    assert _token(cache.headers("https://a.example")) == _token(a)


def test_a_token_near_expiry_is_renewed() -> None:
    clock = Clock()
    cache = _cache(clock)
    first = cache.headers("https://push.example")

    clock.now += 900  # within 100 s of its expiry
    renewed = cache.headers("https://push.example")

    assert _token(renewed) != _token(first) and cache.signed == 2
    clock.now += 10
    assert _token(cache.headers("https://push.example")) == _token(renewed)


def test_the_cache_is_bounded_oldest_first() -> None:
    clock = Clock()
    cache = _cache(clock, max_audiences=2)
    a = cache.headers("https://a.example")
    cache.headers("https://b.example")
    cache.headers("https://c.example")

    assert len(cache) == 2
    assert _token(cache.headers("https://a.example")) != _token(a)  # signed anew


def test_renewal_margin_must_be_below_expiry() -> None:
    vapid = Vapid02()
    vapid.generate_keys()
    with pytest.raises(ValueError):
        VapidCache(vapid, SUBJECT, expiry_seconds=100, renew_before_seconds=100)


@pytest.fixture(scope="module")
def vapid() -> VapidKeys:
    return make_vapid_keys()


class RecordingPushService(FakePushService):
    """The fake push service, keeping each request's Authorization header too."""

    def __init__(self, vapid_public_key: str) -> None:
        super().__init__(vapid_public_key)
        self.authorizations: list[str] = []

    async def _push(self, request: web.Request) -> web.StreamResponse:
        self.authorizations.append(request.headers.get("Authorization", ""))
        return await super()._push(request)


@pytest.fixture(scope="module")
async def push_service(vapid: VapidKeys):
    async with RecordingPushService(vapid.public) as fake:
        yield fake


async def test_provider_signs_once_for_many_pushes_to_one_service(
    vapid: VapidKeys, push_service: RecordingPushService
) -> None:
    def build() -> WebPushProvider:
        return WebPushProvider(
            WebPushConfig(
                private_key=vapid.private_raw,
                public_key=vapid.public,
                subject=SUBJECT,
                timeout_seconds=2.0,
                endpoints=EndpointPolicy(allow_any=True),
            )
        )

    async with provider_maker(build) as make:
        provider = await make()
        tokens = [push_service.subscribe() for _ in range(5)]
        for token in tokens:
            result = await provider.send(sample_device("web_push", token), sample_notification())
            assert result.status == 201

    received = [r for t in tokens for r in push_service.received_for(t)]
    assert [r.status for r in received] == [201] * 5
    # The push service verified the same token each time, for its own origin.
    assert len(push_service.authorizations) == 5
    assert len(set(push_service.authorizations)) == 1
    assert {r.claims["aud"] for r in received} == {push_service.base_url}
    assert provider.vapid_tokens.signed == 1
