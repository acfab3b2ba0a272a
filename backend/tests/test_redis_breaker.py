"""The Redis circuit breaker and the flood check behind it, on a private redis-server that
the tests kill and stall: once Redis is known to be away nothing waits on it, and what
waits on a stalled Redis is bounded."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app import ratelimit
from app.messenger.redis_breaker import RedisBreaker
from app.ratelimit import RedisRateLimiter
from tests.cluster import RedisServer
from tests.helpers import eventually

pytest_plugins = ["tests.cluster_fixtures"]


def node_client(server: RedisServer, timeout: float) -> Redis:
    """A client as a node makes it: a short timeout, no retry loop of its own."""
    return Redis.from_url(
        server.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def breaker_lines(caplog: pytest.LogCaptureFixture, node: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "app.messenger.redis_breaker" and f"node={node}" in r.getMessage()
    ]


async def test_the_flood_check_stops_waiting_on_redis_while_it_is_away(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    node = f"n{secrets.token_hex(3)}"
    prefix = f"t{secrets.token_hex(4)}:"
    async with node_client(own_redis, 1.0) as redis:
        breaker = RedisBreaker(redis, node, probe_timeout=1.0)
        limiter = RedisRateLimiter(redis, breaker, prefix)
        try:
            assert await limiter.hit("a", 10.0, 5) == 0
            assert await redis.exists(f"{prefix}rl:a")

            own_redis.stop()  # SIGKILL
            # The first hit finds Redis away: answered in process, and the breaker opens.
            assert await limiter.hit("b", 10.0, 5) == 0
            assert breaker.is_open
            # From now on a hit is answered as it is asked, without a call to Redis.
            hits = [limiter.start_hit("c", 10.0, 2) for _ in range(3)]
            assert all(h.done() for h in hits)
            assert [h.result() == 0 for h in hits] == [True, True, False]

            await own_redis.start()  # empty
            await eventually(lambda: not breaker.is_open, what="the breaker to close")
            assert await limiter.hit("d", 10.0, 5) == 0
            assert await redis.exists(f"{prefix}rl:d")  # Redis keeps the buckets again
        finally:
            await breaker.stop()
    # Said once when it went away and once when it came back.
    lines = breaker_lines(caplog, node)
    assert len(lines) == 2, lines
    assert lines[0].startswith("redis unreachable") and lines[1].startswith("redis back")
    levels = [r.levelno for r in caplog.records if r.name == "app.messenger.redis_breaker"]
    assert levels == [logging.WARNING, logging.INFO]


async def test_hits_waiting_on_a_stalled_redis_are_bounded(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "MAX_WAITING_HITS", 10)
    assert own_redis.process is not None
    # A timeout longer than the test: the stalled call is still waiting when checked.
    async with node_client(own_redis, 30.0) as redis:
        breaker = RedisBreaker(redis, "stalled", probe_timeout=1.0)
        limiter = RedisRateLimiter(redis, breaker, f"t{secrets.token_hex(4)}:")
        await redis.ping()  # connected before it stalls
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            in_call = limiter.start_hit("k", 100.0, 100)  # sent; Redis does not answer
            await eventually(lambda: limiter._caller is not None and not limiter._waiting)
            waiting = [limiter.start_hit("k", 100.0, 100) for _ in range(10)]
            over = limiter.start_hit("k", 100.0, 100)
            # The queue is full: this one is answered at once, in process.
            assert over.done() and over.result() == 0
            assert not in_call.done() and not any(w.done() for w in waiting)
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        answers = await asyncio.wait_for(asyncio.gather(in_call, *waiting), 10)
        assert answers == [0.0] * 11
        assert not breaker.is_open
        await breaker.stop()
