"""Flood control: a token bucket per key (a user's sends, a username's logins).

GCRA form of the token bucket: one timestamp per key (the "theoretical arrival
time"), so the Redis variant is one small script and one round trip.
"""

from __future__ import annotations

import time
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError


class RateLimiter(Protocol):
    async def hit(self, key: str, rate: float, burst: int) -> float:
        """Take one token; 0.0 if allowed, else the seconds to wait before retrying."""
        ...


def _gcra(tat: float, now: float, rate: float, burst: int) -> tuple[float, float]:
    """(new tat, retry_after). Allowed when retry_after == 0."""
    interval = 1.0 / rate
    tat = max(tat, now)
    allow_at = tat + interval - burst * interval
    if now < allow_at:
        return tat, allow_at - now
    return tat + interval, 0.0


class LocalRateLimiter:
    """One node: the buckets live in this process."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._tat: dict[str, float] = {}
        self._max_keys = max_keys

    async def hit(self, key: str, rate: float, burst: int) -> float:
        now = time.monotonic()
        if len(self._tat) >= self._max_keys:
            # Buckets whose time is past are full again: forgetting them changes nothing.
            self._tat = {k: t for k, t in self._tat.items() if t > now}
        tat, retry_after = _gcra(self._tat.get(key, now), now, rate, burst)
        self._tat[key] = tat
        return retry_after


_GCRA_LUA = """
local now = tonumber(ARGV[1])
local interval = 1.0 / tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat + interval - burst * interval
if now < allow_at then return tostring(allow_at - now) end
tat = tat + interval
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return '0'
"""


class RedisRateLimiter:
    """Many nodes: the buckets live in Redis, so a user's limit is one for the cluster.

    If Redis cannot be reached the request is let through: flood control is not worth
    refusing every message over.
    """

    def __init__(self, redis: Redis, prefix: str = "") -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_GCRA_LUA)
        self._fallback = LocalRateLimiter()

    async def hit(self, key: str, rate: float, burst: int) -> float:
        try:
            answer = await self._script(
                keys=[f"{self._prefix}rl:{key}"], args=[time.time(), rate, burst]
            )
        except (RedisError, OSError):
            return await self._fallback.hit(key, rate, burst)
        return float(answer)
