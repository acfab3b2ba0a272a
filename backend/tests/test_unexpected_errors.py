"""An error nobody expected: a 500 (or 1011) in the API's shape, one log line that names
the error and where it was raised, and never what the client sent: no traceback, no
exception message, no statement parameters."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

import pytest
import websockets
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.db import make_engine
from app.errors import describe_unexpected
from tests.helpers import Client, Node, Socket, make_settings, start_node
from tests.logcapture import Records, captured_logs

C = "/api/v1/messenger/conversations"


async def test_database_errors_hide_their_parameters(db_url: str) -> None:
    secret = f"secret-{secrets.token_hex(8)}"
    engine = make_engine(db_url)
    try:
        with pytest.raises(DBAPIError) as caught:
            async with engine.connect() as conn:
                await conn.execute(
                    text("SELECT x FROM no_such_table WHERE x = :text"), {"text": secret}
                )
    finally:
        await engine.dispose()
    assert "no_such_table" in str(caught.value)
    assert "parameters hidden" in str(caught.value)
    assert secret not in str(caught.value)


def _raise_chained(secret: str) -> None:
    try:
        raise OverflowError(f"value {secret} out of range")
    except OverflowError as exc:
        raise ValueError(f"bad {secret}") from exc


def test_describe_unexpected_names_types_and_place_not_message() -> None:
    secret = secrets.token_hex(8)
    try:
        _raise_chained(secret)
    except ValueError as exc:
        line = describe_unexpected(exc)
    assert secret not in line
    assert "\n" not in line
    assert line.startswith("error=ValueError<OverflowError where=")
    assert "test_unexpected_errors.py" in line and "_raise_chained" in line


class Boom(RuntimeError):
    pass


@pytest.fixture
async def own_node(sqlite_url: str) -> AsyncIterator[Node]:
    node = await start_node(make_settings(sqlite_url))
    yield node
    await node.stop()


def _one_quiet_line(logs: Records, secret: str, starts: str) -> str:
    errors = [r for r in logs.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    record = errors[0]
    line = record.getMessage()
    assert line.startswith(starts), line
    assert "error=Boom" in line and "where=" in line
    assert record.exc_info is None and "\n" not in line
    assert all(secret not in r.getMessage() for r in logs.records)
    return line


async def test_a_failing_route_answers_500_and_logs_one_line(
    own_node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client(own_node)
    try:
        a, b = await client.user(), await client.user()
        own = (await client.conversation(a, b))["id"]
        secret = secrets.token_hex(8)

        async def boom(*args: object) -> frozenset[int]:
            raise Boom(f"the client sent {secret}")

        monkeypatch.setattr(own_node.services.participants, "of_member", boom)
        with captured_logs() as logs:
            r = await client.http.get(f"{C}/{own}/messages", headers=a.headers)
        assert r.status_code == 500
        assert r.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
        line = _one_quiet_line(logs, secret, "request failed GET endpoint=")
        assert "list_messages" in line
        assert own not in line  # the path is not logged: a device token may be in one
    finally:
        await client.close()


async def test_a_failing_frame_answers_an_error_and_the_socket_stays(
    own_node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client(own_node)
    try:
        a, b = await client.user(), await client.user()
        own = (await client.conversation(a, b))["id"]
        secret = secrets.token_hex(8)
        sock = await Socket.connect(own_node, a)

        async def boom(*args: object) -> frozenset[int]:
            raise Boom(f"the client sent {secret}")

        monkeypatch.setattr(own_node.services.participants, "of_sender", boom)
        with captured_logs() as logs:
            await sock.send({"type": "typing", "conversation_id": own})
            error = await sock.expect("error")
            await sock.send({"type": "ping"})
            await sock.expect("pong")
        assert error["code"] == "internal_error"
        _one_quiet_line(logs, secret, "frame failed user=")
        await sock.close()
    finally:
        await client.close()


async def test_a_failing_handshake_closes_1011_and_logs_one_line(
    own_node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client(own_node)
    try:
        a = await client.user()
        secret = secrets.token_hex(8)

        async def boom(*args: object) -> bool:
            raise Boom(f"the client sent {secret}")

        monkeypatch.setattr(own_node.services.presence, "socket_opened", boom)
        with captured_logs() as logs:
            ws = await websockets.connect(f"{own_node.ws_url}?token={a.token}")
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 1011
        _one_quiet_line(logs, secret, "socket failed endpoint=SocketEndpoint")
    finally:
        await client.close()
