"""Presence for many nodes, kept in Redis (its key layout is in redis_keys).

Every change is one Lua script, presence_*.lua: atomic, so two nodes never both
announce the same user, and times come from Redis's clock, not the nodes'. On a Redis
Cluster the same scripts run once per part of the key space (RedisKeys.parts) that
holds some of the users concerned, the parts side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import Any

from redis.typing import EncodableT

from app.config import Settings
from app.db import utcnow
from app.messenger.presence import Gone
from app.messenger.redis_breaker import RedisBreaker
from app.messenger.redis_client import AnyRedis, is_cluster, mget
from app.messenger.redis_keys import REDIS_UNREACHABLE, RedisKeys, load_lua

log = logging.getLogger(__name__)

_NOW = load_lua("presence_now.lua")
_JOIN = _NOW + load_lua("presence_join.lua")
_LEAVE = _NOW + load_lua("presence_leave.lua")
_REFRESH = _NOW + load_lua("presence_refresh.lua")
_REAP = _NOW + load_lua("presence_reap.lua")

CHUNK = 500  # users per script call: keeps each script short, Redis stays responsive
REAP_ROUNDS = 20  # chunks taken over per heartbeat, so one huge dead node cannot stall us
RETRY_MIN, RETRY_MAX = 0.1, 2.0

Announce = Callable[[int, bool], Awaitable[None]]
_Script = Callable[[int, list[int]], Awaitable[Any]]  # (part, users)
_Head = Callable[[RedisKeys], tuple[EncodableT, ...]]


class RedisPresence:
    """Many nodes: Redis holds which nodes have sockets of which users.

    This node counts its own sockets in memory and writes to Redis only when a user's
    first socket here opens or their last closes, and on each heartbeat. While Redis is
    away (the breaker is open) it answers from its own sockets (users it cannot see count
    as offline, so they get a push), and catches Redis up when it is back.
    """

    def __init__(
        self,
        redis: AnyRedis,
        settings: Settings,
        breaker: RedisBreaker,
        keys: RedisKeys | None = None,
        name: str = "presence",
    ) -> None:
        self._redis = redis
        self._breaker = breaker
        # Attention is this class again, over keys of its own (RedisKeys.attention).
        self._keys = keys = keys or RedisKeys(settings.redis_prefix, is_cluster(redis))
        self._name = name
        self._node = node = settings.node_id
        self._ttl_ms = ttl_ms = round(settings.presence_ttl_seconds * 1000)
        self._heartbeat = settings.presence_heartbeat_seconds
        self._counts: dict[int, int] = {}  # this node's open sockets per user
        self._registered: set[int] = set()  # users this node has claimed in Redis
        # Open, close, heartbeat and resync reach Redis one at a time, in the order they
        # happened here: a heartbeat never re-adds a user whose last socket just closed.
        self._lock = asyncio.Lock()
        # First sockets waiting to be claimed: claimed together, one script call for all
        # that came while the last call ran (a reconnect storm is not one call per user).
        self._claims: dict[int, asyncio.Future[bool]] = {}
        self._claimer: asyncio.Task[None] | None = None
        self._down = True  # until the first sync; then only while Redis is unreachable
        self._up_since = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Each script with the arguments that come before its users (see the .lua files).
        self._join = self._script(
            _JOIN,
            lambda k: (
                k.nodes,
                k.seen,
                k.online_prefix,
                k.claims_prefix,
                k.held(node),
                node,
                ttl_ms,
            ),
        )
        self._leave = self._script(
            _LEAVE, lambda k: (k.seen, k.online_prefix, k.claims_prefix, k.held(node), node)
        )
        self._refresh = self._script(
            _REFRESH, lambda k: (k.nodes, k.online_prefix, k.claims_prefix, node, ttl_ms)
        )
        self._reap = self._script(
            _REAP,
            lambda k: (
                *(k.nodes, k.seen, k.online_prefix, k.claims_prefix, k.held_prefix),
                *(ttl_ms, CHUNK),
            ),
        )
        # Set by the app: tells a user's contacts that they came or went, for changes this
        # node finds itself (a dead node's users, changes Redis missed while away).
        self.announce: Announce | None = None
        # Set by the app: told of users who went offline everywhere, as this node finds out.
        self.on_gone: Gone | None = None
        breaker.on_open(self._redis_lost)
        breaker.on_close(self.check_claims)

    async def start(self) -> None:
        try:
            await self._announce(*await self._resync())
        except REDIS_UNREACHABLE as exc:
            self._fail(exc)
        except Exception as exc:  # e.g. a cluster's slot map moving under the first calls
            log.warning("%s: first sync failed node=%s error=%r", self._name, self._node, exc)
            self._fail(exc)
        self._task = asyncio.create_task(self._run(), name=f"{self._name}-heartbeat")

    def check_claims(self) -> None:
        """Refresh this node's claims now, not at the next heartbeat: Redis may have
        restarted and lost them (its client retries quietly, so nothing else would tell)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._down:
            return  # survivors take this node's claims over once its heartbeat expires
        with contextlib.suppress(*REDIS_UNREACHABLE):
            # Sockets are closed by now; this is what is left (nobody to announce it to).
            await self._call(self._leave, self._registered)
            await asyncio.gather(*(self._redis.zrem(k.nodes, self._node) for k in self._keys.parts))

    async def socket_opened(self, user_id: int) -> bool:
        self._counts[user_id] = self._counts.get(user_id, 0) + 1
        if self._counts[user_id] > 1:
            return False
        if self._down:
            return True  # Redis unreachable: a first socket here is all this node can know
        claim = self._claims.get(user_id)
        if claim is None:
            claim = self._claims[user_id] = asyncio.get_running_loop().create_future()
            if self._claimer is None:
                self._claimer = asyncio.create_task(self._claim_waiting())
        return await claim

    async def _claim_waiting(self) -> None:
        """Claim the first sockets that are waiting, all in one go, until none are left."""
        try:
            while self._claims:
                claims, self._claims = self._claims, {}
                try:
                    came = await self._claim(list(claims))
                except Exception as exc:  # the sockets' handlers see it, and close
                    for claim in claims.values():
                        if not claim.done():
                            claim.set_exception(exc)
                    continue
                for user_id, claim in claims.items():
                    if not claim.done():
                        claim.set_result(user_id in came)
        finally:
            self._claimer = None

    async def _claim(self, users: list[int]) -> set[int]:
        """Claim these users' first sockets in Redis; the users who just came online."""
        async with self._lock:
            # Closed again while waiting, or already claimed: nothing to do for those.
            users = [u for u in users if u in self._counts and u not in self._registered]
            if not users or self._down:
                return set(users)  # Redis away: a first socket here is all we can know
            try:
                came = set(await self._call(self._join, users))
            except REDIS_UNREACHABLE as exc:
                self._fail(exc)
                return set(users)
            self._registered.update(users)
            return came

    @property
    def complete(self) -> bool:
        return not self._down

    async def socket_closed(self, user_id: int) -> bool:
        gone = await self._socket_closed(user_id)
        if gone and self.on_gone is not None:
            self.on_gone([user_id])
        return gone

    async def _socket_closed(self, user_id: int) -> bool:
        left = self._counts.get(user_id, 0) - 1
        if left > 0:
            self._counts[user_id] = left
            return False
        self._counts.pop(user_id, None)
        if not self._down:
            async with self._lock:
                if user_id in self._counts or user_id not in self._registered:
                    return False  # reopened while we waited, or never claimed
                if not self._down:
                    try:
                        gone = await self._call(self._leave, [user_id])
                    except REDIS_UNREACHABLE as exc:
                        self._fail(exc)
                    else:
                        self._registered.discard(user_id)
                        return bool(gone)
        return True

    async def online(self, user_ids: Collection[int]) -> set[int]:
        here = {u for u in user_ids if u in self._counts}
        ids = [u for u in user_ids if u not in here]  # Redis is asked only about the rest
        if self._down or not ids:
            return here
        try:
            values = await mget(self._redis, [self._online_key(u) for u in ids])
        except REDIS_UNREACHABLE as exc:
            self._fail(exc)
            return here
        return here | {u for u, v in zip(ids, values, strict=True) if v is not None}

    async def last_seen(self, user_ids: Collection[int]) -> dict[int, datetime]:
        ids = list(user_ids)
        now = utcnow()
        seen = {u: now for u in ids if u in self._counts}
        if self._down or not ids:
            return seen
        try:
            online, times = await self._online_and_seen(ids)
        except REDIS_UNREACHABLE as exc:
            self._fail(exc)
            return seen
        for u, on, ms in zip(ids, online, times, strict=True):
            if on is not None:
                seen[u] = now
            elif ms is not None and u not in seen:
                seen[u] = datetime.fromtimestamp(int(ms) / 1000, UTC)
        return seen

    def _online_key(self, user_id: int) -> str:
        return self._keys.parts[self._keys.part_of(user_id)].online(user_id)

    async def _online_and_seen(self, ids: list[int]) -> tuple[list[Any], list[Any]]:
        """Each user's online flag and last-seen time, in the order of ids."""
        if not self._keys.cluster:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.mget([self._keys.online(u) for u in ids])
                pipe.hmget(self._keys.seen, ids)
                online, times = await pipe.execute()
            return online, times
        groups = self._by_part(ids)
        online, *per_part = await asyncio.gather(
            mget(self._redis, [self._online_key(u) for u in ids]),
            *(self._redis.hmget(self._keys.parts[p].seen, us) for p, us in groups.items()),
        )
        seen: dict[int, Any] = {}
        for users, values in zip(groups.values(), per_part, strict=True):
            seen.update(zip(users, values, strict=True))
        return online, [seen[u] for u in ids]

    # -- keeping Redis in line with this node -------------------------------------------

    def _script(self, source: str, head: _Head) -> _Script:
        """Register a script; calling it on a part runs it with the arguments `head` gives
        for that part's keys, then the users. On a cluster its first key routes the call
        to the part's shard (the scripts take names from ARGV, all in the part's slot)."""
        script = self._redis.register_script(source)
        heads = [[*head(k)] for k in self._keys.parts]
        routes = [[k.nodes] if self._keys.cluster else [] for k in self._keys.parts]

        async def run(part: int, users: list[int]) -> Any:
            return await script(keys=routes[part], args=[*heads[part], *users])

        return run

    def _by_part(self, users: Iterable[int]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for u in users:
            groups.setdefault(self._keys.part_of(u), []).append(u)
        return groups

    async def _call(self, script: _Script, users: Iterable[int]) -> list[int]:
        """Run a script over users in chunks. One Redis: at least once (it also refreshes
        the node). A cluster: once per part that holds some of them, side by side."""
        users = list(users)
        if not self._keys.cluster:
            return await self._call_part(script, 0, users)
        groups = self._by_part(users)
        results = await asyncio.gather(
            *(self._call_part(script, part, us) for part, us in groups.items())
        )
        return [u for result in results for u in result]

    async def _call_part(self, script: _Script, part: int, users: list[int]) -> list[int]:
        out: list[int] = []
        for i in range(0, max(len(users), 1), CHUNK):
            out += [int(u) for u in await script(part, users[i : i + CHUNK]) or ()]
        return out

    async def _resync(self) -> tuple[list[int], list[int]]:
        """Claim this node's users again (after start or an outage); (came, went) users."""
        async with self._lock:
            held = await asyncio.gather(
                *(self._redis.smembers(k.held(self._node)) for k in self._keys.parts)
            )
            members = {int(u) for part in held for u in part}
            local = set(self._counts)
            gone = await self._call(self._leave, members - local) if members - local else []
            came = await self._call(self._join, local)
            # Sockets opened or closed meanwhile saw Redis as down: bring those in too.
            while (now_local := set(self._counts)) != local:
                if local - now_local:
                    gone += await self._call(self._leave, local - now_local)
                if now_local - local:
                    came += await self._call(self._join, now_local - local)
                local = now_local
            self._registered = local
            self._down = False
            self._up_since = asyncio.get_running_loop().time()
        log.debug("%s: users claimed node=%s users=%d", self._name, self._node, len(local))
        return came, gone

    async def _beat(self) -> list[int]:
        """Refresh this node's claims; the users who came online again (after a loss)."""
        async with self._lock:
            if self._down:
                return []
            missing = await self._call(self._refresh, self._registered)
            return await self._call(self._join, missing) if missing else []

    async def _take_over_dead(self) -> list[int]:
        """Users of nodes whose heartbeat expired who are now offline everywhere."""
        parts = range(len(self._keys.parts))
        found = await asyncio.gather(*(self._take_over_dead_in(p) for p in parts))
        return [u for gone in found for u in gone]

    async def _take_over_dead_in(self, part: int) -> list[int]:
        gone: list[int] = []
        for _ in range(REAP_ROUNDS):
            result = await self._reap(part, [])
            if not result:
                break
            dead, *users = result
            log.info(
                "%s: took over dead node=%s offline=%d by node=%s",
                self._name,
                dead.decode(),
                len(users),
                self._node,
            )
            gone += [int(u) for u in users]
        return gone

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        retry = RETRY_MIN
        while True:
            self._wake.clear()
            delay = self._heartbeat
            try:
                if self._down:
                    await self._breaker.wait_closed()  # its probe knocks, not every part
                    came, gone = await self._resync()
                else:
                    came, gone = await self._beat(), []
                    # Just after an outage every node's heartbeat looks expired: wait one TTL
                    # so live nodes have claimed their users again before taking any for dead.
                    if loop.time() - self._up_since >= self._ttl_ms / 1000:
                        gone += await self._take_over_dead()
                retry = RETRY_MIN
                await self._announce(came, gone)
            except REDIS_UNREACHABLE as exc:
                self._fail(exc)
                delay, retry = min(retry, self._heartbeat), min(retry * 2, RETRY_MAX)
            except Exception:
                log.exception("%s: heartbeat failed node=%s", self._name, self._node)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel that
            # stop() sends when the wake-up lands at the same moment.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _fail(self, exc: BaseException) -> None:
        """Redis is unreachable: serve from this node's sockets until the loop resyncs."""
        self._redis_lost()
        self._breaker.trip(exc)

    def _redis_lost(self) -> None:
        """Redis went away (whichever part noticed): Redis is caught up once it is back."""
        if not self._down:
            self._wake.set()  # resync as soon as the breaker closes; then the loop backs off
        self._down = True

    async def _announce(self, came: list[int], gone: list[int]) -> None:
        if self.on_gone is not None and gone:
            self.on_gone([u for u in gone if u not in self._counts])
        if self.announce is None:
            return
        for user_id, online in [(u, True) for u in came] + [(u, False) for u in gone]:
            if (user_id in self._counts) != online:
                continue  # changed again since
            try:
                await self.announce(user_id, online)
            except Exception:
                log.exception("presence: announce failed user=%s online=%s", user_id, online)
