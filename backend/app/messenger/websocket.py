"""The WebSocket endpoint: authenticate, register the socket, then read frames.

Every frame is answered or acted on; a bad one gets an `error` frame (with `ref`
when it carried a client_msg_id) and the socket stays open.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, Field, StrictInt, StringConstraints, TypeAdapter, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from app import metrics
from app.auth import InvalidToken, decode_access_token
from app.errors import ApiError, describe_validation_error
from app.jsonutil import dumps
from app.messenger.conversations import announce_read
from app.messenger.hub import Connection
from app.messenger.participants import participants_for
from app.messenger.presence import announce_presence
from app.messenger.send import send_message
from app.models import MAX_ID
from app.web import bearer_token

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


async def websocket_endpoint(ws: WebSocket) -> None:
    services = ws.app.state.services
    token = ws.query_params.get("token") or bearer_token(ws.headers.get("authorization"))
    await ws.accept()
    try:
        if not token:
            raise InvalidToken("missing")
        user_id = decode_access_token(token, services.settings.signing_key)
    except InvalidToken:
        await ws.close(CLOSE_UNAUTHORIZED, "invalid or missing token")
        return

    conn = Connection(ws, user_id)
    metrics.websocket_connections.inc()
    if services.hub.add(conn):
        await services.fanout.watch(user_id)
    if await services.presence.socket_opened(user_id):
        await announce_presence(services, user_id, online=True)
    log.debug("socket open user=%s conn=%s", user_id, conn.id)
    try:
        await read_frames(services, conn)
    finally:
        if services.hub.remove(conn):
            await services.fanout.unwatch(user_id)
        if await services.presence.socket_closed(user_id):
            await announce_presence(services, user_id, online=False)
        await conn.finish()
        metrics.websocket_connections.dec()
        log.debug("socket closed user=%s conn=%s", user_id, conn.id)


async def read_frames(services: Any, conn: Connection) -> None:
    limit = services.settings.max_frame_bytes
    while True:
        event = await conn.ws.receive()
        if event["type"] == "websocket.disconnect":
            return
        raw = event.get("text")
        if raw is None:
            raw = event.get("bytes") or b""
        # Text is measured in UTF-8 bytes, the way the client sent it.
        size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
        if size > limit:
            conn.send(error_frame("payload_too_large", f"a frame is at most {limit} bytes"))
            continue
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            conn.send(error_frame("bad_frame", "a frame is one JSON object"))
            continue
        if not isinstance(data, dict):
            conn.send(error_frame("bad_frame", "a frame is one JSON object"))
            continue
        ref = data.get("client_msg_id")
        if data.get("type") not in KNOWN_TYPES:
            conn.send(error_frame("unknown_type", f"unknown frame type {data.get('type')!r}", ref))
            continue
        try:
            frame = Frame.validate_python(data)
            await handle_frame(services, conn, frame)
        except ValidationError as exc:
            conn.send(error_frame("invalid_field", describe_validation_error(exc), ref))
        except ApiError as exc:
            extra = {}
            if exc.code == "rate_limited" and exc.headers:
                extra["retry_after"] = int(exc.headers["Retry-After"])
            conn.send(error_frame(exc.code, exc.message, ref, **extra))
        except WebSocketDisconnect:
            return
        except Exception:
            log.exception("frame failed user=%s conn=%s", conn.user_id, conn.id)
            conn.send(error_frame("internal_error", "the frame could not be handled", ref))


async def handle_frame(services: Any, conn: Connection, frame: BaseModel) -> None:
    if isinstance(frame, SendFrame):
        message, _ = await send_message(
            services,
            conn.user_id,
            frame.conversation_id,
            frame.content,
            frame.client_msg_id,
            exclude_connection=conn.id,
        )
        conn.send(
            dumps({"type": "message.ack", "client_msg_id": frame.client_msg_id, "message": message})
        )
    elif isinstance(frame, TypingFrame):
        participants = await participants_for(
            services.participants, conn.user_id, frame.conversation_id
        )
        typing = {
            "type": "typing",
            "conversation_id": frame.conversation_id,
            "user_id": conn.user_id,
        }
        await services.fanout.publish(participants - {conn.user_id}, dumps(typing))
    elif isinstance(frame, ReadFrame):
        participants = await participants_for(
            services.participants, conn.user_id, frame.conversation_id
        )
        await announce_read(services, conn.user_id, frame.conversation_id, frame.seq, participants)
    elif isinstance(frame, PingFrame):
        conn.send(PONG)
