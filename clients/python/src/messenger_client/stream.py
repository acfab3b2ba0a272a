"""The socket behind `Client.events()`: sign-in, reconnects, catch-up and socket sends.

Each conversation's messages reach the caller once each and in seq order, whatever
happens to the connection: the stream remembers the last seq it handed over per
conversation; after each (re)connect it fetches from history what came after it, and a
live message that skips a seq has the gap filled from history first. Anything at or
below the last seq is a repeat and is dropped.

A socket send waits for its `message.ack`; one still unanswered when the socket drops
is sent again, with the same client_msg_id, once the socket is back (the server stores
it once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from messenger_client.backoff import Backoff
from messenger_client.errors import (
    ConnectionLost,
    Forbidden,
    MessengerError,
    NotFound,
    RetryLater,
    SessionEnded,
    error_from_frame,
)
from messenger_client.events import (
    Connected,
    Disconnected,
    Event,
    MessageNew,
    parse_event,
)
from messenger_client.models import Message

if TYPE_CHECKING:
    from messenger_client.client import Client

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
# How long the node may take to answer the `auth` frame, and a send's ack.
AUTH_TIMEOUT = 10.0
SEND_TIMEOUT = 60.0
# Events waiting for the caller; past this the socket is not read (TCP pushes back).
QUEUE_SIZE = 10_000
# Largest frame taken from the node (its own limit applies to what we send).
MAX_FRAME = 2**24


@dataclass(slots=True)
class _PendingSend:
    frame: dict[str, Any]
    answer: asyncio.Future[Message]


class _Dropped(Exception):
    """The socket closed; `code` is its close code when there was one."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"socket closed ({code}): {reason}")
        self.code = code
        self.reason = reason


