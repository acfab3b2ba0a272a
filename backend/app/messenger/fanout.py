"""Getting a frame to every socket of some users, wherever those sockets are.

Sockets on this node are always served straight from memory; the Redis variant
also hands the frame to the other nodes.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from app.messenger.hub import Hub


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
