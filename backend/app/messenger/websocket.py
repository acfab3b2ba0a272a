"""The WebSocket endpoint: authenticate, register the socket, then read frames.

Every frame is answered or acted on; a bad one gets an `error` frame (with `ref`
when it carried a client_msg_id) and the socket stays open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    Field,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from app import metrics
from app.auth import AccessClaims, InvalidToken
from app.config import Settings
from app.errors import ApiError, describe_unexpected, describe_validation_error
from app.jsonutil import dumps
from app.messenger.attachments import MAX_IDS
from app.messenger.attention import SocketAttention
from app.messenger.blocks import Blocks
from app.messenger.contacts import Contacts, presence_frame
from app.messenger.fanout import Fanout
from app.messenger.framewriter import SERVER_SEND, WriteFrames, frame_writer
from app.messenger.hub import Connection, Hub
from app.messenger.participants import ParticipantCache
from app.messenger.pending_auth import PendingSockets
from app.messenger.presence import Presence
from app.messenger.reads import ReadMarks, SocketReads
from app.messenger.send import Accepted, Sender
from app.messenger.socket_auth import CLOSE_UNAUTHORIZED, SocketAuth
from app.messenger.typing_throttle import TypingThrottle
from app.models import MAX_ID
from app.web import NUL_REFUSED, bearer_token, json_has_nul

log = logging.getLogger(__name__)

# A frame over MAX_FRAME_BYTES: uvicorn closes with this before reading it (ws_max_size);
# the same answer here, where a server without that limit hands one over.
CLOSE_TOO_BIG = 1009
ConversationId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class SendFrame(BaseModel):
    type: Literal["message.send"]
    conversation_id: ConversationId
    content: str  # may be empty when it carries attachments
    client_msg_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    # The id of a message of the same conversation this one answers.
    reply_to: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    # Upload ids sent with it (the Sender checks how many, and whose).
    attachments: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=MAX_IDS
    )
    # Sending later is REST only: a frame asking for it is refused, never sent now.
    send_at: None = None

    @field_validator("send_at", mode="before")
    @classmethod
    def _refuse_send_at(cls, value: Any) -> None:
        if value is not None:
            raise ValueError(
                "schedule over REST: POST /api/v1/messenger/conversations/{id}/messages"
                " with send_at"
            )
        return None


class TypingFrame(BaseModel):
    type: Literal["typing"]
    conversation_id: ConversationId


class ReadFrame(BaseModel):
    type: Literal["read"]
    conversation_id: ConversationId
    seq: StrictInt = Field(ge=0, le=MAX_ID)


class PingFrame(BaseModel):
    type: Literal["ping"]


class ActivityFrame(BaseModel):
    """Whether the person is looking at this client: `idle` when its tab is hidden or
    untouched; a socket that never said counts as active."""

    type: Literal["activity"]
    state: Literal["active", "idle"]


class AuthFrame(BaseModel):
    """The socket's first frame when it was opened without a token; later, a fresh token
    that keeps it open past the current one's expiry."""

    type: Literal["auth"]
    access_token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


Frame = TypeAdapter(
    Annotated[
        SendFrame | TypingFrame | ReadFrame | PingFrame | AuthFrame | ActivityFrame,
        Field(discriminator="type"),
    ]
)
KNOWN_TYPES = {"message.send", "typing", "read", "ping", "auth", "activity"}
PONG = dumps({"type": "pong"})


def error_frame(code: str, message: str, ref: Any = None, **extra: Any) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message, **extra}
    if isinstance(ref, str):
        frame["ref"] = ref
    return dumps(frame)


