"""The send path: one function for WebSocket and REST sends.

A message is checked, then handed to the writer, which commits queued sends in
one transaction (group commit): per conversation it takes the next `seq` under the
conversation row's lock, inserts the messages and records their push work. Only
after the commit are the sockets told and the push work started.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import dumps
from app.messenger.models import Conversation, Message, Participant, PushJob
from app.messenger.participants import participants_for

if TYPE_CHECKING:
    from app.services import Services

log = logging.getLogger(__name__)

_conversations = Conversation.__table__
_messages = Message.__table__
_push_jobs = PushJob.__table__
_participants = Participant.__table__
MAX_BATCH = 500


def message_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "conversation_id": row.conversation_id,
        "seq": row.seq,
        "sender_id": row.sender_id,
        "content": row.content,
        "client_msg_id": row.client_msg_id,
        "created_at": row.created_at,
    }


@dataclass(slots=True)
class _Send:
    conversation_id: str
    sender_id: int
    content: str
    client_msg_id: str | None
    future: asyncio.Future = field(repr=False)

    @property
    def key(self) -> tuple[str, int, str] | None:
        if self.client_msg_id is None:
            return None
        return (self.conversation_id, self.sender_id, self.client_msg_id)


class _Conflict(Exception):
    """A client_msg_id in the batch was already stored: the transaction is void."""


class MessageWriter:
    """Commits sends in batches: one transaction for whatever queued while the last ran."""

    def __init__(self, engine: AsyncEngine, node_id: str, push_lease_seconds: float) -> None:
        self._engine = engine
        self._node_id = node_id
        self._lease = timedelta(seconds=push_lease_seconds)
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._queue: list[_Send] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="message-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for send in self._queue:
            send.future.set_exception(RuntimeError("server shutting down"))
        self._queue.clear()

    async def write(
        self, conversation_id: str, sender_id: int, content: str, client_msg_id: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Persist a message; (message, True) if new, (the original, False) if a repeat."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Send(conversation_id, sender_id, content, client_msg_id, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    await self._write_batch(batch)
                except Exception as exc:
                    log.exception("message batch failed size=%d", len(batch))
                    for send in batch:
                        if not send.future.done():
                            send.future.set_exception(exc)

    async def _write_batch(self, batch: list[_Send]) -> None:
        # A repeat inside one batch waits for its first copy.
        first: dict[tuple, _Send] = {}
        unique: list[_Send] = []
        repeats: list[tuple[_Send, _Send]] = []
        for send in batch:
            key = send.key
            if key is not None and key in first:
                repeats.append((send, first[key]))
                continue
            if key is not None:
                first[key] = send
            unique.append(send)

        pending = unique
        while pending:
            try:
                created = await self._insert_all(pending)
            except _Conflict:
                # Some were sent before: answer those with the original, retry the rest.
                originals = await self._find_originals(pending)
                if not originals:
                    raise
                rest = []
                for send in pending:
                    original = originals.get(send.key) if send.key else None
                    if original is not None:
                        send.future.set_result((original, False))
                    else:
                        rest.append(send)
                pending = rest
                continue
            for send, message in zip(pending, created, strict=True):
                send.future.set_result((message, True))
            break

        for send, original in repeats:
            message, _ = original.future.result()
            send.future.set_result((message, False))

    async def _insert_all(self, sends: list[_Send]) -> list[dict[str, Any]]:
        now = utcnow()
        counts = Counter(s.conversation_id for s in sends)
        rows: list[dict[str, Any]] = []
        async with self._engine.begin() as conn:
            next_seq: dict[str, int] = {}
            # Sorted, so two nodes lock conversation rows in one order and never deadlock.
            for conversation_id in sorted(counts):
                n = counts[conversation_id]
                last = await conn.scalar(
                    update(_conversations)
                    .where(_conversations.c.id == conversation_id)
                    .values(last_seq=_conversations.c.last_seq + n)
                    .returning(_conversations.c.last_seq)
                )
                if last is None:
                    raise ApiError(404, "conversation_not_found", "no such conversation")
                next_seq[conversation_id] = last - n + 1
            for send in sends:
                seq = next_seq[send.conversation_id]
                next_seq[send.conversation_id] = seq + 1
                rows.append(
                    {
                        "id": str(uuid.uuid4()),
                        "conversation_id": send.conversation_id,
                        "seq": seq,
                        "sender_id": send.sender_id,
                        "content": send.content,
                        "client_msg_id": send.client_msg_id,
                        "created_at": now,
                    }
                )
            inserted = await conn.execute(
                self._insert(_messages).on_conflict_do_nothing().returning(_messages.c.id), rows
            )
            if len(inserted.all()) != len(rows):
                raise _Conflict
            # A sender has read their own conversation up to what they just sent.
            read_up_to: dict[tuple[str, int], int] = {}
            for row in rows:
                read_up_to[(row["conversation_id"], row["sender_id"])] = row["seq"]
            await conn.execute(
                update(_participants)
                .where(
                    _participants.c.conversation_id == bindparam("c"),
                    _participants.c.user_id == bindparam("u"),
                )
                .values(last_read_seq=bindparam("s")),
                [{"c": c, "u": u, "s": seq} for (c, u), seq in read_up_to.items()],
            )
            lease_until = now + self._lease
            await conn.execute(
                _push_jobs.insert(),
                [
                    {
                        "message_id": row["id"],
                        "created_at": now,
                        "claimed_by": self._node_id,
                        "lease_until": lease_until,
                    }
                    for row in rows
                ],
            )
        return rows

    async def _find_originals(self, sends: list[_Send]) -> dict[tuple, dict[str, Any]]:
        keys = [s.key for s in sends if s.key is not None]
        if not keys:
            return {}
        key_cols = tuple_(
            _messages.c.conversation_id, _messages.c.sender_id, _messages.c.client_msg_id
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(_messages).where(key_cols.in_(keys)))
            return {
                (r.conversation_id, r.sender_id, r.client_msg_id): message_dict(r) for r in rows
            }


async def send_message(
    services: Services,
    sender_id: int,
    conversation_id: str,
    content: str,
    client_msg_id: str | None,
    exclude_connection: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Check, persist, then deliver and schedule pushes. (message, created)."""
    settings = services.settings
    if not content.strip():
        raise ApiError(422, "empty_content", "the message is empty")
    if len(content) > settings.max_message_length:
        raise ApiError(
            422, "message_too_long", f"the message is over {settings.max_message_length} characters"
        )
    participants = await participants_for(services.participants, sender_id, conversation_id)
    retry_after = await services.limiter.hit(
        f"send:{sender_id}", settings.send_rate_per_second, settings.send_burst
    )
    if retry_after > 0:
        raise ApiError(
            429,
            "rate_limited",
            "too many messages; slow down",
            headers={"Retry-After": str(max(1, round(retry_after + 0.5)))},
        )

    message, created = await services.writer.write(
        conversation_id, sender_id, content, client_msg_id
    )
    if created:
        metrics.messages_sent.inc()
        frame = dumps({"type": "message.new", "message": message})
        await services.fanout.publish(participants, frame, exclude=exclude_connection)
        services.push.message_committed(message, participants)
    return message, created
