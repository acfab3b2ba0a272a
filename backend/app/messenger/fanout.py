"""Getting a frame to every socket of some users, wherever those sockets are.

The interface, and its single-node version. Sockets on this node are always served
straight from memory; the version for many nodes, fanout_redis, also hands the frame
to the other nodes that hold sockets of those users.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from app.messenger.hub import Hub


class Fanout(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(
        self, user_ids: Collection[int], frame: str, exclude: str | None = None
    ) -> None:
        """Deliver the frame to every socket of these users except the one excluded."""
        ...


class LocalFanout:
    """One node: every socket is here."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def publish(
        self, user_ids: Collection[int], frame: str, exclude: str | None = None
    ) -> None:
        self._hub.deliver(user_ids, frame, exclude)
