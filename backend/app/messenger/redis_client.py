"""Which Redis a node talks to: one server (REDIS_URL) or a Redis Cluster
(REDIS_CLUSTER_URL), and the few calls that differ between the two.

Everything else is the same redis-py API on either client. What differs:
- channels: on a cluster a frame goes by sharded pub/sub (SPUBLISH to the one shard
  that owns the channel's slot), since plain PUBLISH is copied to every cluster node;
- reading several keys at once: MGET must stay within one slot on a cluster;
- the breaker's probe: a cluster is back when every master answers, after a fresh
  look at which servers are the masters (a replica may have been promoted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from app.config import Settings

AnyRedis = Redis | RedisCluster

MAX_CONNECTIONS_PER_SERVER = 1000


def is_cluster(redis: AnyRedis) -> bool:
    return isinstance(redis, RedisCluster)


def uses_redis(settings: Settings) -> bool:
    """Whether presence, fan-out and flood control live in Redis (several nodes)."""
    return bool(settings.redis_url or settings.redis_cluster_url)


def check_settings(settings: Settings) -> None:
    """Refuse a configuration that cannot work, before anything connects."""
    if not settings.redis_cluster_url:
        return
    if settings.redis_url:
        raise ValueError("set REDIS_URL (one Redis) or REDIS_CLUSTER_URL (a cluster), not both")
    if "{" in settings.redis_prefix or "}" in settings.redis_prefix:
        # A brace in the prefix would become the hash tag of every key: one slot for all.
        raise ValueError("REDIS_PREFIX may not hold { or } with REDIS_CLUSTER_URL")
    cluster_seeds(settings.redis_cluster_url)


def cluster_seeds(url: str) -> tuple[list[ClusterNode], dict[str, Any]]:
    """REDIS_CLUSTER_URL: seed nodes, comma-separated, each redis://[user:pass@]host:port
    (rediss:// for TLS) or host:port; the first one's credentials and scheme hold for all.
    Any one live seed is enough: the client learns the rest from the cluster."""
    nodes: list[ClusterNode] = []
    options: dict[str, Any] = {}
    for i, raw in enumerate(part.strip() for part in url.split(",")):
        if not raw:
            continue
        parsed = urlsplit(raw if "://" in raw else f"redis://{raw}")
        if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
            raise ValueError(f"REDIS_CLUSTER_URL: not a redis://host:port seed (item {i + 1})")
        try:
            port = parsed.port or 6379
        except ValueError:
            raise ValueError(f"REDIS_CLUSTER_URL: bad port (item {i + 1})") from None
        nodes.append(ClusterNode(parsed.hostname, port))
        if i == 0:
            if parsed.username:
                options["username"] = unquote(parsed.username)
            if parsed.password:
                options["password"] = unquote(parsed.password)
            if parsed.scheme == "rediss":
                options["ssl"] = True
    if not nodes:
        raise ValueError("REDIS_CLUSTER_URL holds no seed node")
    return nodes, options


def build_redis(settings: Settings) -> AnyRedis:
    """The client for calls: fails fast when Redis is away (one quick retry covers a
    connection that Redis restarted), so callers fall back to this node instead."""
    timeout = settings.redis_timeout_seconds
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), 1)
    if settings.redis_cluster_url:
        nodes, options = cluster_seeds(settings.redis_cluster_url)
        return RedisCluster(
            startup_nodes=nodes,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=retry,
            # Calls to the parts of the key space go side by side: up to BUCKETS at once
            # per caller, more than redis-py's default of 100 per server.
            max_connections=MAX_CONNECTIONS_PER_SERVER,
            **options,
        )
    return Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry
    )


def build_subscriber(settings: Settings) -> AnyRedis:
    """The client a subscription reads on: it blocks on reads, so no socket timeout, and
    no retries either (on any error the listener starts over with a fresh subscription)."""
    timeout = settings.redis_timeout_seconds
    if settings.redis_cluster_url:
        nodes, options = cluster_seeds(settings.redis_cluster_url)
        return RedisCluster(
            startup_nodes=nodes,
            socket_timeout=None,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            **options,
        )
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=None,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


async def publish(redis: AnyRedis, channel: str, data: str) -> None:
    """PUBLISH on one Redis; SPUBLISH (to the shard of the channel's slot) on a cluster."""
    if isinstance(redis, RedisCluster):
        await redis.spublish(channel, data)
    else:
        await redis.publish(channel, data)


async def mget(redis: AnyRedis, keys: Sequence[str]) -> list[Any]:
    """MGET; on a cluster one MGET per slot, sent side by side."""
    if not keys:
        return []
    if isinstance(redis, RedisCluster):
        return list(await redis.mget_nonatomic(list(keys)))
    return list(await redis.mget(list(keys)))


async def refresh_topology(redis: AnyRedis) -> None:
    """A cluster: ask again which server serves which slot (after a failover)."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # the first time: the client's own setup, once
        await redis.nodes_manager.initialize()


async def probe(redis: AnyRedis) -> None:
    """Raise unless Redis answers: one server's PING, or every master's after a fresh
    look at the slot map (a dead master's replica may have taken over)."""
    if isinstance(redis, RedisCluster):
        await refresh_topology(redis)
        masters = redis.get_primaries()
        await asyncio.gather(*(redis.ping(target_nodes=master) for master in masters))
    else:
        await redis.ping()
