"""Writing a socket's queued frames: all of them in one write where the server allows.

ASGI sends one frame per call, and the server makes each call a system call of its own.
A socket with many frames waiting (a member of a busy group, a sender getting the acks
of a batch) would cost one write per frame: in a 100-member fan-out, half of a node's
CPU went to the kernel that way. Under uvicorn's websockets-sansio protocol (the one
`python -m app` runs), the frames are framed by the protocol's own websockets connection
and their bytes go out in a single transport write; under any other server (the test
client, another ASGI server) they go one by one through ASGI.

The fast path uses the protocol's attributes as its own send() does for one frame; the
uvicorn version is pinned, and a test checks that a real node takes this path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

WriteFrames = Callable[[list[str]], Awaitable[None]]
SERVER_SEND = "app.server_send"  # the scope key ServerSend fills


def frame_writer(send: Send) -> WriteFrames:
    """What writes frames for this socket, given the server's own send callable."""
    protocol = getattr(send, "__self__", None)
    if isinstance(protocol, WebSocketsSansIOProtocol):
        return partial(_write_together, protocol)
    return partial(_write_each, send)


async def _write_each(send: Send, frames: list[str]) -> None:
    for frame in frames:
        await send({"type": "websocket.send", "text": frame})


async def _write_together(protocol: WebSocketsSansIOProtocol, frames: list[str]) -> None:
    # As the protocol's send() does for one frame: wait while the peer is not reading
    # (flow control), refuse once the socket is gone or closing, then frame and write.
    await protocol.writable.wait()
    if protocol.disconnected or protocol.close_sent:
        raise ClientDisconnected()
    try:
        for frame in frames:
            protocol.conn.send_text(frame.encode())
    except InvalidState:
        raise ClientDisconnected() from None
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
