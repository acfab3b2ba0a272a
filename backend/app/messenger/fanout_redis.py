"""Fan-out for many nodes, through Redis (its key layout is in redis_keys)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub

from app.config import Settings
from app.messenger.hub import Hub
from app.messenger.redis_breaker import RedisBreaker
from app.messenger.redis_client import (
    AnyRedis,
    build_subscriber,
    is_cluster,
    publish,
    refresh_topology,
)
from app.messenger.redis_keys import REDIS_UNREACHABLE, RedisKeys, load_lua

log = logging.getLogger(__name__)

_ROUTE = load_lua("fanout_route.lua")
_CLAIMS = load_lua("fanout_claims.lua")

PUBLISH_BATCH = 500  # frames per script call
OUTBOX_LIMIT = 50_000  # frames waiting for Redis; beyond this they are dropped (clients resync)
KEEPALIVE = 5.0  # ping an idle subscription this often; three missed answers is a dead link
CONNECT_WAIT = 4.0  # start() waits this long at most for the subscription
RECONNECT_MIN, RECONNECT_MAX = 0.1, 2.0


class RedisFanout:
    """Many nodes: each node subscribes to one channel of its own, P node:<node>, and a
    frame goes to the nodes that hold sockets of its users, as presence records them.

    Why per node and not per user or conversation: a node receives only frames for the
    sockets it holds, and only from other nodes, so it never reads back what it sent; a
    frame costs one message per node that needs it, however large the group; and the
    subscription never changes as users come and go. The routing is one Lua script per
    batch of frames, so Redis is asked once however many frames a busy moment produced.

    The price: a node must have claimed a user in presence before it serves their socket
    (presence does that on the first socket), and a node that lost its claims to a Redis
    restart gets nothing until it has claimed them again: each new subscription calls
    `on_subscribed`, which has presence check its claims at once.
    Frames missed that way, as any frame missed in an outage, come from history: clients
    catch up on reconnect and on a gap in a conversation's seq.

    One task publishes in order, so frames from this node reach the others in the order
    they were sent, and the send path never waits on Redis. While Redis is away (the
    breaker is open) frames reach this node's sockets only.

    Beside its own channel every node listens on one shared channel, P
    <prefix>participants-changed, which carries the id of a conversation whose members
    changed: each node drops it from its participant cache (`on_participants_changed`).
    It is published straight away, not through the outbox, so it reaches every node
    before any frame this node sends after the change.

    On a Redis Cluster the claims are spread over parts of the key space (redis_keys), so
    one script cannot see them all: fanout_claims.lua reads each part's claims (the parts
    side by side), this node groups the frames per destination node as fanout_route.lua
    does, and sends each node its share with SPUBLISH, which the node reads with
    SSUBSCRIBE on the one shard that owns its channel. That costs one more round trip per
    batch than one Redis; the messages per node and batch stay one.
    """

    def __init__(
        self, redis: AnyRedis, hub: Hub, settings: Settings, breaker: RedisBreaker
    ) -> None:
        self._redis = redis
        self._breaker = breaker
        self._hub = hub
        self._node = settings.node_id
        self._keys = keys = RedisKeys(settings.redis_prefix, is_cluster(redis))
        self._channel = keys.channel(settings.node_id)
        self._control = keys.participants_changed
        self._route = redis.register_script(_ROUTE)
        self._route_args = [keys.claims_prefix, keys.channel_prefix, settings.node_id]
        self._claims = redis.register_script(_CLAIMS)
        # Its own client: the subscription blocks on reads, so no socket timeout, and no
        # retries either: on any error the listener starts over with a fresh subscription.
        self._subscriber = build_subscriber(settings)
        self._pubsub: PubSub | None = None
        self._up = False
        self._connected = asyncio.Event()
        self._outbox: deque[tuple[Collection[int], str]] = deque()
        self._outbox_ready = asyncio.Event()
        self._drained = asyncio.Event()  # set while the outbox is empty and nothing in flight
        self._publish_failing = False
        self._tasks: list[asyncio.Task[None]] = []
        # Set by the app: called on every new subscription (the first, and after any drop,
        # which may have been a Redis restart that lost this node's claims).
        self.on_subscribed: Callable[[], None] | None = None
        # Set by the app: a conversation's members changed (on any node); None: any may
        # have (a new subscription: changes made while there was none were missed).
        self.on_participants_changed: Callable[[str | None], None] | None = None

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="fanout-listen"),
            asyncio.create_task(self._publish_loop(), name="fanout-publish"),
        ]
        # Serve once subscribed (or once it is clear Redis is away: the listener retries).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), CONNECT_WAIT)

    async def stop(self) -> None:
        # Frames queued by sockets closing at shutdown (offline presence) still go out.
        if self._up:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), CONNECT_WAIT / 2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._disconnect()
        await self._subscriber.aclose()

    async def publish(
        self, user_ids: Collection[int], frame: str, exclude: str | None = None
    ) -> None:
        self._hub.deliver(user_ids, frame, exclude)
        if not self._up or self._breaker.is_open or not user_ids:
            return  # Redis away: other nodes' clients catch up from history
        if len(self._outbox) >= OUTBOX_LIMIT:
            self._publish_failed("outbox full")
            return
        self._outbox.append((tuple(user_ids), frame))
        self._drained.clear()
        self._outbox_ready.set()

    async def participants_changed(self, conversation_id: str) -> None:
        """Tell every node a conversation's members changed. While Redis is away the other
        nodes are not told (said in the log); each forgets every conversation once it
        subscribes again."""
        if not self._up or self._breaker.is_open:
            log.warning(
                "fanout: participants change not shared node=%s conversation=%s",
                self._node,
                conversation_id,
            )
            return
        try:
            await publish(self._redis, self._control, conversation_id)
        except REDIS_UNREACHABLE as exc:
            self._breaker.trip(exc)

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
                self._breaker.trip(exc)
            except Exception:
                log.exception("fanout: listener failed node=%s", self._node)
            self._connected.set()  # start() stops waiting either way
            await self._disconnect()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)
            await self._breaker.wait_closed()  # its probe knocks, not every part

    async def _connect(self) -> PubSub:
        if self._keys.cluster:
            # A master may have been replaced since: subscribe where the channels live now.
            await refresh_topology(self._subscriber)
        pubsub = self._pubsub = self._subscriber.pubsub()
        if isinstance(pubsub, ClusterPubSub):
            await pubsub.ssubscribe(self._channel, self._control)
        else:
            await pubsub.subscribe(self._channel, self._control)
        self._up = True  # connected: publishing goes on while we wait for the confirmation
        # Once Redis confirms both, whatever is published to them reaches us.
        confirmed = 0
        async with asyncio.timeout(CONNECT_WAIT):
            while confirmed < 2:
                message = await _next_message(pubsub, self._channel)
                if message is not None and message["type"] in ("subscribe", "ssubscribe"):
                    confirmed += 1
        self._connected.set()
        if self.on_subscribed is not None:
            self.on_subscribed()
        if self.on_participants_changed is not None:
            self.on_participants_changed(None)
        log.debug("fanout: subscribed node=%s", self._node)
        return pubsub

    async def _read(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        deliver = self._hub.deliver
        control = self._control.encode()
        last_heard = last_ping = loop.time()
        while True:
            message = await _next_message(pubsub, self._channel)
            now = loop.time()
            if message is None:
                if now - last_heard > 3 * KEEPALIVE:
                    raise ConnectionError("redis stopped answering pings")
                if now - last_ping >= KEEPALIVE:
                    await _ping(pubsub)
                    last_ping = now
                continue
            last_heard = now
            if message["type"] not in ("message", "smessage"):
                continue
            if message["channel"] == control:
                if self.on_participants_changed is not None:
                    self.on_participants_changed(message["data"].decode())
                continue
            parts = message["data"].decode().split("\n")
            for k in range(0, len(parts) - 1, 2):
                deliver([int(u) for u in parts[k].split(",")], parts[k + 1])

    async def _disconnect(self) -> None:
        self._up = False
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                # redis-py leaves PubSub.aclose unannotated.
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _publish_loop(self) -> None:
        while True:
            self._drained.set()
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                if self._breaker.is_open:
                    self._outbox.clear()  # other nodes' clients catch up from history
                    break
                n = min(len(self._outbox), PUBLISH_BATCH)
                outbox = self._outbox
                frames = []
                for _ in range(n):
                    user_ids, frame = outbox.popleft()
                    frames.append(",".join(map(str, user_ids)))
                    frames.append(frame)
                try:
                    if self._keys.cluster:
                        await self._route_on_cluster(frames)
                    else:
                        await self._route(args=[*self._route_args, "\n".join(frames)])
                except REDIS_UNREACHABLE as exc:
                    self._breaker.trip(exc)
                    continue
                except Exception:
                    log.exception("fanout: publish failed node=%s frames=%d", self._node, n)
                    continue
                if self._publish_failing:
                    self._publish_failing = False
                    log.info("fanout: publishing again node=%s", self._node)

    async def _route_on_cluster(self, frames: list[str]) -> None:
        """fanout_route.lua's work on a cluster: frames is [users, frame, users, frame...]."""
        parts: dict[int, list[int]] = {}
        for users in frames[0::2]:
            for uid in users.split(","):
                u = int(uid)
                part = parts.setdefault(self._keys.part_of(u), [])
                if not part or part[-1] != u:
                    part.append(u)
        found = await asyncio.gather(
            *(
                self._claims(
                    keys=[self._keys.parts[p].nodes],
                    args=[self._keys.parts[p].claims_prefix, *dict.fromkeys(users)],
                )
                for p, users in parts.items()
            )
        )
        nodes_of: dict[str, list[str]] = {}
        for wanted, answer in zip(parts.values(), found, strict=True):
            for u, nodes in zip(dict.fromkeys(wanted), answer, strict=True):
                nodes_of[str(u)] = [n.decode() for n in nodes if n.decode() != self._node]
        # Per destination node: "<its users>\n<frame>..." for the frames it needs, in order.
        out: dict[str, list[str]] = {}
        for users, frame in zip(frames[0::2], frames[1::2], strict=True):
            per: dict[str, list[str]] = {}
            for uid in users.split(","):
                for node in nodes_of.get(uid, ()):
                    per.setdefault(node, []).append(uid)
            for node, theirs in per.items():
                out.setdefault(node, []).extend((",".join(theirs), frame))
        await asyncio.gather(
            *(publish(self._redis, self._keys.channel(n), "\n".join(p)) for n, p in out.items())
        )

    def _publish_failed(self, reason: str) -> None:
        """Frames for other nodes are dropped (their clients catch up from history); said
        once per streak of failures, not once per frame."""
        if not self._publish_failing:
            self._publish_failing = True
            log.warning(
                "fanout: frames to other nodes dropped node=%s reason=%s", self._node, reason
            )


async def _next_message(pubsub: PubSub, channel: str) -> dict[str, Any] | None:
    """The next message of a subscription, or None after a while of silence.

    On a cluster the two channels may sit on two shards, one connection each, and redis-py
    waits on them in turn: a long wait on the quiet one would hold up the frames. So every
    connection is looked at without waiting, then the one of this node's channel (where
    the frames come) is waited on briefly: a participants change waits 0.1 s at most."""
    message: dict[str, Any] | None
    if isinstance(pubsub, ClusterPubSub):
        message = await pubsub.get_sharded_message(timeout=0.0)
        if message is None:
            hot = pubsub.cluster.get_node_from_key(channel)
            message = await pubsub.get_sharded_message(timeout=0.1, target_node=hot)
    else:
        message = await pubsub.get_message(timeout=1.0)
    return message


async def _ping(pubsub: PubSub) -> None:
    """A keepalive on every connection of a subscription (one per shard on a cluster)."""
    if isinstance(pubsub, ClusterPubSub):
        for shard in list(pubsub.node_pubsub_mapping.values()):
            await shard.ping()
    else:
        await pubsub.ping()
