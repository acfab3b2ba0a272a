"""Flood control: a token bucket per key (a user's sends, a username's logins).

GCRA form of the token bucket: one timestamp per key (the "theoretical arrival
time"), so the Redis variant is one small script and one round trip.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Protocol

from redis.exceptions import RedisError

from app.errors import ApiError
from app.messenger.redis_breaker import RedisBreaker
from app.messenger.redis_client import AnyRedis, is_cluster
from app.messenger.redis_keys import REDIS_UNREACHABLE, RedisKeys, load_lua


class RateLimiter(Protocol):
    async def hit(self, key: str, rate: float, burst: int) -> float:
        """Take one token; 0.0 if allowed, else the seconds to wait before retrying."""
        ...

    def start_hit(self, key: str, rate: float, burst: int) -> asyncio.Future[float]:
        """hit() without waiting for the answer, which comes as a future. Hits count in
        the order they are started."""
        ...


def too_many_requests(retry_after: float, message: str) -> ApiError:
    """The 429 for a refused hit, with Retry-After in whole seconds (at least one)."""
    seconds = max(1, round(retry_after + 0.5))
    return ApiError(429, "rate_limited", message, headers={"Retry-After": str(seconds)})


def address_key(host: str | None) -> str:
    """The bucket of a client address: an IPv4 address, or an IPv6 address's /64 (one
    machine is commonly given a whole /64, so single addresses would cost it nothing)."""
    if not host:
        return "-"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _gcra(tat: float, now: float, rate: float, burst: int) -> tuple[float, float]:
    """(new tat, retry_after). Allowed when retry_after == 0."""
    interval = 1.0 / rate
    tat = max(tat, now)
    # (burst - 1) * interval, not + interval - burst * interval: with a burst of 1 the
    # latter can round above tat and refuse a first hit.
    allow_at = tat - (burst - 1) * interval
    if now < allow_at:
        return tat, allow_at - now
    return tat + interval, 0.0


class LocalRateLimiter:
    """One node: the buckets live in this process."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._tat: dict[str, float] = {}
        self._max_keys = max_keys

    async def hit(self, key: str, rate: float, burst: int) -> float:
        return self._take(key, rate, burst)

    def start_hit(self, key: str, rate: float, burst: int) -> asyncio.Future[float]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(self._take(key, rate, burst))
        return future

    def _take(self, key: str, rate: float, burst: int) -> float:
        now = time.monotonic()
        if len(self._tat) >= self._max_keys:
            # Buckets whose time is past are full again: forgetting them changes nothing.
            self._tat = {k: t for k, t in self._tat.items() if t > now}
        tat, retry_after = _gcra(self._tat.get(key, now), now, rate, burst)
        self._tat[key] = tat
        return retry_after


_GCRA_LUA = load_lua("ratelimit.lua", "app")
MAX_HITS = 500  # hits per script call
# Hits waiting for the next call to Redis; beyond this (Redis slow, not yet known to be
# away) they are answered in process rather than queued without bound.
MAX_WAITING_HITS = 10_000


class RedisRateLimiter:
    """Many nodes: the buckets live in Redis, so a user's limit is one for the cluster.

    Hits that come while a call to Redis is under way wait for the next call and go
    together: under load one round trip answers many sends, instead of one each.
    While Redis is away (the breaker is open) the buckets of this process answer, at once:
    each node then limits a user on its own, and nothing waits on Redis.
    On a Redis Cluster a call holds the keys of one slot only: the hits are grouped by
    the part of the key space their key falls in (redis_keys), one call per part, side
    by side. A key's hits stay in one call, in order.
    """

    def __init__(self, redis: AnyRedis, breaker: RedisBreaker, prefix: str = "") -> None:
        self._redis = redis
        self._breaker = breaker
        self._keys = RedisKeys(prefix, is_cluster(redis))
        self._script = redis.register_script(_GCRA_LUA)
        self._fallback = LocalRateLimiter()
        self._waiting: list[tuple[str, float, int, asyncio.Future[float]]] = []
        self._caller: asyncio.Task[None] | None = None

    async def hit(self, key: str, rate: float, burst: int) -> float:
        return await self.start_hit(key, rate, burst)

    def start_hit(self, key: str, rate: float, burst: int) -> asyncio.Future[float]:
        if self._breaker.is_open or len(self._waiting) >= MAX_WAITING_HITS:
            return self._fallback.start_hit(key, rate, burst)
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((key, rate, burst, future))
        if self._caller is None:
            self._caller = asyncio.create_task(self._call())
        return future

    async def _call(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_HITS], self._waiting[MAX_HITS:]
                try:
                    answers = await self._answers(batch)
                except Exception as exc:
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (*_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._caller = None

    async def _answers(
        self, batch: list[tuple[str, float, int, asyncio.Future[float]]]
    ) -> list[float]:
        if self._breaker.is_open:  # went away while these waited
            return [await self._fallback.hit(key, rate, burst) for key, rate, burst, _ in batch]
        now = time.time()
        groups: dict[str, list[tuple[str, float, int]]] = {}
        for key, rate, burst, _ in batch:
            name = self._keys.rate_limit(key)
            # One Redis: one group. A cluster: one per hash tag (the name's {...} part).
            tag = name[name.find("{") : name.find("}") + 1] if self._keys.cluster else ""
            groups.setdefault(tag, []).append((name, rate, burst))
        try:
            per_group = await asyncio.gather(*(self._call_script(now, g) for g in groups.values()))
        except REDIS_UNREACHABLE as exc:
            self._breaker.trip(exc)
            return [await self._fallback.hit(key, rate, burst) for key, rate, burst, _ in batch]
        except RedisError:  # answering, but not this: let these through the local buckets
            return [await self._fallback.hit(key, rate, burst) for key, rate, burst, _ in batch]
        answers = {tag: iter(group) for tag, group in zip(groups, per_group, strict=True)}
        out = []
        for key, *_ in batch:
            name = self._keys.rate_limit(key)
            tag = name[name.find("{") : name.find("}") + 1] if self._keys.cluster else ""
            out.append(float(next(answers[tag])))
        return out

    async def _call_script(self, now: float, hits: list[tuple[str, float, int]]) -> list[bytes]:
        """One script call for hits whose keys share a slot; the answers in their order."""
        index: dict[str, int] = {}
        spec = []
        for name, rate, burst in hits:
            i = index.setdefault(name, len(index) + 1)
            spec.append(f"{i} {rate!r} {burst};")
        return list(await self._script(keys=list(index), args=[now, "".join(spec)]))