class SocketEndpoint:
    """The /ws route as a plain ASGI app: authenticate, register the socket, then read
    frames. Its sockets write frames through the server's own send (see framewriter);
    everything else goes through Starlette's WebSocket."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        presence: Presence,
        contacts: Contacts,
        sender: Sender,
        participants: ParticipantCache,
        reads: ReadMarks,
        fanout: Fanout,
        socket_auth: SocketAuth,
        blocks: Blocks,
        attention: Presence,
    ) -> None:
        self._attention = attention
        self._socket_auth = socket_auth
        self._blocks = blocks
        self._settings = settings
        self._hub = hub
        self._presence = presence
        self._contacts = contacts
        self._sender = sender
        self._participants = participants
        self._reads = reads
        self._fanout = fanout
        self._typing = TypingThrottle(settings.typing_interval_seconds)
        self._pending = PendingSockets(
            settings.max_pending_auth_sockets_per_address, settings.max_pending_auth_sockets
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ws = WebSocket(scope, receive, send)
        await self.serve(ws, frame_writer(scope.get(SERVER_SEND, send)))

    async def serve(self, ws: WebSocket, write_frames: WriteFrames) -> None:
        token = ws.query_params.get("token") or bearer_token(ws.headers.get("authorization"))
        by_frame = not token
        if by_frame:
            with self._pending.waiting(ws.client.host if ws.client else None) as refused:
                await ws.accept()
                if refused is not None:
                    await ws.close(refused.code, refused.reason)
                    return
                token = await self._first_frame_token(ws)
            if ws.client_state is WebSocketState.DISCONNECTED:
                return
        claims = await self._socket_auth.verify(token) if token else None
        if claims is None or token is None:
            if not by_frame:
                await ws.accept()
            await ws.close(CLOSE_UNAUTHORIZED, "invalid or missing token")
            return
        user_id = claims.user_id

        # Claimed in presence before the handshake completes: from the moment the client
        # sees the socket open (and catches up from history), other nodes route frames here.
        came_online = await self._presence.socket_opened(user_id)
        conn = Connection(ws, user_id, write_frames)
        conn.attention = attention = SocketAttention(self._attention, user_id)
        self._hub.add(conn)
        self._socket_auth.watch(conn, claims, token)
        metrics.websocket_connections.inc()
        try:
            await attention.open()
            if by_frame:
                conn.send(auth_ok_frame(claims))  # the client may now catch up from history
            else:
                await ws.accept()
            conn.open()  # frames that came meanwhile were queued
            contacts = await self._contacts.of(user_id)
            if came_online:
                await self._contacts.announce(user_id, online=True, contacts=contacts)
            # The new socket learns who is already here; later changes come as they happen.
            for contact in await self._presence.online(contacts):
                conn.send(presence_frame(contact, online=True))
            log.debug("socket open user=%s conn=%s", user_id, conn.id)
            await self._read_frames(conn)
        finally:
            self._socket_auth.forget(conn)
            self._hub.remove(conn)
            try:
                await attention.close()
            finally:
                if await self._presence.socket_closed(user_id):
                    await self._contacts.announce(user_id, online=False)
            await conn.finish()
            metrics.websocket_connections.dec()
            log.debug("socket closed user=%s conn=%s", user_id, conn.id)

    async def _read_frames(self, conn: Connection) -> None:
        limit = self._settings.max_frame_bytes
        sends = SendPipeline(self._sender, conn, self._settings.websocket_sends_in_flight)
        reads = SocketReads(self._reads, conn.user_id)
        try:
            while True:
                event = await conn.ws.receive()
                if event["type"] == "websocket.disconnect":
                    return
                data: dict[str, Any] = {}
                try:
                    data = parse_frame(event, limit)
                    frame = Frame.validate_python(data)
                    if isinstance(frame, SendFrame):
                        await sends.accept(frame)
                        continue
                    await sends.drain()
                    await self._handle(conn, frame, reads)
                except FrameError as exc:
                    await sends.drain()
                    conn.send(exc.frame)
                except FrameTooBig:
                    await sends.drain()
                    await conn.ws.close(CLOSE_TOO_BIG, f"a frame is at most {limit} bytes")
                    return
                except ValidationError as exc:
                    await sends.drain()
                    conn.send(
                        error_frame(
                            "invalid_field",
                            describe_validation_error(exc),
                            data.get("client_msg_id"),
                        )
                    )
                except ApiError as exc:
                    await sends.drain()
                    conn.send(api_error_frame(exc, data.get("client_msg_id")))
                except WebSocketDisconnect:
                    return
                except Exception as exc:
                    log_frame_failure(conn, exc)
                    await sends.drain()
                    conn.send(
                        error_frame(
                            "internal_error",
                            "the frame could not be handled",
                            data.get("client_msg_id"),
                        )
                    )
        finally:
            # What was accepted is still committed, delivered and answered.
            await sends.drain()

    async def _handle(self, conn: Connection, frame: BaseModel, reads: SocketReads) -> None:
        """Every frame but a send (SendPipeline answers those)."""
        if isinstance(frame, TypingFrame):
            # Nobody types into a read-only conversation: 403 `read_only`, as for a send.
            participants = await self._participants.of_sender(conn.user_id, frame.conversation_id)
            if not self._typing.allow(conn.user_id, frame.conversation_id):
                return
            try:  # someone who blocked you does not see you typing either (dropped silently)
                await self._blocks.check_send(conn.user_id, frame.conversation_id, participants)
            except ApiError:
                return
            typing = {
                "type": "typing",
                "conversation_id": frame.conversation_id,
                "user_id": conn.user_id,
            }
            await self._fanout.publish(participants - {conn.user_id}, dumps(typing))
        elif isinstance(frame, ReadFrame):
            participants = await self._participants.of_member(conn.user_id, frame.conversation_id)
            await reads.mark(frame.conversation_id, frame.seq, participants)
        elif isinstance(frame, PingFrame):
            conn.send(PONG)
        elif isinstance(frame, ActivityFrame):
            if conn.attention is not None:
                await conn.attention.report(frame.state == "active")
        elif isinstance(frame, AuthFrame):
            try:
                claims = await self._socket_auth.renew(conn, frame.access_token)
            except InvalidToken:
                conn.send(error_frame("invalid_token", "the access token is not valid here"))
            else:
                conn.send(auth_ok_frame(claims))

    async def _first_frame_token(self, ws: WebSocket) -> str | None:
        """The token of a first frame `auth {access_token}`, if one comes in time."""
        try:
            event = await asyncio.wait_for(
                ws.receive(), self._settings.websocket_auth_timeout_seconds
            )
            if event["type"] != "websocket.receive":
                return None
            frame = Frame.validate_python(parse_frame(event, self._settings.max_frame_bytes))
        except (TimeoutError, FrameError, FrameTooBig, ValidationError):
            return None
        return frame.access_token if isinstance(frame, AuthFrame) else None


class FrameError(Exception):
    """A frame that cannot be acted on; `frame` is the error frame to answer with."""

    def __init__(self, frame: str) -> None:
        self.frame = frame


class FrameTooBig(Exception):
    """A frame over the size limit: the socket closes with CLOSE_TOO_BIG."""


def parse_frame(event: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """The frame's JSON object, of a known type; FrameError if it is not one."""
    raw = event.get("text")
    if raw is None:
        raw = event.get("bytes") or b""
    # Text is measured in UTF-8 bytes, the way the client sent it.
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
    if size > limit:
        raise FrameTooBig
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FrameError(error_frame("bad_frame", "a frame is one JSON object")) from None
    if not isinstance(data, dict):
        raise FrameError(error_frame("bad_frame", "a frame is one JSON object"))
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in KNOWN_TYPES:
        what = f"unknown frame type {kind[:64]!r}" if isinstance(kind, str) else "no frame type"
        raise FrameError(error_frame("unknown_type", what, data.get("client_msg_id")))
    if json_has_nul(raw, data):
        raise FrameError(error_frame("invalid_field", NUL_REFUSED, data.get("client_msg_id")))
    return data


