"""The push providers' HTTP/1.1 client against a raw server that answers exactly the
bytes a test gives it: kept-alive connections, answers cut off, broken answers,
connections closed by the server, requests cut off, and the bound on connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import uvloop
from yarl import URL

from app.messenger.push.http_client import MAX_HEADER_BYTES, Answer, HttpClient, HttpError

OK = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nLocation: /m/1\r\n\r\n"


class RawServer:
    """Reads each request whole (head and Content-Length body), then writes what
    `answer(n)` gives for the n-th request (None: says nothing); `close_after` closes
    the connection after writing."""

    def __init__(self) -> None:
        self.answer: Callable[[int], bytes | None] = lambda n: OK
        self.close_after = False
        self.requests: list[bytes] = []
        self.peers: list[int] = []  # the client port of each request
        self.connections: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.connections:
            writer.close()

    def url(self, path: str = "/push/abc") -> URL:
        return URL(f"http://127.0.0.1:{self.port}{path}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                self.peers.append(writer.get_extra_info("peername")[1])
                answer = self.answer(len(self.requests))
                if answer is not None:
                    writer.write(answer)
                    await writer.drain()
                if self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    async with RawServer() as s:
        yield s


async def _two_posts(server: RawServer) -> tuple[Answer, Answer]:
    """Two posts one after the other, on a client of one connection."""
    client = HttpClient(1)
    try:
        return await _post(client, server.url()), await _post(client, server.url())
    finally:
        await client.close()


async def _post(client: HttpClient, url: URL, max_answer: int = 4096) -> Answer:
    return await client.post(url, {"TTL": "60", "Topic": "t"}, b"x" * 100, max_answer)


async def test_posts_reuse_one_connection_and_send_what_was_asked(server: RawServer) -> None:
    client = HttpClient(10)
    try:
        answers = [await _post(client, server.url("/push/abc?x=1")) for _ in range(5)]
    finally:
        await client.close()

    assert [(a.status, a.reason, a.headers["location"]) for a in answers] == [
        (201, "Created", "/m/1")
    ] * 5
    assert len(set(server.peers)) == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /push/abc?x=1 HTTP/1.1"
    assert set(lines[1:]) == {
        f"Host: 127.0.0.1:{server.port}".encode(),
        b"TTL: 60",
        b"Topic: t",
        b"Content-Length: 100",
    }
    assert body == b"x" * 100


async def test_concurrent_posts_stay_within_the_connection_limit(server: RawServer) -> None:
    client = HttpClient(3)
    try:
        answers = await asyncio.gather(*(_post(client, server.url()) for _ in range(30)))
    finally:
        await client.close()

    assert {a.status for a in answers} == {201}
    assert 1 <= len(set(server.peers)) <= 3


async def test_an_idle_connection_the_server_closed_is_not_used(server: RawServer) -> None:
    client = HttpClient(2)
    try:
        assert (await _post(client, server.url())).status == 201
        for writer in server.connections:  # the server drops its idle connection
            writer.close()
        await asyncio.sleep(0.05)
        assert (await _post(client, server.url())).status == 201
    finally:
        await client.close()

    assert len(set(server.peers)) == 2


async def test_a_chunked_answer_is_read_whole(server: RawServer) -> None:
    server.answer = lambda n: (
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    first, second = await _two_posts(server)

    assert (first.status, first.body, first.headers["retry-after"]) == (400, b"hello world", "7")
    assert second.body == b"hello world" and len(set(server.peers)) == 1


async def test_an_answer_running_to_the_end_of_the_connection_is_read(server: RawServer) -> None:
    server.answer = lambda n: b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\nno length"
    server.close_after = True
    client = HttpClient(1)
    try:
        answer = await _post(client, server.url())
        again = await _post(client, server.url())  # on a new connection
    finally:
        await client.close()

    assert (answer.status, answer.reason, answer.body) == (500, "Oops", b"no length")
    assert again.status == 500 and len(set(server.peers)) == 2


async def test_a_long_answer_is_cut_off_and_its_connection_dropped(server: RawServer) -> None:
    server.answer = lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"y" * 100_000
    client = HttpClient(1)
    try:
        answer = await _post(client, server.url(), max_answer=1000)
        assert (answer.status, answer.body) == (200, b"y" * 1000)
        server.answer = lambda n: OK
        assert (await _post(client, server.url())).status == 201
    finally:
        await client.close()

    assert len(set(server.peers)) == 2  # the one cut off was not used again


@pytest.mark.parametrize(
    "answer",
    [
        b"not http at all\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        # Past the head's bound: a header, or the
        # status line itself, that never ends.
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEADER_BYTES + 1) + b"\r\n\r\n",
        b"HTTP/1.1 200 " + b"O" * (MAX_HEADER_BYTES + 1) + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * (4 * MAX_HEADER_BYTES),  # and never ends
    ],
    ids=[
        "garbage",
        "bad length",
        "upgrade",
        "header too long",
        "status line too long",
        "endless header",
    ],
)
async def test_an_unreadable_answer_is_an_error_and_the_connection_dropped(
    server: RawServer, answer: bytes
) -> None:
    server.answer = lambda n: answer if n == 1 else OK
    client = HttpClient(1)
    try:
        with pytest.raises(HttpError):
            await _post(client, server.url())
        assert (await _post(client, server.url())).status == 201
    finally:
        await client.close()

    assert len(set(server.peers)) == 2


async def test_a_connection_closed_before_the_answer_is_an_error(server: RawServer) -> None:
    server.answer = lambda n: None if n == 1 else OK
    server.close_after = True
    client = HttpClient(1)
    try:
        with pytest.raises(HttpError, match="closed"):
            await _post(client, server.url())
        assert (await _post(client, server.url())).status == 201
    finally:
        await client.close()


async def test_a_request_cut_off_by_its_timeout_drops_its_connection(server: RawServer) -> None:
    server.answer = lambda n: None if n == 1 else OK  # the first is never answered
    client = HttpClient(1)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await _post(client, server.url())
        # Its slot was given back and its connection not reused (a late answer to the
        # first request would be read as the second's).
        assert (await _post(client, server.url())).status == 201
    finally:
        await client.close()

    assert len(set(server.peers)) == 2


async def test_the_oldest_idle_connection_makes_room_for_another_origin() -> None:
    async with RawServer() as one, RawServer() as two:
        client = HttpClient(1)
        try:
            assert (await _post(client, one.url())).status == 201
            assert (await _post(client, two.url())).status == 201
            assert (await _post(client, one.url())).status == 201
        finally:
            await client.close()
        # One connection open at a time: the first origin's was closed and made again.
        assert len(set(one.peers)) == 2 and len(set(two.peers)) == 1


async def test_connections_made_side_by_side_stay_within_the_limit() -> None:
    async with RawServer() as one, RawServer() as two, RawServer() as three:
        client = HttpClient(2)
        try:
            assert (await _post(client, one.url())).status == 201  # left idle
            # Two new origins at once: the idle one must make room before either connects.
            answers = await asyncio.gather(_post(client, two.url()), _post(client, three.url()))
            assert [a.status for a in answers] == [201, 201]
            await asyncio.sleep(0.05)  # the servers see the closed connection go
            still_open = [w for s in (one, two, three) for w in s.connections if not w.is_closing()]
            assert len(client._open) <= 2
        finally:
            await client.close()
        assert one.connections[0].transport.is_closing() or len(still_open) <= 2


async def test_a_second_answer_to_one_request_is_not_taken_for_the_next(
    server: RawServer,
) -> None:
    """A server that answers once, then in the same write starts another answer: the
    second request must not be answered by it (a 410 read as a 200 would lose a dead
    token)."""
    server.answer = lambda n: (
        OK + b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\nab"
        if n == 1
        else b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n"
    )
    first, second = await _two_posts(server)

    assert (first.status, first.headers["content-length"]) == (201, "0")
    assert second.status == 410
    assert len(set(server.peers)) == 2  # the first connection was not used again


@pytest.mark.parametrize(
    "headers",
    [{"Topic": "a\r\nX-Injected: 1"}, {"Topic": "a\nb"}, {"X\r\nY": "1"}, {"Topic": "a\0"}],
)
async def test_a_header_that_would_split_the_request_is_refused(
    server: RawServer, headers: dict[str, str]
) -> None:
    client = HttpClient(1)
    try:
        with pytest.raises(ValueError):
            await client.post(server.url(), headers, b"", 100)
        with pytest.raises(ValueError):
            # As the endpoint check builds it (encoded=True: sent as written).
            await client.post(
                URL(f"http://127.0.0.1:{server.port}/a b", encoded=True), {}, b"", 100
            )
    finally:
        await client.close()
    assert server.requests == []


async def test_a_refusing_resolver_means_no_connection(server: RawServer) -> None:
    async def refuse(host: str, port: int) -> list[str]:
        raise OSError("not this one")

    client = HttpClient(1, resolve=refuse)
    try:
        with pytest.raises(OSError, match="not this one"):
            await _post(client, server.url())
    finally:
        await client.close()
    assert server.requests == []


def test_it_runs_on_uvloop() -> None:
    """The node's event loop: uvloop's transports are not asyncio's classes."""

    async def run() -> list[int]:
        async with RawServer() as server:
            client = HttpClient(2)
            try:
                answers = await asyncio.gather(*(_post(client, server.url()) for _ in range(6)))
            finally:
                await client.close()
            return [a.status for a in answers]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(run()) == [201] * 6
