"""Who is online: a user with at least one open socket on any node.

The interface the rest of the code asks, and its single-node version in this process;
the version for many nodes is presence_redis.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Protocol

from app.db import utcnow

# Told of users who just went offline everywhere, as this node's presence finds out.
Gone = Callable[[Collection[int]], None]


class Presence(Protocol):
    # Set by the app (the push service's re-check listens).
    on_gone: Gone | None

    @property
    def complete(self) -> bool:
        """Whether online() sees every node's sockets (not while it can see only this one)."""
        ...

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
    """One node: its own sockets are the whole truth."""

    complete = True

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._last_seen: dict[int, datetime] = {}
        self.on_gone: Gone | None = None

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
        if self.on_gone is not None:
            self.on_gone([user_id])
        return True

    async def online(self, user_ids: Collection[int]) -> set[int]:
        return {u for u in user_ids if u in self._counts}

    async def last_seen(self, user_ids: Collection[int]) -> dict[int, datetime]:
        return {u: self._last_seen[u] for u in user_ids if u in self._last_seen}
