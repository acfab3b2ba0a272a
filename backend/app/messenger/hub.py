"""The sockets connected to this node, by user, and the queue that feeds each one."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable

from starlette.websockets import WebSocket

log = logging.getLogger(__name__)

# A socket that falls this far behind is closed: its client catches up from history.
SEND_QUEUE_LIMIT = 1000
CLOSE_TOO_SLOW = 1013


class Connection:
    """One open WebSocket. Frames are queued, never awaited by the sender of a message."""

    __slots__ = ("_queue", "_writer", "id", "user_id", "ws")

    def __init__(self, ws: WebSocket, user_id: int) -> None:
        self.id = uuid.uuid4().hex
        self.ws = ws
        self.user_id = user_id
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(SEND_QUEUE_LIMIT)
        self._writer = asyncio.create_task(self._write_loop())

    def send(self, frame: str) -> None:
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("socket too slow, closing conn=%s user=%s", self.id, self.user_id)
            self._writer.cancel()
            asyncio.get_running_loop().create_task(self._close(CLOSE_TOO_SLOW))

    async def _close(self, code: int) -> None:
        try:
            await self.ws.close(code)
        except Exception:  # already gone
            pass

    async def _write_loop(self) -> None:
        try:
            while (frame := await self._queue.get()) is not None:
                await self.ws.send_text(frame)
        except Exception:
            # The peer went away; the receive loop notices and cleans up.
            pass

    async def finish(self) -> None:
        """Flush what is queued, then stop the writer."""
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            self._writer.cancel()
        try:
            await asyncio.wait_for(self._writer, timeout=1.0)
        except (TimeoutError, asyncio.CancelledError):
            self._writer.cancel()


class Hub:
    def __init__(self) -> None:
        self._by_user: dict[int, dict[str, Connection]] = {}

    def add(self, conn: Connection) -> bool:
        """Register a socket; True when it is the user's first on this node."""
        conns = self._by_user.setdefault(conn.user_id, {})
        conns[conn.id] = conn
        return len(conns) == 1

    def remove(self, conn: Connection) -> bool:
        """Forget a socket; True when it was the user's last on this node."""
        conns = self._by_user.get(conn.user_id)
        if not conns or conns.pop(conn.id, None) is None:
            return False
        if conns:
            return False
        del self._by_user[conn.user_id]
        return True

    def deliver(self, user_ids: Iterable[int], frame: str, exclude: str | None = None) -> int:
        """Queue a frame to every local socket of these users; returns how many."""
        sent = 0
        for user_id in user_ids:
            conns = self._by_user.get(user_id)
            if not conns:
                continue
            for conn in tuple(conns.values()):
                if conn.id != exclude:
                    conn.send(frame)
                    sent += 1
        return sent

    def is_connected(self, user_id: int) -> bool:
        return user_id in self._by_user

    def users(self) -> list[int]:
        return list(self._by_user)

    def connection_count(self) -> int:
        return sum(len(c) for c in self._by_user.values())

    def connections(self) -> list[Connection]:
        return [c for conns in self._by_user.values() for c in conns.values()]
