"""The group-commit writer: queued sends are committed together, in lanes.

A lane commits whatever queued while its last transaction ran, in one transaction
(see message_store for how). A conversation always goes to the same lane, so its
messages commit in the order sent, while the lanes' transactions (each on its own
connection) run side by side on PostgreSQL. Only after the commit is anyone told:
`on_commit` (the push service) with the messages just created, then the senders' futures.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import database_unavailable, utcnow
from app.errors import ApiError, describe_unexpected
from app.messenger import message_store
from app.messenger.attachments import AttachmentTaken, invalid_attachment
from app.messenger.message_store import Committed, PushLease, Repeated, SendKey, message_dict
from app.ratelimit import too_many_requests

log = logging.getLogger(__name__)

MAX_BATCH = 500
RETRY_AFTER = "1"  # seconds a refused sender is told to wait
NOT_SAVED = "the message could not be saved now; send it again"
_NOT_YET = datetime.min.replace(tzinfo=UTC)  # a send's created_at until it is written

# What a send's future gives once committed: (message, True) if new, (the original,
# False) if the send repeated a client_msg_id already stored.
Written = tuple[dict[str, Any], bool]
# Told of each commit: its push job's id and the messages it created.
OnCommit = Callable[[str, list[Committed]], None]


@dataclass(slots=True, eq=False)
class _Send:
    conversation_id: str
    sender_id: int
    content: str
    client_msg_id: str | None
    participants: frozenset[int]
    future: asyncio.Future[Written] = field(repr=False)
    # The flood check's answer (from Redis): 0.0 when the send may be written, else the
    # seconds to wait; a send refused, or whose check failed, is not written and its
    # future gets the error.
    flood_check: asyncio.Future[float] | None = field(default=None, repr=False)
    # The participants the content names (mentions.Mentions); None: nobody.
    mentions: list[int] | None = None
    # A message of the same conversation this one answers (checked by the sender).
    reply_to: str | None = None
    # The uploads it carries, as the message shows them (attachments.Attachments.describe).
    attachments: list[dict[str, Any]] | None = None
    # A new message is neither edited nor deleted (message_dict reads these).
    edited_at: ClassVar[None] = None
    deleted_at: ClassVar[None] = None
    # Filled in by the store when written (message_dict of an unwritten send is meaningless).
    id: str = ""
    seq: int = 0
    created_at: datetime = field(default=_NOT_YET, repr=False)

    @property
    def key(self) -> SendKey | None:
        if self.client_msg_id is None:
            return None
        return (self.conversation_id, self.sender_id, self.client_msg_id)


class MessageWriter:
    """Commits sends in batches, in lanes (one on SQLite, which writes one at a time)."""

    def __init__(
        self,
        engine: AsyncEngine,
        node_id: str,
        push_lease_seconds: float,
        lanes: int = 1,
        on_commit: OnCommit | None = None,
        queue_limit: int = 10_000,
    ) -> None:
        if engine.dialect.name != "postgresql":
            lanes = 1
        self._lanes = [_Lane(engine, node_id, push_lease_seconds, on_commit) for _ in range(lanes)]
        self._queue_limit = queue_limit

    async def start(self) -> None:
        for lane in self._lanes:
            await lane.start()

    async def stop(self) -> None:
        for lane in self._lanes:
            await lane.stop()

    @property
    def pending(self) -> int:
        """Sends queued or being written."""
        return sum(lane.waiting + lane.writing for lane in self._lanes)

    def check_room(self) -> None:
        """503 `overloaded` when as many sends wait as the writer may queue: a database
        that stalls makes senders retry later instead of growing the queue without bound."""
        if self.pending >= self._queue_limit:
            raise ApiError(
                503,
                "overloaded",
                "too many messages are waiting to be saved; try again shortly",
                headers={"Retry-After": RETRY_AFTER},
            )

    def submit(
        self,
        conversation_id: str,
        sender_id: int,
        content: str,
        client_msg_id: str | None,
        participants: frozenset[int],
        flood_check: asyncio.Future[float] | None = None,
        mentions: list[int] | None = None,
        reply_to: str | None = None,
        attachments: list[dict[str, Any]] | None = None,
    ) -> asyncio.Future[Written]:
        """Queue a send; its future answers once committed, or with 503 `unavailable` when
        the database could not commit it. A conversation's sends are committed in the
        order submitted. When given, the flood check must answer first: if it refuses the
        send or fails, the send is not written and the future gets the error. 503
        `overloaded` (raised) when the queue is full."""
        self.check_room()
        future: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        send = _Send(
            conversation_id,
            sender_id,
            content,
            client_msg_id,
            participants,
            future,
            flood_check,
            mentions,
            reply_to,
            attachments,
        )
        self._lanes[hash(conversation_id) % len(self._lanes)].add(send)
        return future


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
        self._queue: list[_Send] = []
        self._writing: list[_Send] = []  # the batch in flight
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # PostgreSQL: a connection of the writer's own, held while the writer runs.
        self._conn: AsyncConnection | None = None
        self._driver: asyncpg.Connection | None = None  # its asyncpg connection

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="message-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for send in self._writing + self._queue:
            if not send.future.done():
                send.future.set_exception(unavailable("the server is shutting down"))
        self._writing.clear()
        self._queue.clear()
        await self._release()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def writing(self) -> int:
        return len(self._writing)

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
                batch = self._writing = self._next_batch()
                try:
                    await self._write_batch(batch)
                except Exception as exc:
                    retry = _log_failure(exc, len(batch))
                    for send in batch:
                        if not send.future.done():
                            send.future.set_exception(unavailable(NOT_SAVED) if retry else exc)
                self._writing = []

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
        batch = _admit(batch)
        if not batch:
            return
        # A repeat inside one batch waits for its first copy.
        first: dict[SendKey, _Send] = {}
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

        now = utcnow()
        lease = PushLease(str(uuid.uuid4()), self._node_id, now + self._lease)
        results: dict[int, Written] = {}
        refused: dict[int, ApiError] = {}
        # A send with files claims them in its transaction: the careful way only.
        if (
            self._postgres
            and not any(send.attachments for send in unique)
            and await self._write_in_one_statement(unique, now, lease)
        ):
            created = unique
        else:
            created = await self._write_carefully(unique, now, lease, results, refused)
        messages = [message_dict(send) for send in created]
        for send, message in zip(created, messages, strict=True):
            results[id(send)] = (message, True)
        if created and self._on_commit is not None:
            self._on_commit(
                lease.job_id,
                [Committed(m, s.participants) for s, m in zip(created, messages, strict=True)],
            )
        for send, original in repeats:
            if id(original) in refused:
                refused[id(send)] = refused[id(original)]
            else:
                results[id(send)] = (results[id(original)][0], False)
        # (A future whose waiter went away is done already: it is skipped, not an error.)
        for send in batch:
            if send.future.done():
                continue
            if id(send) in refused:
                send.future.set_exception(refused[id(send)])
            else:
                send.future.set_result(results[id(send)])

    async def _write_in_one_statement(
        self, sends: list[_Send], now: datetime, lease: PushLease
    ) -> bool:
        try:
            driver = await self._connection()
            return await message_store.insert_in_one_statement(driver, sends, now, lease)
        except Exception:
            await self._release(broken=True)  # a new connection for the next batch
            raise

    async def _write_carefully(
        self,
        sends: list[_Send],
        now: datetime,
        lease: PushLease,
        results: dict[int, Written],
        refused: dict[int, ApiError],
    ) -> list[_Send]:
        """Write the sends one transaction at a time until none is a repeat or names an
        upload sent already; repeats are answered (in `results`) with their original,
        the others (in `refused`) with 422. The sends created."""
        pending = sends
        while pending:
            try:
                await message_store.insert_in_transaction(self._engine, pending, now, lease)
            except AttachmentTaken as taken:
                refused[id(taken.send)] = invalid_attachment()
                pending = [send for send in pending if send is not taken.send]
                continue
            except Repeated:
                keys = [s.key for s in pending if s.key is not None]
                originals = await message_store.find_originals(self._engine, keys)
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
            return pending
        return []

    async def _connection(self) -> asyncpg.Connection:
        """The writer's asyncpg connection, (re)made through the engine's pool."""
        if self._driver is not None and self._driver.is_closed():
            await self._release(broken=True)  # the server closed it (restart, failover)
        if self._conn is None or self._driver is None:
            self._conn = await self._engine.connect()
            self._driver = (await self._conn.get_raw_connection()).driver_connection
            assert self._driver is not None
            # One plan for the batch statement, made once: planning it afresh for every
            # batch (PostgreSQL's choice for it) costs about a third of a small batch.
            # It reaches every row by key: without seq scans allowed, a plan made while
            # the tables were nearly empty (a new deployment) never scans them whole for
            # the rest of the connection's life, as they grow and until an ANALYZE.
            await self._driver.execute(
                "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off"
            )
        return self._driver

    async def _release(self, broken: bool = False) -> None:
        conn, driver, self._conn, self._driver = self._conn, self._driver, None, None
        if conn is None:
            return
        try:
            if broken:
                await conn.invalidate()
            elif driver is not None:
                # Back to the pool as it was.
                await driver.execute("RESET plan_cache_mode; RESET enable_seqscan")
            await conn.close()
        except Exception as exc:  # it is gone either way
            log.debug("message writer: closing its connection failed: %r", exc)


def unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, headers={"Retry-After": RETRY_AFTER})


def _log_failure(exc: Exception, size: int) -> bool:
    """Log a batch that failed; whether its senders may retry. The database down, slow or
    timed out: they get 503 `unavailable` (a repeat with the same client_msg_id is safe)
    and the log one line; anything else is a bug, logged as one too (where it was raised)."""
    if not database_unavailable(exc):
        log.error("message batch failed size=%d %s", size, describe_unexpected(exc))
        return False
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    log.warning(
        "message batch not saved: database unavailable size=%d error=%s",
        size,
        cause.__class__.__name__,
    )
    return True


def _admit(batch: list[_Send]) -> list[_Send]:
    """The sends that may be written; the others are answered with the error."""
    admitted = []
    for send in batch:
        if send.flood_check is not None and (error := _refusal(send.flood_check)):
            if not send.future.done():
                send.future.set_exception(error)
            continue
        admitted.append(send)
    return admitted


def _refusal(flood_check: asyncio.Future[float]) -> BaseException | None:
    """Why an answered flood check keeps a send from being written, if it does."""
    if flood_check.cancelled():
        return RuntimeError("the flood check was cancelled")
    if (exc := flood_check.exception()) is not None:
        return exc
    if (wait := flood_check.result()) > 0:
        return too_many_requests(wait, "too many messages; slow down")
    return None
