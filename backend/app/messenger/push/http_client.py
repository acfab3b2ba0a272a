"""The HTTP/1.1 client of the push providers that speak it (Web Push and FCM).

A push is one POST of a few KiB whose answer is a status and a few hundred bytes. The
client keeps connections alive per origin, one request on a connection at a time,
at most `max_connections` open in all; answers are parsed by httptools (llhttp, the
parser uvicorn runs on). Measured against aiohttp's session on this machine (a POST
to a local server, 100 in flight): about 30 µs of CPU a request against 130, which
was a fifth of a Web Push's CPU. What aiohttp adds (cookies, redirects, proxies,
decompression, multipart) a push never uses: redirects are not followed, answers are
never decompressed (nothing is asked to be) and read only up to a bound.

Every address connected to comes from `resolve`, which may refuse (Web Push keeps
only public addresses: push.endpoints); a name's addresses are tried as browsers do
(Happy Eyeballs, aiohappyeyeballs: the next one 0.25 s after the last without an
answer), so one unreachable address family costs a quarter second, not the push. A
request cut off (timeout, cancel) closes its connection: it may have been half
written. An answer is bounded as it is read (its head to MAX_HEADER_BYTES, its body to
what the caller asks), and a connection that brings more than one answer to a request
is not used again.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohappyeyeballs
import httptools
from yarl import URL

# Resolves (host, port) to the addresses to try, in order; raises OSError to refuse.
Resolve = Callable[[str, int], Awaitable[list[str]]]

IDLE_SECONDS = 15.0  # a connection idle longer is closed (servers drop theirs at 60+ s)
MAX_HEADER_BYTES = 16384  # an answer's headers beyond this: not a push service
SWEEP_EVERY = 1.0  # seconds between looks for connections idle too long
HAPPY_EYEBALLS_DELAY = 0.25  # seconds before the next address is tried (RFC 8305)


class HttpError(OSError):
    """The server's answer could not be read as HTTP, or the connection ended early."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str
    headers: dict[str, str]  # names in lower case; a repeated one keeps its last value
    body: bytes  # up to the request's max_answer bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def resolve_any(host: str, port: int) -> list[str]:
    """The system resolver's addresses for host, any of them."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Connection(asyncio.Protocol):
    """One kept-alive connection: writes a request, parses its answer."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._max_answer = 0
        self._reset()

    def _reset(self) -> None:
        self._headers: dict[str, str] = {}
        self._head_bytes = 0  # read while the answer's head was not complete
        self._head_parsed = 0  # of its status line and headers, as parsed
        self._head_done = False
        self._answered = False
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._reason = ""
        self.cut_off = False  # the answer was longer than asked for: not reusable
        self.keep_alive = False  # the answer came whole and lets the connection be reused

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # nothing was asked: a server talking out of turn is not reused
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError("the server switched protocols"))
            return
        except httptools.HttpParserError as exc:
            # A callback's own error (an answer nobody asked for, a head too long) is the
            # context.
            self._fail(HttpError(f"unreadable answer: {exc.__context__ or exc}"))
            return
        if not self._head_done:
            # llhttp gathers a status line or header whole before it calls back: what
            # came while the head is not complete is all head, and it is bounded.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADER_BYTES:
                self._fail(HttpError("the answer's head is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            status = self._parser.get_status_code() if self._headers else 0
            if status and not self._parser.should_keep_alive():
                # An answer whose body runs to the end of the connection: it has ended.
                self._complete(status)
            else:
                waiter.set_exception(HttpError("the server closed the connection"))

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self._answered:  # a second answer to one request: nobody asked for it
            raise HttpError("the server sent an answer nobody asked for")

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status))
        self._reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def _count_head(self, size: int) -> None:
        """The head as parsed (all of it may come in one read)."""
        self._head_parsed += size
        if self._head_parsed > MAX_HEADER_BYTES:
            raise HttpError("the answer's head is too long")

    def on_headers_complete(self) -> None:
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        room = self._max_answer - self._body_bytes
        if len(body) > room:
            self.cut_off = True
            body = body[:room]
        if body:
            self._body.append(body)
            self._body_bytes += len(body)
        if self.cut_off:
            self._complete(self._parser.get_status_code())

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and the like: the real answer follows
            self._reset()
            return
        # Asked here: llhttp forgets it once the next message begins.
        self.keep_alive = self._parser.should_keep_alive()
        self._answered = True
        self._complete(status)

    # --

    def _complete(self, status: int) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(
                Answer(status, self._reason, dict(self._headers), b"".join(self._body))
            )

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def reusable(self) -> bool:
        return self.keep_alive and self._answered and not self.closed and not self.cut_off

    async def request(self, head: bytes, body: bytes, max_answer: int) -> Answer:
        if self.transport is None or self.closed:
            raise HttpError("the server closed the connection")
        self._reset()
        self._max_answer = max_answer
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClient:
    """POSTs over kept-alive connections, at most `max_connections` open at once."""

    def __init__(
        self,
        max_connections: int,
        resolve: Resolve = resolve_any,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(max(1, max_connections))
        self._max = max(1, max_connections)
        self._resolve = resolve
        self._ssl = ssl_context or ssl.create_default_context()
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._connecting = 0  # connections being made, counted against the limit too
        self._swept = 0.0
        self._closed = False

    async def post(
        self, url: URL, headers: Mapping[str, str], body: bytes, max_answer: int
    ) -> Answer:
        """POST body to url; the answer's body read up to max_answer bytes (a longer
        one is cut off and its connection closed). OSError (HttpError among them) when
        no answer came."""
        head = _head(url, headers, len(body))
        origin = (url.scheme, url.host or "", url.port or 0)
        async with self._slots:
            connection = self._idle_connection(origin) or await self._connect(origin)
            try:
                answer = await connection.request(head, body, max_answer)
            except BaseException:
                self._drop(connection)  # half written or half read: never reused
                raise
            if connection.reusable() and not self._closed:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(origin, []).append(connection)
            else:
                self._drop(connection)
            return answer

    def _idle_connection(self, origin: tuple[str, str, int]) -> _Connection | None:
        now = time.monotonic()
        if now - self._swept > SWEEP_EVERY:
            self._sweep(now)
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()  # the most recently used: the least likely dropped
            if not connection.closed:
                return connection
            self._open.discard(connection)
        return None

    def _sweep(self, now: float) -> None:
        self._swept = now
        for origin, idle in list(self._idle.items()):
            keep = [c for c in idle if not c.closed and now - c.idle_since < IDLE_SECONDS]
            for connection in idle:
                if connection not in keep:
                    self._drop(connection)
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        if self._closed:
            raise HttpError("the client is closed")
        # At the limit, idle connections make room (the others each carry a request, and
        # this one holds a slot of its own, so enough of them are idle).
        while len(self._open) + self._connecting >= self._max and self._close_oldest_idle():
            pass
        scheme, host, port = origin
        tls = scheme == "https"
        self._connecting += 1
        try:
            addresses = await self._resolve(host, port)
            if not addresses:
                raise HttpError("no address to connect to")
            sock = await aiohappyeyeballs.start_connection(
                [_address_info(a, port) for a in addresses],
                happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
            )
            _, connection = await asyncio.get_running_loop().create_connection(
                lambda: _Connection(origin),
                sock=sock,
                ssl=self._ssl if tls else None,
                server_hostname=host if tls else None,
            )
        finally:
            self._connecting -= 1
        if self._closed:
            connection.close()
            raise HttpError("the client is closed")
        self._open.add(connection)
        return connection

    def _close_oldest_idle(self) -> bool:
        """Close the connection idle longest, whatever its origin; False: none is idle."""
        candidates = [c for idle in self._idle.values() for c in idle]
        if not candidates:
            return False
        oldest = min(candidates, key=lambda c: c.idle_since)
        self._idle[oldest.origin].remove(oldest)
        self._drop(oldest)
        return True

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    async def close(self) -> None:
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()


def _address_info(address: str, port: int) -> aiohappyeyeballs.AddrInfoType:
    """A getaddrinfo() entry for a resolved address, as start_connection takes them."""
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))


def _head(url: URL, headers: Mapping[str, str], length: int) -> bytes:
    """The request line and headers; ValueError for anything that would split them."""
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    if not url.is_default_port():
        host = f"{host}:{url.port}"
    lines = [f"POST {url.raw_path_qs or '/'} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {length}")
    text = "\r\n".join(lines)
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks or "\0" in text:
        raise ValueError("a header or the path holds a line break")
    if " " in lines[0][5:-9] or "\t" in lines[0]:
        raise ValueError("the path holds white space")
    return (text + "\r\n\r\n").encode("latin-1")
