"""One circuit breaker for everything on a node that uses Redis: flood control, presence
and fan-out share it, so the node notices an outage once and heals once.

Closed, they call Redis. The first call that finds Redis unreachable opens it (one log
line); while it is open nothing waits on Redis: each part takes its fallback at once
(the in-process limiter, this node's own sockets). A probe pings Redis meanwhile, and
its first answer closes the breaker (one log line): presence claims this node's users
again and fan-out subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from app.messenger.redis_client import AnyRedis, probe
from app.messenger.redis_keys import REDIS_UNREACHABLE

log = logging.getLogger(__name__)

PROBE_MIN, PROBE_MAX = 0.1, 1.0  # seconds between pings while open, doubling


class RedisBreaker:
    def __init__(self, redis: AnyRedis, node_id: str, probe_timeout: float) -> None:
        self._redis = redis
        self._node = node_id
        self._probe_timeout = probe_timeout
        self._closed = asyncio.Event()
        self._closed.set()
        self._opened_at = 0.0
        self._probe: asyncio.Task[None] | None = None
        self._on_open: list[Callable[[], None]] = []
        self._on_close: list[Callable[[], None]] = []
        self._stopping = False

    @property
    def is_open(self) -> bool:
        """Redis is away: take the fallback without trying it."""
        return not self._closed.is_set()

    def on_open(self, callback: Callable[[], None]) -> None:
        """Call this each time the breaker opens (once per outage)."""
        self._on_open.append(callback)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call this each time the breaker closes again (Redis is back)."""
        self._on_close.append(callback)

    def trip(self, exc: BaseException) -> None:
        """A call found Redis unreachable: open, unless open already."""
        if self.is_open or self._stopping:
            return
        self._closed.clear()
        loop = asyncio.get_running_loop()
        self._opened_at = loop.time()
        log.warning(
            "redis unreachable: serving this node's sockets, flood control in process "
            "node=%s error=%s",
            self._node,
            exc.__class__.__name__,
        )
        self._notify(self._on_open)
        self._probe = asyncio.create_task(self._probe_until_back(), name="redis-probe")

    async def wait_closed(self) -> None:
        """Return once Redis answers again (at once while it does)."""
        await self._closed.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe

    async def _probe_until_back(self) -> None:
        delay = PROBE_MIN
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, PROBE_MAX)
            try:
                async with asyncio.timeout(self._probe_timeout):
                    await probe(self._redis)  # a cluster: every master, as the map is now
            except REDIS_UNREACHABLE:
                continue
            except Exception as exc:  # answering, but not well: still away for us
                log.debug("redis probe failed node=%s error=%r", self._node, exc)
                continue
            break
        self._probe = None
        self._closed.set()
        away = asyncio.get_running_loop().time() - self._opened_at
        log.info("redis back after %.1f s node=%s", away, self._node)
        self._notify(self._on_close)

    def _notify(self, callbacks: list[Callable[[], None]]) -> None:
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("redis breaker: a listener failed node=%s", self._node)
