"""The WebSocket endpoint: authenticate, register the socket, then read frames.

Every frame is answered or acted on; a bad one gets an `error` frame (with `ref`
when it carried a client_msg_id) and the socket stays open.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, Field, StrictInt, StringConstraints, TypeAdapter, ValidationError
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from app import metrics
from app.auth import InvalidToken, decode_access_token
from app.config import Settings
from app.errors import ApiError, describe_validation_error
from app.jsonutil import dumps
from app.messenger.contacts import Contacts, presence_frame
from app.messenger.fanout import Fanout
from app.messenger.framewriter import SERVER_SEND, WriteFrames, frame_writer
from app.messenger.hub import Connection, Hub
from app.messenger.participants import ParticipantCache
from app.messenger.presence import Presence
from app.messenger.reads import ReadMarks
from app.messenger.send import Accepted, Sender
from app.models import MAX_ID
from app.web import NUL_REFUSED, bearer_token, json_has_nul

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
ConversationId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class SendFrame(BaseModel):
    type: Literal["message.send"]
    conversation_id: ConversationId
    content: str
    client_msg_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class TypingFrame(BaseModel):
    type: Literal["typing"]
    conversation_id: ConversationId


class ReadFrame(BaseModel):
    type: Literal["read"]
    conversation_id: ConversationId
    seq: StrictInt = Field(ge=0, le=MAX_ID)


class PingFrame(BaseModel):
    type: Literal["ping"]


Frame = TypeAdapter(
    Annotated[SendFrame | TypingFrame | ReadFrame | PingFrame, Field(discriminator="type")]
)
KNOWN_TYPES = {"message.send", "typing", "read", "ping"}
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
    ) -> None:
        self._settings = settings
        self._hub = hub
        self._presence = presence
        self._contacts = contacts
        self._sender = sender
        self._participants = participants
        self._reads = reads
        self._fanout = fanout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ws = WebSocket(scope, receive, send)
        await self.serve(ws, frame_writer(scope.get(SERVER_SEND, send)))

    async def serve(self, ws: WebSocket, write_frames: WriteFrames) -> None:
        token = ws.query_params.get("token") or bearer_token(ws.headers.get("authorization"))
        try:
            if not token:
                raise InvalidToken("missing")
            user_id = decode_access_token(token, self._settings.signing_key)
        except InvalidToken:
            await ws.accept()
            await ws.close(CLOSE_UNAUTHORIZED, "invalid or missing token")
            return

        # Claimed in presence before the handshake completes: from the moment the client
        # sees the socket open (and catches up from history), other nodes route frames here.
        came_online = await self._presence.socket_opened(user_id)
        conn = Connection(ws, user_id, write_frames)
        self._hub.add(conn)
        metrics.websocket_connections.inc()
        try:
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
            self._hub.remove(conn)
            if await self._presence.socket_closed(user_id):
                await self._contacts.announce(user_id, online=False)
            await conn.finish()
            metrics.websocket_connections.dec()
            log.debug("socket closed user=%s conn=%s", user_id, conn.id)

    async def _read_frames(self, conn: Connection) -> None:
        limit = self._settings.max_frame_bytes
        sends = SendPipeline(self._sender, conn)
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
                    await self._handle(conn, frame)
                except FrameError as exc:
                    await sends.drain()
                    conn.send(exc.frame)
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
                except Exception:
                    log.exception("frame failed user=%s conn=%s", conn.user_id, conn.id)
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

    async def _handle(self, conn: Connection, frame: BaseModel) -> None:
        """Every frame but a send (SendPipeline answers those)."""
        if isinstance(frame, TypingFrame):
            participants = await self._participants.of_member(conn.user_id, frame.conversation_id)
            typing = {
                "type": "typing",
                "conversation_id": frame.conversation_id,
                "user_id": conn.user_id,
            }
            await self._fanout.publish(participants - {conn.user_id}, dumps(typing))
        elif isinstance(frame, ReadFrame):
            participants = await self._participants.of_member(conn.user_id, frame.conversation_id)
            await self._reads.mark(conn.user_id, frame.conversation_id, frame.seq, participants)
        elif isinstance(frame, PingFrame):
            conn.send(PONG)


class FrameError(Exception):
    """A frame that cannot be acted on; `frame` is the error frame to answer with."""

    def __init__(self, frame: str) -> None:
        self.frame = frame


def parse_frame(event: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """The frame's JSON object, of a known type; FrameError if it is not one."""
    raw = event.get("text")
    if raw is None:
        raw = event.get("bytes") or b""
    # Text is measured in UTF-8 bytes, the way the client sent it.
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
    if size > limit:
        raise FrameError(error_frame("payload_too_large", f"a frame is at most {limit} bytes"))
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FrameError(error_frame("bad_frame", "a frame is one JSON object")) from None
    if not isinstance(data, dict):
        raise FrameError(error_frame("bad_frame", "a frame is one JSON object"))
    if data.get("type") not in KNOWN_TYPES:
        raise FrameError(
            error_frame(
                "unknown_type",
                f"unknown frame type {data.get('type')!r}",
                data.get("client_msg_id"),
            )
        )
    if json_has_nul(raw, data):
        raise FrameError(error_frame("invalid_field", NUL_REFUSED, data.get("client_msg_id")))
    return data


def api_error_frame(exc: ApiError, ref: Any) -> str:
    extra = {}
    if exc.code == "rate_limited" and exc.headers:
        extra["retry_after"] = int(exc.headers["Retry-After"])
    return error_frame(exc.code, exc.message, ref, **extra)


class SendPipeline:
    """A socket's sends that are accepted but not yet committed, answered in order.

    The reader takes a socket's next frame while its earlier sends wait for their flood
    check and their commit, so a burst from one socket shares one batch instead of paying
    a round trip and a commit per message. Anything else the socket asks, and every
    error, waits until the sends before it are answered: replies still come back in the
    order the frames came.
    """

    __slots__ = ("_conn", "_pending", "_sender", "_task")

    def __init__(self, sender: Sender, conn: Connection) -> None:
        self._sender = sender
        self._conn = conn
        self._pending: deque[tuple[str, Accepted]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def accept(self, frame: SendFrame) -> None:
        accepted = await self._sender.accept(
            self._conn.user_id, frame.conversation_id, frame.content, frame.client_msg_id
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
                except Exception:
                    log.exception("frame failed user=%s conn=%s", conn.user_id, conn.id)
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
        finally:
            self._task = None
