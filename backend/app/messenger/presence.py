"""Who is online: a user with at least one open socket on any node.

Two implementations behind one interface: in this process for a single node, in
Redis for many. The rest of the code asks only this interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.exceptions
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from sqlalchemy import bindparam, select

from app.config import Settings
from app.db import utcnow
from app.jsonutil import dumps
from app.messenger.hub import Hub
from app.messenger.models import Participant

log = logging.getLogger(__name__)

# What a Redis outage looks like from here (refused, reset, timed out, still loading).
REDIS_UNREACHABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    TimeoutError,
)


class Presence(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def socket_opened(self, user_id: int) -> bool:
        """Count a new socket of this node; True when the user just came online."""
        ...

    async def socket_closed(self, user_id: int) -> bool:
        """Uncount a socket of this node; True when the user just went offline."""
        ...

    async def online(self, user_ids: Collection[int]) -> set[int]:
        """Which of these users are online, in one round trip."""
        ...

    async def last_seen(self, user_ids: Collection[int]) -> dict[int, datetime]:
        """When each user (of those known) was last connected."""
        ...


class LocalPresence:
    """One node: the hub's own sockets are the whole truth."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._counts: dict[int, int] = {}
        self._last_seen: dict[int, datetime] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def socket_opened(self, user_id: int) -> bool:
        self._counts[user_id] = self._counts.get(user_id, 0) + 1
        self._last_seen[user_id] = utcnow()
        return self._counts[user_id] == 1

    async def socket_closed(self, user_id: int) -> bool:
        left = self._counts.get(user_id, 0) - 1
        self._last_seen[user_id] = utcnow()
        if left > 0:
            self._counts[user_id] = left
            return False
        self._counts.pop(user_id, None)
        return True

    async def online(self, user_ids: Collection[int]) -> set[int]:
        return {u for u in user_ids if u in self._counts}

    async def last_seen(self, user_ids: Collection[int]) -> dict[int, datetime]:
        return {u: self._last_seen[u] for u in user_ids if u in self._last_seen}


# Keys, all under the configured prefix P:
#   P o:<user>    "1" with a TTL while some live node holds a socket of the user. online()
#                 is one MGET over these, and Redis's own clock expires a dead node's users.
#   P u:<user>    sorted set: node id -> expiry (ms, Redis time) of that node's claim. It
#                 makes "came online" / "went offline" exact across nodes and devices. The
#                 key lives three TTLs so a survivor still finds a dead node's expired claims.
#   P n:<node>    set of the users a node holds, so a survivor can clean up after it.
#   P nodes       sorted set: node id -> expiry (ms) of the node's last heartbeat.
#   P seen        hash: user -> last time (ms) a socket of theirs opened or closed.
# Every change is one Lua script: atomic, so two nodes never both announce the same user,
# and times come from Redis's clock, not the nodes'. (One Redis, not Redis Cluster: the
# scripts touch keys they compute.)
_LUA_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p, node = ARGV[1], ARGV[2]
"""

# ARGV: prefix, node, ttl_ms, user... -> the users who just came online (no other node).
_JOIN = (
    _LUA_NOW
    + """
local ttl = tonumber(ARGV[3])
redis.call('ZADD', p .. 'nodes', now + ttl, node)
local came = {}
for i = 4, #ARGV do
  local uid = ARGV[i]
  local u = p .. 'u:' .. uid
  local had = redis.call('ZSCORE', u, node)
  redis.call('ZADD', u, now + ttl, node)
  redis.call('PEXPIRE', u, 3 * ttl)
  redis.call('SET', p .. 'o:' .. uid, '1', 'PX', ttl)
  redis.call('SADD', p .. 'n:' .. node, uid)
  redis.call('HSET', p .. 'seen', uid, now)
  if not had and redis.call('ZCOUNT', u, now, '+inf') == 1 then table.insert(came, uid) end
end
return came
"""
)

# ARGV: prefix, node, user... -> the users who just went offline (no other live node).
_LEAVE = (
    _LUA_NOW
    + """
local gone = {}
for i = 3, #ARGV do
  local uid = ARGV[i]
  local u = p .. 'u:' .. uid
  local had = redis.call('ZREM', u, node)
  redis.call('SREM', p .. 'n:' .. node, uid)
  redis.call('HSET', p .. 'seen', uid, now)
  if redis.call('ZCOUNT', u, now, '+inf') == 0 then
    redis.call('DEL', u, p .. 'o:' .. uid)
    if had == 1 then table.insert(gone, uid) end
  end
end
return gone
"""
)

# ARGV: prefix, node, ttl_ms, user... -> the users whose claim was not there any more
# (Redis restarted, or a survivor took this node for dead): the caller joins them again.
# Only refreshes: a user who left meanwhile is not brought back.
_REFRESH = (
    _LUA_NOW
    + """
