"""The composition root: every long-lived part of a node, built once and wired here.

Nothing else knows this object: each part is given what it uses when built, and the
routes are built from it (main.create_app). Building does no I/O; start() does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.admin_stats import StatsRollupLoop
from app.auth import PasswordPool
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.email.digests import DigestLoop
from app.email.mailer import Mailer
from app.email.verification import Verifications
from app.messenger.attachments import Attachments
from app.messenger.blocks import Blocks
from app.messenger.broadcast import Broadcasts
from app.messenger.cleanup import CleanupLoop
from app.messenger.contacts import Contacts
from app.messenger.fanout import Fanout, LocalFanout
from app.messenger.fanout_redis import RedisFanout
from app.messenger.hub import Hub
from app.messenger.mentions import Mentions
from app.messenger.message_changes import MessageChanges
from app.messenger.participants import ParticipantCache
from app.messenger.presence import LocalPresence, Presence
from app.messenger.presence_redis import RedisPresence
from app.messenger.push.clearing import Clearing
from app.messenger.push.service import PushService
from app.messenger.push.trial import TrialPushes
from app.messenger.reads import ReadMarks
from app.messenger.redis_breaker import RedisBreaker
from app.messenger.redis_client import AnyRedis, build_redis, check_settings, is_cluster, uses_redis
from app.messenger.redis_keys import RedisKeys
from app.messenger.reminders import Reminders
from app.messenger.scheduled import ScheduledMessages
from app.messenger.send import Sender
from app.messenger.socket_auth import SocketAuth
from app.messenger.storage import Storage, build_storage
from app.messenger.timers import TimerLoop
from app.messenger.writer import MessageWriter
from app.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from app.sessions import SessionStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: AnyRedis | None
    redis_breaker: RedisBreaker | None
    hub: Hub
    presence: Presence
    attention: Presence
    fanout: Fanout
    contacts: Contacts
    blocks: Blocks
    limiter: RateLimiter
    participants: ParticipantCache
    writer: MessageWriter
    sender: Sender
    reads: ReadMarks
    push: PushService
    trial_pushes: TrialPushes
    clearing: Clearing
    changes: MessageChanges
    cleanup: CleanupLoop
    stats_rollup: StatsRollupLoop
    passwords: PasswordPool
    session_store: SessionStore
    socket_auth: SocketAuth
    storage: Storage
    # Email for missed messages: verification links, and the digest loop.
    verifications: Verifications
    email_digests: DigestLoop
    # Scheduled messages and reminders, and the loop that fires them when due.
    scheduled: ScheduledMessages
    reminders: Reminders
    timers: TimerLoop
    # Admins' announcements: the loop that sends them in chunks, on whichever node.
    broadcasts: Broadcasts

    async def start(self) -> None:
        await self.presence.start()
        await self.attention.start()
        await self.fanout.start()
        await self.writer.start()
        await self.push.start()
        await self.cleanup.start()
        await self.stats_rollup.start()
        await self.socket_auth.start()
        await self.storage.start()
        await self.email_digests.start()
        await self.timers.start()
        await self.broadcasts.start()

    async def stop(self) -> None:
        await self.broadcasts.stop()
        await self.timers.stop()
        await self.email_digests.stop()
        await self.verifications.stop()
        await self.storage.stop()
        await self.socket_auth.stop()
        await self.stats_rollup.stop()
        await self.cleanup.stop()
        # Clearings under way end before the providers close; reads after drop theirs.
        await self.clearing.stop()
        await self.trial_pushes.stop()
        await self.push.stop()
        await self.reads.stop()
        await self.writer.stop()
        await self.fanout.stop()
        await self.attention.stop()
        await self.presence.stop()
        if self.redis_breaker is not None:
            await self.redis_breaker.stop()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()
        self.passwords.close()


def build_services(settings: Settings) -> Services:
    engine = make_engine(
        settings.effective_database_url,
        statement_timeout=settings.database_statement_timeout_seconds,
        connect_timeout=settings.database_connect_timeout_seconds,
        pool_timeout=settings.database_pool_timeout_seconds,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    hub = Hub(settings.max_sockets_per_user)
    redis: AnyRedis | None = None
    breaker: RedisBreaker | None = None
    presence: Presence
    attention: Presence
    fanout: Fanout
    limiter: RateLimiter
    redis_presence: RedisPresence | None = None
    redis_fanout: RedisFanout | None = None
    check_settings(settings)
    if uses_redis(settings):
        # REDIS_URL: one Redis; REDIS_CLUSTER_URL: a Redis Cluster (redis_client.py).
        redis = build_redis(settings)
        # One breaker for all three: an outage is noticed once and healed once.
        breaker = RedisBreaker(redis, settings.node_id, settings.redis_timeout_seconds)
        presence = redis_presence = RedisPresence(redis, settings, breaker)
        # Attention: the same machinery over a user's active sockets only (attention.py).
        attention = RedisPresence(
            redis,
            settings,
            breaker,
            keys=RedisKeys(settings.redis_prefix, is_cluster(redis)).attention(),
            name="attention",
        )
        fanout = redis_fanout = RedisFanout(redis, hub, settings, breaker)
        limiter = RedisRateLimiter(redis, breaker, settings.redis_prefix)
    else:
        presence = LocalPresence()
        attention = LocalPresence()
        fanout = LocalFanout(hub)
        limiter = LocalRateLimiter()
    contacts = Contacts(engine, fanout)
    blocks = Blocks(engine, settings)
    participants = ParticipantCache(engine, settings.participant_cache_size)
    # Pushes follow attention, not sockets: a recipient is skipped while one of their
    # sockets is active, and looked at again once none is (idle everywhere, or gone).
    push = PushService(settings, engine, attention)
    attention.on_gone = push.recheck.users_gone
    clearing = Clearing(settings, engine, push)
    # A push delivered for a message read while it was in flight is cleared too.
    push.read_already = clearing.read_moved
    writer = MessageWriter(
        engine,
        settings.node_id,
        settings.push_lease_seconds,
        settings.writer_lanes,
        on_commit=push.job_committed,
        queue_limit=settings.writer_queue_limit,
    )
    if redis_presence is not None and redis_fanout is not None:
        # Presence changes found by the heartbeat (a dead node's users, what Redis missed
        # while away) are announced the way the WebSocket handler announces its own.
        redis_presence.announce = contacts.announce
        redis_fanout.on_subscribed = redis_presence.check_claims
        # A membership change drops the conversation from every node's participant cache.
        participants.broadcast = redis_fanout.participants_changed
        redis_fanout.on_participants_changed = participants.invalidate
    session_store = SessionStore(engine, settings)
    mentions = Mentions(engine)
    # Edits, deletions and reactions; a deleted message's notifications are cleared.
    changes = MessageChanges(
        engine,
        settings,
        participants,
        mentions,
        fanout,
        limiter,
        clearing.message_deleted,
        blocks=blocks,
    )
    storage = build_storage(settings)
    mailer = Mailer(settings)
    scheduled = ScheduledMessages(
        engine,
        settings,
        participants,
        blocks,
        limiter,
        writer,
        fanout,
        mentions,
        reply_exists=changes.reply_exists,
    )
    reminders = Reminders(engine, settings, presence, fanout, push, limiter)
    return Services(
        settings=settings,
        engine=engine,
        sessionmaker=make_sessionmaker(engine),
        redis=redis,
        redis_breaker=breaker,
        hub=hub,
        presence=presence,
        attention=attention,
        fanout=fanout,
        contacts=contacts,
        blocks=blocks,
        limiter=limiter,
        participants=participants,
        writer=writer,
        sender=Sender(
            settings,
            participants,
            limiter,
            writer,
            fanout,
            blocks,
            mentions,
            reply_exists=changes.reply_exists,
            attachments=Attachments(engine, settings),
        ),
        # A read mark that moves takes down what the user's devices were shown.
        reads=ReadMarks(engine, fanout, on_moved=clearing.read_moved),
        push=push,
        trial_pushes=TrialPushes(settings, engine, push),
        clearing=clearing,
        changes=changes,
        cleanup=CleanupLoop(engine, settings, storage),
        stats_rollup=StatsRollupLoop(engine, settings.stats_rollup_interval_seconds),
        passwords=PasswordPool(
            settings.password_profile,
            settings.password_hash_concurrency,
            settings.password_hash_queue,
        ),
        session_store=session_store,
        socket_auth=SocketAuth(session_store, settings),
        verifications=Verifications(settings, mailer, limiter, engine),
        email_digests=DigestLoop(engine, settings, mailer),
        storage=storage,
        scheduled=scheduled,
        reminders=reminders,
        timers=TimerLoop(engine, settings, [scheduled, reminders]),
        broadcasts=Broadcasts(engine, settings, presence, fanout, push),
    )
