"""The send path: one function for WebSocket and REST sends.

A message is checked, then handed to the writer, which commits queued sends in
one transaction (group commit): per conversation it takes the next `seq` under the
conversation row's lock, inserts the messages and records their push work. Only
after the commit are the sockets told and the push work started. On PostgreSQL the
writer can run several such transactions side by side (lanes), each for its own
conversations.

On PostgreSQL a batch is one statement on the writer's own connection (one round
trip, no pool checkout, no ORM or Core compilation per row); anything unusual in it
(a repeated client_msg_id, a conversation gone) makes that statement fail as a
whole, and the batch is then written the careful way, which sorts each send out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy import bindparam, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import metrics
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import dumps
from app.messenger.models import Conversation, Message, Participant, PushJob
from app.messenger.participants import participants_for
from app.ratelimit import too_many_requests

if TYPE_CHECKING:
    from app.services import Services

log = logging.getLogger(__name__)

_conversations = Conversation.__table__
_messages = Message.__table__
_push_jobs = PushJob.__table__
_participants = Participant.__table__
MAX_BATCH = 500

# Told of each commit: its push job's id and the ids of the messages in it.
OnCommit = Callable[[str, list[str]], None]

# The whole batch in one statement (PostgreSQL). Conversation rows are locked in id
# order, so two nodes' batches never deadlock; each send's seq follows its place in
# the batch. A send into a conversation that is gone gets a NULL seq (NOT NULL
# violation) and a repeated client_msg_id hits the unique constraint: either way the
# statement, and so its implicit transaction, fails as a whole.
_BATCH_SQL = """
WITH sends AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[])
        WITH ORDINALITY AS s (id, conversation_id, sender_id, content, client_msg_id, ord)
),
counts AS (
    SELECT conversation_id, count(*) AS n FROM sends GROUP BY conversation_id
),
locked AS MATERIALIZED (
    SELECT id FROM conversations
    WHERE id IN (SELECT conversation_id FROM counts)
    ORDER BY id
    FOR UPDATE
),
bumped AS (
    UPDATE conversations AS c SET last_seq = c.last_seq + counts.n
    FROM locked JOIN counts ON counts.conversation_id = locked.id
    WHERE c.id = locked.id
    RETURNING c.id, c.last_seq - counts.n AS base
),
inserted AS (
    INSERT INTO messages (id, conversation_id, seq, sender_id, content, client_msg_id, created_at)
    SELECT s.id, s.conversation_id,
           b.base + row_number() OVER (PARTITION BY s.conversation_id ORDER BY s.ord),
           s.sender_id, s.content, s.client_msg_id, $6
    FROM sends AS s LEFT JOIN bumped AS b ON b.id = s.conversation_id
    RETURNING id, conversation_id, sender_id, seq
),
read_up_to AS (
    UPDATE participants AS p SET last_read_seq = i.seq
    FROM (
        SELECT conversation_id, sender_id, max(seq) AS seq FROM inserted
        GROUP BY conversation_id, sender_id
    ) AS i
    WHERE p.conversation_id = i.conversation_id AND p.user_id = i.sender_id
),
jobs AS (
    INSERT INTO push_jobs (id, message_ids, created_at, claimed_by, lease_until)
    SELECT $9, json_agg(id), $6, $7, $8 FROM inserted
)
SELECT id, seq FROM inserted
"""


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
    # The flood check's answer (from Redis): 0.0 when the send may be written, else the
    # seconds to wait; a send refused, or whose check failed, is not written and its
    # future gets the error.
    flood_check: asyncio.Future[float] | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple[str, int, str] | None:
        if self.client_msg_id is None:
            return None
        return (self.conversation_id, self.sender_id, self.client_msg_id)


class _Conflict(Exception):
    """A client_msg_id in the batch was already stored: the transaction is void."""


class MessageWriter:
    """Commits sends in batches, in lanes: a conversation always goes to the same lane, so
    its messages commit in the order sent, while the lanes' transactions (each on its own
    connection) run side by side. One lane on SQLite, which writes one at a time anyway."""

    def __init__(
        self,
        engine: AsyncEngine,
        node_id: str,
        push_lease_seconds: float,
        lanes: int = 1,
        on_commit: OnCommit | None = None,
    ) -> None:
        if engine.dialect.name != "postgresql":
            lanes = 1
        self._lanes = [_Lane(engine, node_id, push_lease_seconds, on_commit) for _ in range(lanes)]

    async def start(self) -> None:
        for lane in self._lanes:
            await lane.start()

    async def stop(self) -> None:
        for lane in self._lanes:
            await lane.stop()

    def submit(
        self,
        conversation_id: str,
        sender_id: int,
        content: str,
        client_msg_id: str | None,
        flood_check: asyncio.Future[float] | None = None,
    ) -> asyncio.Future[tuple[dict[str, Any], bool]]:
        """Queue a send; the future gives (message, True) if new, (the original, False)
        if a repeat, once committed. A conversation's sends are committed in the order
        submitted. When given, the flood check must answer first: if it refuses the send
        or fails, the send is not written and the future gets the error."""
        future = asyncio.get_running_loop().create_future()
        send = _Send(conversation_id, sender_id, content, client_msg_id, future, flood_check)
        self._lanes[hash(conversation_id) % len(self._lanes)].add(send)
        return future

    async def write(
        self, conversation_id: str, sender_id: int, content: str, client_msg_id: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Persist a message; (message, True) if new, (the original, False) if a repeat."""
        return await self.submit(conversation_id, sender_id, content, client_msg_id)


