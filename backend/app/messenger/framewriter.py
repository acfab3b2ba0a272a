"""Writing a socket's queued frames: all of them in one write where the server allows.

ASGI sends one frame per call, and the server makes each call a system call of its own.
A socket with many frames waiting (a member of a busy group, a sender getting the acks
of a batch) would cost one write per frame: in a 100-member fan-out, half of a node's
CPU went to the kernel that way. Under uvicorn's websockets-sansio protocol (the one
`python -m app` runs), the frames are framed by the protocol's own websockets connection
and their bytes go out in a single transport write; under any other server (the test
client, another ASGI server) they go one by one through ASGI.

The fast path uses the protocol's attributes as its own send() does for one frame. They
are not public API: a uvicorn without that protocol module, or whose protocol lacks one
of them, gets frame-by-frame sends (said once per protocol class) rather than a node
that fails at import or on its first frame. A test checks that a real node on the
pinned uvicorn takes the fast path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger(__name__)

WriteFrames = Callable[[list[str]], Awaitable[None]]
SERVER_SEND = "app.server_send"  # the scope key ServerSend fills

# What _write_together reads of the protocol, and what it calls on each of those.
FAST_PATH_READS: dict[str, tuple[str, ...]] = {
    "writable": ("wait",),
    "disconnected": (),
    "close_sent": (),
    "conn": ("send_text", "data_to_send"),
    "transport": ("write",),
}


@dataclass(frozen=True, slots=True)
class FastPath:
    """The uvicorn and websockets classes the fast path needs."""

    protocol: type[WebSocketsSansIOProtocol]
    client_disconnected: type[Exception]  # what the server's send raises once gone
    invalid_state: type[Exception]  # what websockets raises on a closing connection


def import_fast_path() -> FastPath | str:
    """The fast path's classes, or why they cannot be had."""
    try:
        from uvicorn.protocols.utils import ClientDisconnected
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
        from websockets.exceptions import InvalidState
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return FastPath(WebSocketsSansIOProtocol, ClientDisconnected, InvalidState)


_FAST_PATH = import_fast_path()
# Per server protocol class: the fast path, or why not. Every socket of a class is
# alike, so the first one's check holds for the rest.
_verdicts: dict[type, FastPath | str] = {}


def frame_writer(send: Send) -> WriteFrames:
    """What writes frames for this socket, given the server's own send callable."""
    protocol = getattr(send, "__self__", None)
    kind = type(protocol)
    verdict = _verdicts.get(kind)
    if verdict is None:
        verdict = _verdicts[kind] = _check(protocol)
        if isinstance(verdict, str):
            log.info("socket frames go one ASGI send each protocol=%s: %s", _name(kind), verdict)
    if isinstance(verdict, FastPath) and isinstance(protocol, verdict.protocol):
        return partial(_write_together, verdict, protocol)
    return partial(_write_each, send)


def _check(protocol: object) -> FastPath | str:
    fast = _FAST_PATH
    if isinstance(fast, str):
        return f"uvicorn's websockets-sansio protocol cannot be imported ({fast})"
    if not isinstance(protocol, fast.protocol):
        return "the server's send is not uvicorn's websockets-sansio protocol"
    missing = []
    for name, calls in FAST_PATH_READS.items():
        if not hasattr(protocol, name):
            missing.append(name)
            continue
        value = getattr(protocol, name)
        missing += [f"{name}.{call}" for call in calls if not callable(getattr(value, call, None))]
    if missing:
        return f"the protocol lacks {', '.join(missing)}"
    return fast


def _name(kind: type) -> str:
    if kind is type(None):
        return "none"  # a plain send callable, not a protocol's method
    return f"{kind.__module__}.{kind.__qualname__}"


async def _write_each(send: Send, frames: list[str]) -> None:
    for frame in frames:
        await send({"type": "websocket.send", "text": frame})


async def _write_together(
    fast: FastPath, protocol: WebSocketsSansIOProtocol, frames: list[str]
) -> None:
    # As the protocol's send() does for one frame: wait while the peer is not reading
    # (flow control), refuse once the socket is gone or closing, then frame and write.
    await protocol.writable.wait()
    if protocol.disconnected or protocol.close_sent:
        raise fast.client_disconnected()
    try:
        for frame in frames:
            protocol.conn.send_text(frame.encode())
    except fast.invalid_state:
        raise fast.client_disconnected() from None
    protocol.transport.write(b"".join(protocol.conn.data_to_send()))


class ServerSend:
    """ASGI middleware, outside Starlette's exception layer (which wraps send for every
    request): keeps the server's own send callable in a WebSocket's scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SERVER_SEND] = send
        await self.app(scope, receive, send)
