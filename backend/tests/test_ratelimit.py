"""Flood control: the Redis limiter answers a batch of hits exactly as the in-process
one answers them one by one (real Redis, each test under a prefix of its own)."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from app.messenger.redis_breaker import RedisBreaker
from app.ratelimit import LocalRateLimiter, RedisRateLimiter, _gcra
from tests.cluster import RedisServer

pytest_plugins = ["tests.cluster_fixtures"]

# (key, rate per second, burst): repeats of one key inside one call, keys of different
# rates, and keys with the characters a login key can hold (spaces, colons, unicode).
HITS = [
    *[("send:1", 1.0, 3)] * 5,
    *[("send:2", 20.0, 50)] * 3,
    *[("login:ann lee:127.0.0.1", 10 / 60, 2)] * 3,
    ("login:zoë;x:::1", 10 / 60, 1),
    ("login:zoë;x:::1", 10 / 60, 1),
]


async def test_a_batch_of_hits_counts_like_single_hits(redis_server: RedisServer) -> None:
    async with redis_server.client() as redis:
        limiter = RedisRateLimiter(
            redis, RedisBreaker(redis, "t", 2.0), f"t{secrets.token_hex(4)}:"
        )
        # Started together, so they go to Redis in one script call.
        answers = await asyncio.gather(*(limiter.start_hit(*hit) for hit in HITS))
    local = LocalRateLimiter()
    expected = [await local.hit(*hit) for hit in HITS]
    assert [a == 0 for a in answers] == [e == 0 for e in expected]
    assert [a == 0 for a in answers] == [True] * 3 + [False] * 2 + [True] * 3 + [
        True,
        True,
        False,
    ] + [True, False]
    # A refused hit says how long to wait: about one interval of its bucket.
    assert answers[3] == pytest.approx(1.0, abs=0.2)
    assert answers[10] == pytest.approx(6.0, abs=0.5)


async def test_refused_hits_take_nothing(redis_server: RedisServer) -> None:
    async with redis_server.client() as redis:
        limiter = RedisRateLimiter(
            redis, RedisBreaker(redis, "t", 2.0), f"t{secrets.token_hex(4)}:"
        )
        first = await asyncio.gather(*(limiter.start_hit("k", 2.0, 2) for _ in range(4)))
        assert [a == 0 for a in first] == [True, True, False, False]
        # Time is what is tested: one interval later, one token is back, not more.
        await asyncio.sleep(0.6)
        second = await asyncio.gather(*(limiter.start_hit("k", 2.0, 2) for _ in range(2)))
        assert [a == 0 for a in second] == [True, False]


async def test_a_burst_of_one_allows_the_first_hit_at_any_moment() -> None:
    """tat + interval - interval can round above tat; the first hit must still pass."""
    rate = 3.0  # an interval (1/3) that is not exact in binary
    for now in (0.1, 1_700_000_000.123, 1_795_934_154.987654):
        tat, retry_after = _gcra(now, now, rate, 1)
        assert retry_after == 0.0
        assert _gcra(tat, now, rate, 1)[1] > 0  # and the second, at once, is refused