def auth_ok_frame(claims: AccessClaims) -> str:
    expires_in = max(0, int(claims.expires_at - time.time()))
    return dumps(
        {
            "type": "auth.ok",
            "user_id": claims.user_id,
            "session_id": claims.session_id,
            "expires_in": expires_in,
        }
    )


def log_frame_failure(conn: Connection, exc: BaseException) -> None:
    """A frame that failed for no fault of the client: one line, no values or traceback."""
    log.error("frame failed user=%s conn=%s %s", conn.user_id, conn.id, describe_unexpected(exc))


def api_error_frame(exc: ApiError, ref: Any) -> str:
    extra = {}
    if exc.headers and "Retry-After" in exc.headers:  # rate_limited, overloaded, unavailable
        extra["retry_after"] = int(exc.headers["Retry-After"])
    return error_frame(exc.code, exc.message, ref, **extra)


class SendPipeline:
    """A socket's sends that are accepted but not yet committed, answered in order.

    The reader takes a socket's next frame while its earlier sends wait for their flood
    check and their commit, so a burst from one socket shares one batch instead of paying
    a round trip and a commit per message. Anything else the socket asks, and every
    error, waits until the sends before it are answered: replies still come back in the
    order the frames came. At most `limit` sends wait at once: beyond that the reader
    waits too, so the socket is not read (TCP pushes back on the client) instead of its
    sends queueing without bound.
    """

    __slots__ = ("_conn", "_limit", "_pending", "_room", "_sender", "_task")

    def __init__(self, sender: Sender, conn: Connection, limit: int) -> None:
        self._sender = sender
        self._conn = conn
        self._limit = limit
        self._pending: deque[tuple[str, Accepted]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._room: asyncio.Event | None = None  # set when a send is answered, while full

    async def accept(self, frame: SendFrame) -> None:
        pending = self._pending
        if pending is not None and len(pending) >= self._limit:
            self._room = room = asyncio.Event()
            try:
                while len(pending) >= self._limit:
                    room.clear()
                    await room.wait()
            finally:
                self._room = None
        accepted = await self._sender.accept(
            self._conn.user_id,
            frame.conversation_id,
            frame.content,
            frame.client_msg_id,
            frame.reply_to,
            frame.attachments,
        )
        if self._pending is None:
            self._pending = deque()
        self._pending.append((frame.client_msg_id, accepted))
        if self._task is None:
            self._task = asyncio.create_task(self._answer())

    async def drain(self) -> None:
        """Wait until every accepted send is answered."""
        if self._task is not None:
            await self._task

    async def _answer(self) -> None:
        conn, pending = self._conn, self._pending
        assert pending is not None
        try:
            while pending:
                client_msg_id, accepted = pending[0]
                try:
                    message, _ = await self._sender.finish(accepted, exclude_connection=conn.id)
                except ApiError as exc:
                    conn.send(api_error_frame(exc, client_msg_id))
                except Exception as exc:
                    log_frame_failure(conn, exc)
                    conn.send(
                        error_frame(
                            "internal_error", "the frame could not be handled", client_msg_id
                        )
                    )
                else:
                    ack = {
                        "type": "message.ack",
                        "client_msg_id": client_msg_id,
                        "message": message,
                    }
                    conn.send(dumps(ack))
                finally:
                    pending.popleft()
                    if self._room is not None:
                        self._room.set()
        finally:
            self._task = None
