"""The sockets connected to this node, by user, and the queue that feeds each one."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from app.messenger.framewriter import WriteFrames

if TYPE_CHECKING:
    from app.messenger.attention import SocketAttention

log = logging.getLogger(__name__)

# A socket that falls this far behind is closed: its client catches up from history.
SEND_QUEUE_LIMIT = 1000
# Frames per write at most: a socket whose peer stopped reading holds one round beyond
# the transport's limit, and the rest count against SEND_QUEUE_LIMIT.
WRITE_ROUND = 64
CLOSE_TOO_SLOW = 1013
# The user opened more sockets on this node than MAX_SOCKETS_PER_USER: the oldest goes.
CLOSE_TOO_MANY_SOCKETS = 4429
_ids = itertools.count(1)
_closing: set[asyncio.Task[None]] = set()  # held until done: the loop keeps weak references


class Connection:
    """One open WebSocket. Frames are queued, never awaited by the sender of a message.

    The writer task exists only while there is something to write: an idle socket
    holds no task and no asyncio.Queue (about 3.5 KB less each, with 10,000 sockets).
    Frames queued before the handshake is done wait for open().
    """

    __slots__ = (
        "_closed",
        "_frames",
        "_open",
        "_write_frames",
        "_writer",
        "attention",
        "id",
        "user_id",
        "ws",
    )

    def __init__(self, ws: WebSocket, user_id: int, write_frames: WriteFrames) -> None:
        self.id = format(next(_ids), "x")  # unique in this process, which is all it needs
        self.ws = ws
        # Frames go out through the server, not the WebSocket wrapper's state checks (a
        # fifth of the CPU of a large fan-out), those that waited together in one write.
        self._write_frames = write_frames
        self.user_id = user_id
        self._frames: list[str] = []  # queued, not yet handed to the server
        self._writer: asyncio.Task[None] | None = None
        self._open = False
        self._closed = False
        # Whether its client is looking (`activity` frames), set by the WebSocket endpoint.
        self.attention: SocketAttention | None = None

    def open(self) -> None:
        """The handshake is done: write what is queued, and from now on as it comes."""
        self._open = True
        if self._frames and self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def send(self, frame: str) -> None:
        if self._closed:
            return
        if len(self._frames) >= SEND_QUEUE_LIMIT:
            log.warning("socket too slow, closing conn=%s user=%s", self.id, self.user_id)
            self.close(CLOSE_TOO_SLOW, "too slow to read")
            return
        self._frames.append(frame)
        if self._writer is None and self._open:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def close(self, code: int, reason: str) -> None:
        """Drop what is queued and close with this code; the receive loop cleans up."""
        self._closed = True
        self._frames = []
        if self._writer is not None:
            self._writer.cancel()
        task = asyncio.get_running_loop().create_task(self._close(code, reason))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code, reason)
        except Exception:  # already gone
            pass

    async def _write_loop(self) -> None:
        try:
            while self._frames:
                # Frames queued meanwhile go in order on a later round.
                frames = self._frames[:WRITE_ROUND]
                del self._frames[:WRITE_ROUND]
                await self._write_frames(frames)
        except Exception:
            # The peer went away; the receive loop notices and cleans up.
            self._closed = True
            self._frames = []
        finally:
            self._writer = None

    async def finish(self) -> None:
        """Flush what is queued (for a second at most); nothing is sent after this."""
        self._closed = True
        writer = self._writer
        if writer is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(writer), timeout=1.0)
        except (TimeoutError, asyncio.CancelledError):
            writer.cancel()


class Hub:
    def __init__(self, max_per_user: int = 20) -> None:
        self._by_user: dict[int, dict[str, Connection]] = {}
        self._max_per_user = max_per_user

    def add(self, conn: Connection) -> None:
        """Register a socket; past the user's limit on this node, close their oldest."""
        conns = self._by_user.setdefault(conn.user_id, {})
        conns[conn.id] = conn
        while len(conns) > self._max_per_user:
            oldest = conns.pop(next(iter(conns)))  # dicts keep insertion order
            log.info(
                "too many sockets, closing the oldest conn=%s user=%s new=%s",
                oldest.id,
                conn.user_id,
                conn.id,
            )
            oldest.close(CLOSE_TOO_MANY_SOCKETS, "too many sockets for this user")

    def remove(self, conn: Connection) -> None:
        conns = self._by_user.get(conn.user_id)
        if conns and conns.pop(conn.id, None) is not None and not conns:
            del self._by_user[conn.user_id]

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
