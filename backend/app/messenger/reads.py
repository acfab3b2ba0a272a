"""Read marks: how far each participant has read a conversation, told to the others.

A client may mark as it scrolls, a frame per message: a burst of marks for one user and
conversation is one write. While a write for them is under way, later marks wait; the
highest is then written once, and its `read` frame goes to the participants.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.jsonutil import dumps
from app.messenger.fanout import Fanout
from app.messenger.models import Conversation, Participant

log = logging.getLogger(__name__)
_conversations = Conversation.__table__
_participants = Participant.__table__


@dataclass(slots=True)
class _Waiting:
    """The highest mark not yet written for one user and conversation."""

    seq: int
    participants: frozenset[int]
    done: asyncio.Future[None]
    # The device whose notification action made this mark: it closed that notification
    # itself, so its clearing push is left out.
    skip_device: str | None = None


class ReadMarks:
    def __init__(
        self,
        engine: AsyncEngine,
        fanout: Fanout,
        on_moved: Callable[[int, str, int, str | None], None] | None = None,
    ) -> None:
        self._engine = engine
        self._fanout = fanout
        # Told (user, conversation, seq, device to skip) of each mark that moved; it must
        # not wait (the push clearing queues its work).
        self._on_moved = on_moved
        self._waiting: dict[tuple[int, str], _Waiting] = {}
        self._writers: dict[tuple[int, str], asyncio.Task[None]] = {}

    async def mark(
        self,
        user_id: int,
        conversation_id: str,
        seq: int,
        participants: frozenset[int],
        skip_device: str | None = None,
    ) -> None:
        """Move the user's read mark forward to `seq` (never back, never past the last
        message) and, if it moved, tell every socket of the participants. Returns once
        this mark, or a higher one, is written. `skip_device`: the device that marked
        from its notification, which needs no clearing push."""
        await self.submit(user_id, conversation_id, seq, participants, skip_device)

    def submit(
        self,
        user_id: int,
        conversation_id: str,
        seq: int,
        participants: frozenset[int],
        skip_device: str | None = None,
    ) -> asyncio.Future[None]:
        """mark() without waiting: the future is done once the mark is written."""
        key = (user_id, conversation_id)
        waiting = self._waiting.get(key)
        if waiting is None:
            future = asyncio.get_running_loop().create_future()
            waiting = self._waiting[key] = _Waiting(seq, participants, future, skip_device)
        elif seq > waiting.seq:
            waiting.seq, waiting.participants = seq, participants
            waiting.skip_device = skip_device
        elif seq == waiting.seq and skip_device != waiting.skip_device:
            waiting.skip_device = None  # marked from two places: every device is cleared
        if key not in self._writers:
            self._writers[key] = asyncio.create_task(self._write(key))
        return waiting.done

    async def _write(self, key: tuple[int, str]) -> None:
        user_id, conversation_id = key
        try:
            while (waiting := self._waiting.pop(key, None)) is not None:
                try:
                    moved = await self._move(user_id, conversation_id, waiting.seq)
                    if moved:
                        if self._on_moved is not None:
                            self._on_moved(
                                user_id, conversation_id, waiting.seq, waiting.skip_device
                            )
                        frame = {
                            "type": "read",
                            "conversation_id": conversation_id,
                            "user_id": user_id,
                            "seq": waiting.seq,
                        }
                        await self._fanout.publish(waiting.participants, dumps(frame))
                except Exception as exc:
                    waiting.done.set_exception(exc)
                else:
                    waiting.done.set_result(None)
        finally:
            del self._writers[key]

    async def _move(self, user_id: int, conversation_id: str, seq: int) -> bool:
        last_seq = (
            select(_conversations.c.last_seq)
            .where(_conversations.c.id == conversation_id)
            .scalar_subquery()
        )
        metrics.read_mark_writes.inc()
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(_participants)
                .where(
                    _participants.c.conversation_id == conversation_id,
                    _participants.c.user_id == user_id,
                    _participants.c.last_read_seq < seq,
                    last_seq >= seq,
                )
                .values(last_read_seq=seq)
            )
        return result.rowcount > 0

    async def stop(self) -> None:
        """Let the writes under way finish (the engine closes next)."""
        if self._writers:
            await asyncio.wait(list(self._writers.values()), timeout=5)


class SocketReads:
    """One socket's read frames, answered by no frame of their own.

    Marks for one conversation go together without holding up the socket's next frame.
    A mark for another conversation first waits for the previous one's write: a socket
    never has more than one conversation's writes under way, however many it is in.
    """

    def __init__(self, marks: ReadMarks, user_id: int) -> None:
        self._marks = marks
        self._user_id = user_id
        self._last: tuple[str, asyncio.Future[None]] | None = None

    async def mark(self, conversation_id: str, seq: int, participants: frozenset[int]) -> None:
        if self._last is not None and self._last[0] != conversation_id:
            await asyncio.wait([self._last[1]])
        done = self._marks.submit(self._user_id, conversation_id, seq, participants)
        if self._last is None or self._last[1] is not done:
            done.add_done_callback(functools.partial(self._failed, conversation_id))
        self._last = (conversation_id, done)

    def _failed(self, conversation_id: str, done: asyncio.Future[None]) -> None:
        if not done.cancelled() and (exc := done.exception()) is not None:
            log.warning(
                "read mark failed user=%s conversation=%s %s",
                self._user_id,
                conversation_id,
                type(exc).__name__,
            )
