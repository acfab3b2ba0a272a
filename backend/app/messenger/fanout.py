"""Getting a frame to every socket of some users, wherever those sockets are.

Sockets on this node are always served straight from memory; the Redis variant
also hands the frame to the other nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Collection
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.config import Settings
from app.messenger.hub import Hub
from app.messenger.presence import REDIS_UNREACHABLE

log = logging.getLogger(__name__)


class Fanout(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def watch(self, user_id: int) -> None:
        """This node now holds a socket of the user: receive frames for them."""
        ...

    async def unwatch(self, user_id: int) -> None:
        """This node holds no socket of the user any more."""
        ...

    async def publish(
        self, user_ids: Collection[int], frame: str, exclude: str | None = None
    ) -> None:
        """Deliver the frame to every socket of these users except the one excluded."""
        ...


class LocalFanout:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def watch(self, user_id: int) -> None:
        pass

    async def unwatch(self, user_id: int) -> None:
        pass

    async def publish(
        self, user_ids: Collection[int], frame: str, exclude: str | None = None
    ) -> None:
        self._hub.deliver(user_ids, frame, exclude)


SUBSCRIBE_CHUNK = 1000  # channels per SUBSCRIBE when re-subscribing a whole node
SUBSCRIBE_WAIT = 2.0  # a new socket waits this long at most for its subscription
PUBLISH_BATCH = 500  # frames per pipeline
OUTBOX_LIMIT = 50_000  # frames waiting for Redis; beyond this they are dropped (clients resync)
KEEPALIVE = 5.0  # ping an idle subscription this often; three missed answers is a dead link
RECONNECT_MIN, RECONNECT_MAX = 0.1, 2.0


class RedisFanout:
    """Many nodes: a frame for a user goes on that user's channel, P c:<user>; each node
    subscribes to the channels of the users it holds sockets for.

    Why per user and not per conversation: publish() addresses users (a presence frame
    goes to contacts, not to one conversation), a user's channel never changes as they
    join or leave conversations, so nothing has to re-subscribe on membership changes, and
    a node receives exactly the frames for sockets it holds, however large the group.
    The price is one PUBLISH per recipient, all of a batch in one pipelined round trip.

    A payload is "<origin node id>\n<frame>": the origin served its own sockets from
    memory and ignores its echo. One task publishes in order, so frames from this node
    reach the others in the order they were sent, and the send path never waits on Redis.
    """

    def __init__(self, redis: Redis, hub: Hub, settings: Settings) -> None:
        self._redis = redis
        self._hub = hub
        self._node = settings.node_id
        self._prefix = settings.redis_prefix
        self._channel_prefix = f"{settings.redis_prefix}c:"
        self._header = f"{settings.node_id}\n"
        # Its own client: the subscription blocks on reads, so no socket timeout, and no
        # retries either: on any error the listener starts over with a fresh subscription.
        self._subscriber = Redis.from_url(
            settings.redis_url,
            socket_timeout=None,
            socket_connect_timeout=settings.redis_timeout_seconds,
            retry=Retry(NoBackoff(), 0),
        )
        self._pubsub: PubSub | None = None
        self._subscribed: set[int] = set()
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()  # subscription changes, one at a time
        self._up = False
        self._connected = asyncio.Event()
        self._outage_logged = False
        self._outbox: deque[tuple[Collection[int], str]] = deque()
        self._outbox_ready = asyncio.Event()
        self._drained = asyncio.Event()  # set while the outbox is empty and nothing in flight
        self._publish_failing = False
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="fanout-listen"),
            asyncio.create_task(self._publish_loop(), name="fanout-publish"),
        ]
        # Serve once subscribed (or once it is clear Redis is away: the listener retries).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 2 * SUBSCRIBE_WAIT)

    async def stop(self) -> None:
        # Frames queued by sockets closing at shutdown (offline presence) still go out.
        if self._up:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), SUBSCRIBE_WAIT)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._disconnect()
        await self._subscriber.aclose()

    async def watch(self, user_id: int) -> None:
        confirmed = await self._sync(user_id)
        if confirmed is not None:
            # Subscribed before the socket is served, so nothing sent from now on is missed.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(confirmed, SUBSCRIBE_WAIT)

    async def unwatch(self, user_id: int) -> None:
        await self._sync(user_id)

    async def publish(
        self, user_ids: Collection[int], frame: str, exclude: str | None = None
    ) -> None:
        self._hub.deliver(user_ids, frame, exclude)
        if not self._up or not user_ids:
            return  # Redis away: other nodes' clients catch up from history on reconnect
        if len(self._outbox) >= OUTBOX_LIMIT:
            self._publish_failed("outbox full")
            return
        self._outbox.append((tuple(user_ids), frame))
        self._drained.clear()
        self._outbox_ready.set()

    def _channel(self, user_id: int) -> str:
        return f"{self._channel_prefix}{user_id}"

    async def _sync(self, user_id: int) -> asyncio.Future[None] | None:
        """Subscribe or unsubscribe the user as the hub says now (watch and unwatch can
        interleave); a future that resolves when Redis confirms a new subscription."""
        async with self._lock:
            pubsub = self._pubsub
            wanted = self._hub.is_connected(user_id)
            if not self._up or pubsub is None or wanted == (user_id in self._subscribed):
                return None  # (when Redis is back, the reconnect subscribes the hub's users)
            channel = self._channel(user_id)
            try:
                if not wanted:
                    await pubsub.unsubscribe(channel)
                    self._subscribed.discard(user_id)
                    return None
                confirmed = asyncio.get_running_loop().create_future()
                self._confirmations[channel.encode()] = confirmed
                await pubsub.subscribe(channel)
                self._subscribed.add(user_id)
                return confirmed
            except Exception as exc:
                # The listener sees the broken connection too, and re-subscribes everyone.
                log.debug("fanout: subscription change failed user=%s error=%r", user_id, exc)
                return None

    async def _listen(self) -> None:
        delay = RECONNECT_MIN
        while True:
            try:
                pubsub = await self._connect()
                delay = RECONNECT_MIN
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except REDIS_UNREACHABLE as exc:
                if not self._outage_logged:
                    self._outage_logged = True
                    log.warning(
                        "fanout: redis unreachable, serving this node's sockets only "
                        "node=%s error=%s",
                        self._node,
                        exc.__class__.__name__,
                    )
            except Exception:
                log.exception("fanout: listener failed node=%s", self._node)
            self._connected.set()  # start() stops waiting either way
            await self._disconnect()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _connect(self) -> PubSub:
        """A fresh subscription to every user this node holds (after start or an outage)."""
        async with self._lock:
            pubsub = self._pubsub = self._subscriber.pubsub()
            users = self._hub.users()
            # This node's own channel first: the connection always has a subscription.
            await pubsub.subscribe(f"{self._prefix}node:{self._node}")
            for i in range(0, len(users), SUBSCRIBE_CHUNK):
                await pubsub.subscribe(*(self._channel(u) for u in users[i : i + SUBSCRIBE_CHUNK]))
            self._subscribed = set(users)
            self._up = True
        self._connected.set()
        if self._outage_logged:
            self._outage_logged = False
            log.info("fanout: redis back, re-subscribed node=%s users=%d", self._node, len(users))
        return pubsub

    async def _read(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        header = self._header.encode()
        user_channel = self._channel_prefix.encode()
        prefix_len = len(user_channel)
        last_heard = last_ping = loop.time()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = loop.time()
            if message is None:
                if now - last_heard > 3 * KEEPALIVE:
                    raise ConnectionError("redis stopped answering pings")
                if now - last_ping >= KEEPALIVE:
                    await pubsub.ping()
                    last_ping = now
                continue
            last_heard = now
            kind = message["type"]
            if kind == "message":
                data: bytes = message["data"]
                if data.startswith(header) or not message["channel"].startswith(user_channel):
                    continue  # our own frame: our sockets had it from memory
                _, _, frame = data.partition(b"\n")
                user_id = int(message["channel"][prefix_len:])
                self._hub.deliver((user_id,), frame.decode())
            elif kind == "subscribe":
                confirmed = self._confirmations.pop(message["channel"], None)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)

    async def _disconnect(self) -> None:
        self._up = False
        pubsub, self._pubsub = self._pubsub, None
        self._subscribed.clear()
        for confirmed in self._confirmations.values():
            if not confirmed.done():
                confirmed.set_result(None)  # nobody waits on a subscription that is gone
        self._confirmations.clear()
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _publish_loop(self) -> None:
        while True:
            self._drained.set()
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                n = min(len(self._outbox), PUBLISH_BATCH)
                batch = [self._outbox.popleft() for _ in range(n)]
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for user_ids, frame in batch:
                            payload = self._header + frame
                            for user_id in user_ids:
                                pipe.publish(self._channel(user_id), payload)
                        await pipe.execute()
                except REDIS_UNREACHABLE as exc:
                    self._publish_failed(exc.__class__.__name__)
                    continue
                except Exception:
                    log.exception("fanout: publish failed node=%s frames=%d", self._node, n)
                    continue
                if self._publish_failing:
                    self._publish_failing = False
                    log.info("fanout: publishing again node=%s", self._node)

    def _publish_failed(self, reason: str) -> None:
        """Frames for other nodes are dropped (their clients catch up from history); said
        once per streak of failures, not once per frame."""
        if not self._publish_failing:
            self._publish_failing = True
            log.warning(
                "fanout: frames to other nodes dropped node=%s reason=%s", self._node, reason
            )
