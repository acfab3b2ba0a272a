"""A lean WebSocket client (RFC 6455) for the load generator.

The load generator shares a 2-core machine with the node, PostgreSQL and Redis, so
its cost per frame must stay small next to the node's: a general-purpose client
(websockets' asyncio API, about 9 µs per received frame through its parser) would
make the load generator, not the node, the bound. This one does the real opening
handshake (Sec-WebSocket-Accept checked) and real framing (masked client frames,
pings answered), but nothing more: no extensions, text frames only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Callable

try:
    from websockets.speedups import apply_mask  # C: masking costs nothing
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
MAX_HEADER = 16 * 1024

OnMessage = Callable[["WSClient", bytes], None]


class HandshakeError(Exception):
    pass


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame with FIN set."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    return header + mask + apply_mask(payload, mask)


class WSClient(asyncio.Protocol):
    """One WebSocket; every text message is handed to `on_message(client, data)`."""

    def __init__(self, host: str, port: int, path: str, on_message: OnMessage) -> None:
        loop = asyncio.get_running_loop()
        self.host, self.port, self.path = host, port, path
        self.on_message = on_message
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self.tag: object = None  # whatever the owner wants to find again in on_message
        self._key = base64.b64encode(os.urandom(16))
        self._buf = bytearray()
        self._open = False
        self._fragments: list[bytes] = []

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str,
        on_message: OnMessage,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> WSClient:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, client = await loop.create_connection(
                lambda: cls(host, port, path, on_message), host, port
            )
            await client.opened
        return client

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        request = (
            f"GET {self.path} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self._key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.transport.write(request.encode())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._open and not self._handshake():
            return
        self._read_frames()

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        if not self.opened.done():
            self.opened.set_exception(exc or HandshakeError("connection closed in handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- sending ------------------------------------------------------------------------

    def send(self, text: bytes) -> None:
        if self._open:
            self.transport.write(encode_frame(OP_TEXT, text))  # type: ignore[union-attr]

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; the server closes the TCP connection."""
        if self._open:
            self._open = False
            self.transport.write(encode_frame(OP_CLOSE, code.to_bytes(2, "big")))  # type: ignore[union-attr]
            asyncio.get_running_loop().call_later(2.0, self.abort)

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    @property
    def is_open(self) -> bool:
        return self._open

    # -- receiving ----------------------------------------------------------------------

    def _handshake(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEADER:
                self._fail_handshake("response headers too long")
            return False
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        status = head[0].split(" ", 2)
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(self._key + GUID).digest()).decode()
        if len(status) < 2 or status[1] != "101":
            self._fail_handshake(f"status {' '.join(status[1:])}")
            return False
        if headers.get("sec-websocket-accept") != expected:
            self._fail_handshake("bad Sec-WebSocket-Accept")
            return False
        self._open = True
        self.opened.set_result(None)
        return True

    def _fail_handshake(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(reason))
        self.abort()

    def _read_frames(self) -> None:
        buf = self._buf
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            mask = None
            if b1 & 0x80:  # a server must not mask, but read it right if it does
                if size - start < 4:
                    break
                mask = bytes(buf[start : start + 4])
                start += 4
            end = start + length
            if end > size:
                break
            payload = bytes(buf[start:end])
            if mask is not None:
                payload = apply_mask(payload, mask)
            pos = end
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
        if pos:
            del buf[:pos]

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if fin:
                self.on_message(self, payload)
            else:
                self._fragments = [payload]
        elif opcode == OP_CONT:
            self._fragments.append(payload)
            if fin:
                data, self._fragments = b"".join(self._fragments), []
                self.on_message(self, data)
        elif opcode == OP_PING:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(encode_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if self._open:
                self._open = False
                self.transport.write(encode_frame(OP_CLOSE, payload[:2]))  # type: ignore[union-attr]
            # The server closes the TCP connection; make sure it goes anyway.
            asyncio.get_running_loop().call_later(2.0, self.abort)