local ttl = tonumber(ARGV[3])
redis.call('ZADD', p .. 'nodes', now + ttl, node)
local missing = {}
for i = 4, #ARGV do
  local uid = ARGV[i]
  local u = p .. 'u:' .. uid
  if redis.call('ZSCORE', u, node) then
    redis.call('ZADD', u, now + ttl, node)
    redis.call('PEXPIRE', u, 3 * ttl)
    redis.call('SET', p .. 'o:' .. uid, '1', 'PX', ttl)
  else
    table.insert(missing, uid)
  end
end
return missing
"""
)

# ARGV: prefix, (unused), ttl_ms, batch -> nil, or {dead node, users who went offline}.
# SPOP hands each of a dead node's users to exactly one survivor, so nobody is announced
# twice and no lock is needed; the node is forgotten once its set is empty.
_REAP = (
    _LUA_NOW
    + """
local ttl, batch = tonumber(ARGV[3]), tonumber(ARGV[4])
local dead = redis.call('ZRANGEBYSCORE', p .. 'nodes', '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
if #dead == 0 then return false end
node = dead[1]
local last_seen = tonumber(dead[2]) - ttl
local set = p .. 'n:' .. node
local result = {node}
for _, uid in ipairs(redis.call('SPOP', set, batch)) do
  local u = p .. 'u:' .. uid
  if redis.call('ZREM', u, node) == 1 and redis.call('ZCOUNT', u, now, '+inf') == 0 then
    redis.call('DEL', u, p .. 'o:' .. uid)
    local seen = tonumber(redis.call('HGET', p .. 'seen', uid) or 0)
    if seen < last_seen then redis.call('HSET', p .. 'seen', uid, last_seen) end
    table.insert(result, uid)
  end
end
if redis.call('SCARD', set) == 0 then redis.call('ZREM', p .. 'nodes', node) end
return result
"""
)

CHUNK = 500  # users per script call: keeps each script short, Redis stays responsive
REAP_ROUNDS = 20  # chunks taken over per heartbeat, so one huge dead node cannot stall us
RETRY_MIN, RETRY_MAX = 0.1, 2.0

Announce = Callable[[int, bool], Awaitable[None]]


class RedisPresence:
    """Many nodes: Redis holds which nodes have sockets of which users.

    This node counts its own sockets in memory and writes to Redis only when a user's
    first socket here opens or their last closes, and on each heartbeat. If Redis is
    unreachable it answers from its own sockets (users it cannot see count as offline,
    so they get a push), and catches Redis up when it is back.
    """

    def __init__(self, redis: Redis, hub: Hub, settings: Settings) -> None:
        self._redis = redis
        self._hub = hub
        self._prefix = settings.redis_prefix
        self._node = settings.node_id
        self._ttl_ms = round(settings.presence_ttl_seconds * 1000)
        self._heartbeat = settings.presence_heartbeat_seconds
        self._counts: dict[int, int] = {}  # this node's open sockets per user
        self._registered: set[int] = set()  # users this node has claimed in Redis
        # Open, close, heartbeat and resync reach Redis one at a time, in the order they
        # happened here: a heartbeat never re-adds a user whose last socket just closed.
        self._lock = asyncio.Lock()
        # First sockets waiting to be claimed: claimed together, one script call for all
        # that came while the last call ran (a reconnect storm is not one call per user).
        self._claims: dict[int, asyncio.Future[bool]] = {}
        self._claimer: asyncio.Task | None = None
        self._down = True  # until the first sync; then only while Redis is unreachable
        self._outage_logged = False
        self._up_since = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._join = redis.register_script(_JOIN)
        self._leave = redis.register_script(_LEAVE)
        self._refresh = redis.register_script(_REFRESH)
        self._reap = redis.register_script(_REAP)
        # Set by the app: tells a user's contacts that they came or went, for changes this
        # node finds itself (a dead node's users, changes Redis missed while away).
        self.announce: Announce | None = None

    async def start(self) -> None:
        try:
            await self._announce(*await self._resync())
        except REDIS_UNREACHABLE as exc:
            self._fail(exc)
        self._task = asyncio.create_task(self._run(), name="presence-heartbeat")

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
            await self._redis.zrem(f"{self._prefix}nodes", self._node)

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
                came = set(await self._call(self._join, users, self._ttl_ms))
            except REDIS_UNREACHABLE as exc:
                self._fail(exc)
                return set(users)
            self._registered.update(users)
            return came

    async def socket_closed(self, user_id: int) -> bool:
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
            values = await self._redis.mget([f"{self._prefix}o:{u}" for u in ids])
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
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.mget([f"{self._prefix}o:{u}" for u in ids])
                pipe.hmget(f"{self._prefix}seen", ids)
                online, times = await pipe.execute()
        except REDIS_UNREACHABLE as exc:
            self._fail(exc)
            return seen
        for u, on, ms in zip(ids, online, times, strict=True):
            if on is not None:
                seen[u] = now
            elif ms is not None and u not in seen:
                seen[u] = datetime.fromtimestamp(int(ms) / 1000, UTC)
        return seen

    # -- keeping Redis in line with this node -------------------------------------------

    async def _call(self, script: AsyncScript, users: Iterable[int], *args: object) -> list[int]:
        """Run a script over users in chunks (at least once: it also refreshes the node)."""
        users = list(users)
        out: list[int] = []
        for i in range(0, max(len(users), 1), CHUNK):
            argv = [self._prefix, self._node, *args, *users[i : i + CHUNK]]
            out += [int(u) for u in await script(args=argv) or ()]
        return out

    async def _resync(self) -> tuple[list[int], list[int]]:
        """Claim this node's users again (after start or an outage); (came, went) users."""
        async with self._lock:
            members = {int(u) for u in await self._redis.smembers(f"{self._prefix}n:{self._node}")}
            local = set(self._counts)
            gone = await self._call(self._leave, members - local) if members - local else []
            came = await self._call(self._join, local, self._ttl_ms)
            # Sockets opened or closed meanwhile saw Redis as down: bring those in too.
            while (now_local := set(self._counts)) != local:
                if local - now_local:
                    gone += await self._call(self._leave, local - now_local)
                if now_local - local:
                    came += await self._call(self._join, now_local - local, self._ttl_ms)
                local = now_local
            self._registered = local
            self._down = False
            self._up_since = asyncio.get_running_loop().time()
        if self._outage_logged:
            log.info("presence: redis back, users claimed node=%s users=%d", self._node, len(local))
            self._outage_logged = False
        return came, gone

    async def _beat(self) -> list[int]:
        """Refresh this node's claims; the users who came online again (after a loss)."""
        async with self._lock:
            if self._down:
                return []
            missing = await self._call(self._refresh, self._registered, self._ttl_ms)
            return await self._call(self._join, missing, self._ttl_ms) if missing else []

    async def _take_over_dead(self) -> list[int]:
        """Users of nodes whose heartbeat expired who are now offline everywhere."""
        gone: list[int] = []
        for _ in range(REAP_ROUNDS):
            result = await self._reap(args=[self._prefix, "", self._ttl_ms, CHUNK])
            if not result:
                break
            dead, *users = result
            log.info(
                "presence: took over dead node=%s offline=%d by node=%s",
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
                log.exception("presence: heartbeat failed node=%s", self._node)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _fail(self, exc: BaseException) -> None:
        """Redis is unreachable: serve from this node's sockets until the loop resyncs."""
        if not self._down:
            self._wake.set()  # resync at once; after that the loop backs off
        self._down = True
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "presence: redis unreachable, only this node's users are online node=%s error=%s",
                self._node,
                exc.__class__.__name__,
            )

    async def _announce(self, came: list[int], gone: list[int]) -> None:
        if self.announce is None:
            return
        for user_id, online in [(u, True) for u in came] + [(u, False) for u in gone]:
            if (user_id in self._counts) != online:
                continue  # changed again since
            try:
                await self.announce(user_id, online)
            except Exception:
                log.exception("presence: announce failed user=%s online=%s", user_id, online)


_me = Participant.__table__.alias("me")
_other = Participant.__table__.alias("other")
# Built once: making the aliases' columns again for every socket was 40% of a connect's CPU.
_CONTACTS = (
    select(_other.c.user_id)
    .distinct()
    .join(_me, _me.c.conversation_id == _other.c.conversation_id)
    .where(_me.c.user_id == bindparam("user_id"), _other.c.user_id != bindparam("user_id"))
)


async def contacts_of(services: Any, user_id: int) -> list[int]:
    """Everyone who shares a conversation with the user."""
    async with services.engine.connect() as conn:
        return list((await conn.execute(_CONTACTS, {"user_id": user_id})).scalars())


def presence_frame(user_id: int, online: bool) -> str:
    return dumps({"type": "presence", "user_id": user_id, "online": online})


async def announce_presence(
    services: Any, user_id: int, online: bool, contacts: list[int] | None = None
) -> None:
    """Tell everyone who shares a conversation with the user that they came or went."""
    if contacts is None:
        contacts = await contacts_of(services, user_id)
    if contacts:
        await services.fanout.publish(contacts, presence_frame(user_id, online))
