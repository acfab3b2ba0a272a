"""Everything a request handler needs, built once when the app starts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.messenger.cleanup import CleanupLoop
from app.messenger.fanout import Fanout, LocalFanout
from app.messenger.hub import Hub
from app.messenger.participants import ParticipantCache
from app.messenger.presence import LocalPresence, Presence, announce_presence
from app.messenger.push.service import PushService
from app.messenger.send import MessageWriter
from app.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker
    redis: Redis | None
    hub: Hub
    presence: Presence
    fanout: Fanout
    limiter: RateLimiter
    participants: ParticipantCache
    writer: MessageWriter
    push: PushService
    cleanup: CleanupLoop

    async def start(self) -> None:
        await self.presence.start()
        await self.fanout.start()
        await self.writer.start()
        await self.push.start()
        await self.cleanup.start()

    async def stop(self) -> None:
        await self.cleanup.stop()
        await self.push.stop()
        await self.writer.stop()
        await self.fanout.stop()
        await self.presence.stop()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


def build_services(settings: Settings) -> Services:
    engine = make_engine(settings.effective_database_url)
    hub = Hub()
    redis: Redis | None = None
    presence: Presence
    fanout: Fanout
    limiter: RateLimiter
    if settings.redis_url:
        from app.messenger.fanout import RedisFanout
        from app.messenger.presence import RedisPresence

        # Fail fast when Redis is away (one quick retry covers a connection that Redis
        # restarted): callers fall back to this node instead of waiting out ten retries.
        redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        )
        presence = redis_presence = RedisPresence(redis, hub, settings)
        fanout = redis_fanout = RedisFanout(redis, hub, settings)
        limiter = RedisRateLimiter(redis, settings.redis_prefix)
    else:
        presence = LocalPresence(hub)
        fanout = LocalFanout(hub)
        limiter = LocalRateLimiter()
    participants = ParticipantCache(engine)
    push = PushService(settings, engine, presence)
    services = Services(
        settings=settings,
        engine=engine,
        sessionmaker=make_sessionmaker(engine),
        redis=redis,
        hub=hub,
        presence=presence,
        fanout=fanout,
        limiter=limiter,
        participants=participants,
        writer=MessageWriter(
            engine,
            settings.node_id,
            settings.push_lease_seconds,
            settings.writer_lanes,
            on_commit=push.job_committed,
        ),
        push=push,
        cleanup=CleanupLoop(engine, settings),
    )
    if redis is not None:
        # Presence changes found by the heartbeat (a dead node's users, what Redis missed
        # while away) are announced the way the WebSocket handler announces its own.
        redis_presence.announce = partial(announce_presence, services)
        redis_fanout.on_subscribed = redis_presence.check_claims
    return services