class EventStream:
    def __init__(self, client: Client, backoff: Backoff) -> None:
        self._client = client
        self._backoff = backoff
        self._queue: asyncio.Queue[Event | BaseException] = asyncio.Queue(QUEUE_SIZE)
        self._last_seq: dict[str, int] = {}
        self._pending: dict[str, _PendingSend] = {}
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.get_running_loop().create_future()
        self._connects = 0
        self._resends: set[asyncio.Task[None]] = set()  # sends the node asked to retry

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def connects(self) -> int:
        """How many times the socket was signed in (1 + reconnects)."""
        return self._connects

    def last_seq(self, conversation_id: str) -> int:
        """The seq of the last message of the conversation handed to the caller."""
        return self._last_seq.get(conversation_id, 0)

    async def start(self) -> None:
        """Note where each conversation stands, then connect; returns once signed in.

        The starting point is taken before the socket opens, so a message that comes in
        between is caught up rather than missed."""
        for conversation in await self._client.conversations():
            self._last_seq[conversation.id] = conversation.last_seq
        self._task = asyncio.create_task(self._run(), name="messenger-client-stream")
        await asyncio.shield(self._first)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._resends):
            task.cancel()
        for pending in self._pending.values():
            if not pending.answer.done():
                pending.answer.set_exception(ConnectionLost("the client disconnected"))
        self._pending.clear()

    async def events(self) -> AsyncIterator[Event]:
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def send(
        self, conversation_id: str, content: str, client_msg_id: str, reply_to: str | None
    ) -> Message:
        """Send over the socket; the stored message once the node acknowledged it."""
        frame: dict[str, Any] = {
            "type": "message.send",
            "conversation_id": conversation_id,
            "content": content,
            "client_msg_id": client_msg_id,
        }
        if reply_to is not None:
            frame["reply_to"] = reply_to
        pending = self._pending.get(client_msg_id)
        if pending is None:  # the same id twice at once is one send
            pending = _PendingSend(frame, asyncio.get_running_loop().create_future())
            self._pending[client_msg_id] = pending
            await self.send_frame(frame)
        try:
            return await asyncio.wait_for(asyncio.shield(pending.answer), SEND_TIMEOUT)
        except TimeoutError:
            raise ConnectionLost(f"no answer to send client_msg_id={client_msg_id}") from None
        finally:
            # Answered or given up on: not written again after a reconnect.
            self._pending.pop(client_msg_id, None)

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Write a frame if the socket is up; a send is written again after a reconnect."""
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps(frame))

    # --- the connection loop ---

    async def _run(self) -> None:
        attempt = 0
        while True:
            code: int | None = None
            reason = ""
            signed_in_before = self._connects
            try:
                await self._session()
            except SessionEnded as exc:  # nothing a reconnect can mend
                await self._fail(exc)
                return
            except _Dropped as exc:
                code, reason = exc.code, exc.reason
            except (OSError, InvalidHandshake, TimeoutError, MessengerError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a fault of this client: end the stream loudly
                log.exception("event stream failed")
                await self._fail(exc)
                return
            finally:
                self._ws = None
            if code == CLOSE_UNAUTHORIZED:
                try:  # the token ran out (asleep?), was refused, or the session was revoked
                    await self._client.refresh()
                except SessionEnded as exc:
                    await self._fail(exc)
                    return
                except MessengerError:
                    pass  # the node is away: the next attempt renews it
            if not self._first.done():
                if code == CLOSE_UNAUTHORIZED and attempt == 0:
                    attempt = 1  # refused, then renewed: once more with the new token
                    continue
                # The first connect fails loudly (a wrong address, a node that refuses);
                # only a socket that once worked is brought back by itself.
                await self._fail(ConnectionLost(f"could not connect: {reason}"))
                return
            if self._connects > signed_in_before:
                attempt = 0  # it worked for a while: start the backoff over
            delay = self._backoff.delay(attempt)
            attempt += 1
            log.info("socket down code=%s retry_in=%.2fs reason=%s", code, delay, reason)
            await self._queue.put(Disconnected(code, reason, delay))
            await asyncio.sleep(delay)

    async def _fail(self, exc: BaseException) -> None:
        """End the stream with `exc`: raised by `start()`, or by `events()` once the
        events before it are taken."""
        if not self._first.done():
            self._first.set_exception(exc)
        else:
            await self._queue.put(exc)

    async def _session(self) -> None:
        """One socket from opening to closing."""
        token = await self._client.access_token()
        async with websockets.connect(
            self._client.ws_url, max_size=MAX_FRAME, open_timeout=AUTH_TIMEOUT
        ) as ws:
            try:
                await self._sign_in(ws, token)
                self._ws = ws
                self._connects += 1
                await self._catch_up()
                await self._queue.put(Connected(reconnect=self._connects > 1))
                if not self._first.done():
                    self._first.set_result(None)
                for pending in list(self._pending.values()):
                    await ws.send(json.dumps(pending.frame))
                renew = asyncio.create_task(self._keep_signed_in(ws))
                try:
                    async for raw in ws:
                        try:
                            frame = json.loads(raw)
                            await self._handle(frame)
                        except (KeyError, TypeError, ValueError, AttributeError) as exc:
                            # A frame of another shape than this client knows: skip it.
                            log.warning("frame skipped error=%s", type(exc).__name__)
                finally:
                    renew.cancel()
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                raise _Dropped(rcvd.code if rcvd else None, rcvd.reason if rcvd else "") from None
            raise _Dropped(ws.close_code, ws.close_reason or "")

    async def _sign_in(self, ws: ClientConnection, token: str) -> None:
        """The `auth` frame protocol: the token goes in the first frame, never the URL."""
        await ws.send(json.dumps({"type": "auth", "access_token": token}))
        try:
            answer = json.loads(await asyncio.wait_for(ws.recv(), AUTH_TIMEOUT))
        except TimeoutError:
            raise ConnectionLost("no answer to the auth frame") from None
        if answer.get("type") != "auth.ok":
            raise ConnectionLost(f"unexpected answer to auth: {answer.get('type')}")
        log.info(
            "socket signed in user=%s session=%s", answer.get("user_id"), answer.get("session_id")
        )

    async def _keep_signed_in(self, ws: ClientConnection) -> None:
        """Hand the socket each renewed access token before the one it holds runs out
        (the node closes it with 4401 otherwise)."""
        sent = self._client.tokens.access_token if self._client.tokens else ""
        while True:
            tokens = self._client.tokens
            renew_at = tokens.renew_at if tokens is not None else None
            if renew_at is None:
                return  # a bot's token: nothing to renew
            await asyncio.sleep(max(0.05, renew_at - time.time()))
            try:
                token = await self._client.access_token()
                if token != sent:
                    await ws.send(json.dumps({"type": "auth", "access_token": token}))
                    sent = token
            except (MessengerError, ConnectionClosed):
                # The node closes the socket once the token ends (4401); the reconnect
                # loop renews it then, or ends the stream if the session is over.
                return

    async def _catch_up(self) -> None:
        """Hand over what came while the socket was away, each conversation from its
        last seq (a conversation new to the stream from its start)."""
        for conversation in await self._client.conversations():
            if conversation.last_seq > self._last_seq.get(conversation.id, 0):
                await self._fill(conversation.id, conversation.last_seq)

    async def _fill(self, conversation_id: str, up_to: int) -> None:
        """Hand over the conversation's messages from history, after its last seq and up
        to `up_to`."""
        try:
            async for message in self._client.messages_after(
                conversation_id, self._last_seq.get(conversation_id, 0)
            ):
                if message.seq > up_to:
                    return
                await self._deliver(message)
        except (Forbidden, NotFound):
            # Left or removed meanwhile: nothing more of it is the caller's to see.
            log.info("catch-up skipped conversation=%s: no longer a participant", conversation_id)

    async def _deliver(self, message: Message) -> None:
        last = self._last_seq.get(message.conversation_id, 0)
        if message.seq <= last:
            return  # already handed over (live and caught up both)
        if message.seq > last + 1:
            # A gap: frames were lost on the way (the node's Redis away); history has them.
            await self._fill(message.conversation_id, message.seq - 1)
            if message.seq <= self._last_seq.get(message.conversation_id, 0):
                return
        self._last_seq[message.conversation_id] = message.seq
        await self._queue.put(MessageNew(message))

    async def _handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message.new":
            await self._deliver(Message.from_json(frame["message"]))
        elif kind == "message.ack":
            message = Message.from_json(frame["message"])
            await self._deliver(message)  # the caller's own message is part of the log too
            pending = self._pending.get(str(frame.get("client_msg_id")))
            if pending is not None and not pending.answer.done():
                pending.answer.set_result(message)
        elif kind in ("auth.ok", "pong"):
            return
        elif (
            kind == "error" and isinstance(frame.get("ref"), str) and frame["ref"] in self._pending
        ):
            self._answer_error(frame["ref"], frame)
        else:
            await self._queue.put(parse_event(frame))

    def _answer_error(self, client_msg_id: str, frame: dict[str, Any]) -> None:
        pending = self._pending[client_msg_id]
        error = error_from_frame(frame)
        if isinstance(error, RetryLater) and error.code != "rate_limited":
            # The node could not store it now: the same frame again later is safe.
            task = asyncio.create_task(self._resend(client_msg_id, error.retry_after))
            self._resends.add(task)
            task.add_done_callback(self._resends.discard)
            return
        if not pending.answer.done():
            pending.answer.set_exception(error)

    async def _resend(self, client_msg_id: str, after: float) -> None:
        await asyncio.sleep(after)
        pending = self._pending.get(client_msg_id)
        if pending is not None and not pending.answer.done():
            await self.send_frame(pending.frame)