class _Lane:
    """One writer: a transaction for whatever queued while the last one ran."""

    def __init__(
        self,
        engine: AsyncEngine,
        node_id: str,
        push_lease_seconds: float,
        on_commit: OnCommit | None,
    ) -> None:
        self._on_commit = on_commit
        self._engine = engine
        self._node_id = node_id
        self._lease = timedelta(seconds=push_lease_seconds)
        self._postgres = engine.dialect.name == "postgresql"
        self._insert = pg_insert if self._postgres else sqlite_insert
        self._queue: list[_Send] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        # PostgreSQL: a connection of the writer's own, held while the writer runs.
        self._conn: AsyncConnection | None = None
        self._driver: Any = None  # its asyncpg connection

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
            if not send.future.done():
                send.future.set_exception(RuntimeError("server shutting down"))
        self._queue.clear()
        await self._release()

    def add(self, send: _Send) -> None:
        self._queue.append(send)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                # The flood checks are answered in the order they were asked, many at a
                # time: once the oldest is answered, so are those asked with it.
                oldest = self._queue[0].flood_check
                if oldest is not None and not oldest.done():
                    # Awaited directly, so the lane runs in the loop round after the answer.
                    try:
                        await oldest
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():  # we are stopping
                            raise
                    except Exception:
                        pass  # (_admit reads the answer)
                batch = self._next_batch()
                try:
                    await self._write_batch(batch)
                except Exception as exc:
                    log.exception("message batch failed size=%d", len(batch))
                    for send in batch:
                        if not send.future.done():
                            send.future.set_exception(exc)

    def _next_batch(self) -> list[_Send]:
        """The oldest sends whose flood check is answered (the oldest's is), in order."""
        queue = self._queue
        end, limit = 1, min(len(queue), MAX_BATCH)
        while end < limit:
            check = queue[end].flood_check
            if check is not None and not check.done():
                break
            end += 1
        batch, self._queue = queue[:end], queue[end:]
        return batch

    async def _write_batch(self, batch: list[_Send]) -> None:
        batch = self._admit(batch)
        if not batch:
            return
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

        # (A future whose waiter went away is done already: it is skipped, not an error.)
        results: dict[int, tuple[dict[str, Any], bool]] = {}
        job = str(uuid.uuid4())
        created = await self._insert_fast(unique, job) if self._postgres else None
        if created is not None:
            for send, message in zip(unique, created, strict=True):
                results[id(send)] = (message, True)
        else:
            pending = unique
            while pending:
                try:
                    created = await self._insert_all(pending, job)
                except _Conflict:
                    # Some were sent before: answer those with the original, retry the rest.
                    originals = await self._find_originals(pending)
                    if not originals:
                        raise
                    rest = []
                    for send in pending:
                        original = originals.get(send.key) if send.key else None
                        if original is not None:
                            results[id(send)] = (original, False)
                        else:
                            rest.append(send)
                    pending = rest
                    continue
                for send, message in zip(pending, created, strict=True):
                    results[id(send)] = (message, True)
                break

        if created and self._on_commit is not None:
            self._on_commit(job, [m["id"] for m in created])
        for send, original in repeats:
            results[id(send)] = (results[id(original)][0], False)
        for send in batch:
            if not send.future.done():
                send.future.set_result(results[id(send)])

    def _admit(self, batch: list[_Send]) -> list[_Send]:
        """The sends that may be written; the others are answered with the error."""
        admitted = []
        for send in batch:
            if send.flood_check is not None and (error := _refusal(send.flood_check)):
                if not send.future.done():
                    send.future.set_exception(error)
                continue
            admitted.append(send)
        return admitted

    async def _insert_fast(self, sends: list[_Send], job: str) -> list[dict[str, Any]] | None:
        """The batch in one statement; None when it has to be written the careful way."""
        now = utcnow()
        ids = [str(uuid.uuid4()) for _ in sends]
        try:
            driver = await self._connection()
            rows = await driver.fetch(
                _BATCH_SQL,
                ids,
                [s.conversation_id for s in sends],
                [s.sender_id for s in sends],
                [s.content for s in sends],
                [s.client_msg_id for s in sends],
                now,
                self._node_id,
                now + self._lease,
                job,
            )
        except asyncpg.IntegrityConstraintViolationError:
            return None  # nothing was written: a repeat, or a conversation gone
        except Exception:
            await self._release(broken=True)  # a new connection for the next batch
            raise
        seqs = dict(rows)
        return [
            {
                "id": message_id,
                "conversation_id": send.conversation_id,
                "seq": seqs[message_id],
                "sender_id": send.sender_id,
                "content": send.content,
                "client_msg_id": send.client_msg_id,
                "created_at": now,
            }
            for message_id, send in zip(ids, sends, strict=True)
        ]

    async def _connection(self) -> Any:
        """The writer's asyncpg connection, (re)made through the engine's pool."""
        if self._driver is not None and self._driver.is_closed():
            await self._release(broken=True)  # the server closed it (restart, failover)
        if self._conn is None:
            self._conn = await self._engine.connect()
            self._driver = (await self._conn.get_raw_connection()).driver_connection
            # One plan for the batch statement, made once: planning it afresh for every
            # batch (PostgreSQL's choice for it) costs about a third of a small batch.
            await self._driver.execute("SET plan_cache_mode = force_generic_plan")
        return self._driver

    async def _release(self, broken: bool = False) -> None:
        conn, driver, self._conn, self._driver = self._conn, self._driver, None, None
        if conn is None:
            return
        try:
            if broken:
                await conn.invalidate()
            else:
                await driver.execute("RESET plan_cache_mode")  # back to the pool as it was
            await conn.close()
        except Exception as exc:  # it is gone either way
            log.debug("message writer: closing its connection failed: %r", exc)

    async def _insert_all(self, sends: list[_Send], job: str) -> list[dict[str, Any]]:
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
                _push_jobs.insert().values(
                    id=job,
                    message_ids=[row["id"] for row in rows],
                    created_at=now,
                    claimed_by=self._node_id,
                    lease_until=lease_until,
                )
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


async def accept_message(
    services: Services,
    sender_id: int,
    conversation_id: str,
    content: str,
    client_msg_id: str | None,
) -> tuple[frozenset[int], asyncio.Future[tuple[dict[str, Any], bool]]]:
    """Check a send and queue it for the writer: (participants, the writer's future).

    Sends are committed in the order they are accepted, so a socket may accept its next
    send before the last is committed (many in one batch) without reordering them.
    """
    settings = services.settings
    if not content.strip():
        raise ApiError(422, "empty_content", "the message is empty")
    if len(content) > settings.max_message_length:
        raise ApiError(
            422, "message_too_long", f"the message is over {settings.max_message_length} characters"
        )
    participants = await participants_for(services.participants, sender_id, conversation_id)
    # The flood check goes to Redis without waiting here: the writer waits for its answer
    # just before writing, so a socket's next frame is read meanwhile.
    flood_check = services.limiter.start_hit(
        f"send:{sender_id}", settings.send_rate_per_second, settings.send_burst
    )
    return participants, services.writer.submit(
        conversation_id, sender_id, content, client_msg_id, flood_check
    )


def _refusal(flood_check: asyncio.Future[float]) -> BaseException | None:
    """Why an answered flood check keeps a send from being written, if it does."""
    if flood_check.cancelled():
        return RuntimeError("the flood check was cancelled")
    if (exc := flood_check.exception()) is not None:
        return exc
    if (wait := flood_check.result()) > 0:
        return too_many_requests(wait, "too many messages; slow down")
    return None


async def finish_message(
    services: Services,
    participants: frozenset[int],
    committed: asyncio.Future[tuple[dict[str, Any], bool]],
    exclude_connection: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Once committed: deliver to the sockets and schedule pushes. (message, created)."""
    message, created = await committed
    if created:
        metrics.messages_sent.inc()
        # Encoded once, for every socket on every node.
        frame = dumps({"type": "message.new", "message": message})
        await services.fanout.publish(participants, frame, exclude=exclude_connection)
        services.push.message_committed(message, participants)
    return message, created


async def send_message(
    services: Services,
    sender_id: int,
    conversation_id: str,
    content: str,
    client_msg_id: str | None,
    exclude_connection: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Check, persist, then deliver and schedule pushes. (message, created)."""
    participants, committed = await accept_message(
        services, sender_id, conversation_id, content, client_msg_id
    )
    return await finish_message(services, participants, committed, exclude_connection)
