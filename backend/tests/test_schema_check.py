"""tests.schema_check: the hook that holds every answer the suite receives to the
OpenAPI document fails the call for an undocumented status or body, names what is
wrong, and leaves alone what it cannot judge."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx2
import pytest

from tests import schema_check
from tests.helpers import Client
from tests.schema_check import SchemaMismatch, check_response, session_check

BLOCKS = "http://127.0.0.1:1/api/v1/me/blocks"
JSON = {"content-type": "application/json"}
BLOCK = {"user_id": 7, "created_at": datetime.now(UTC).isoformat()}


def answer(status: int, url: str, method: str = "GET", **kwargs: Any) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request(method, url), **kwargs)


async def test_an_answer_the_document_allows_passes() -> None:
    await check_response(answer(200, BLOCKS, json={"blocks": [BLOCK]}))
    await check_response(answer(401, BLOCKS, json={"error": {"code": "x", "message": "y"}}))


async def test_an_undocumented_status_fails_naming_the_call() -> None:
    with pytest.raises(SchemaMismatch) as failed:
        await check_response(answer(409, BLOCKS, json={"error": {"code": "x", "message": "y"}}))
    message = str(failed.value)
    assert "GET /api/v1/me/blocks answered 409" in message
    assert "status 409 is not documented" in message


async def test_a_body_off_its_schema_fails_with_the_error_path() -> None:
    bad = {"blocks": [{**BLOCK, "created_at": "yesterday"}]}
    with pytest.raises(SchemaMismatch, match=r"at \['blocks', 0, 'created_at'\]: .*date-time"):
        await check_response(answer(200, BLOCKS, json=bad))
    # A field the document does not name is a mismatch too.
    extra = {"blocks": [{**BLOCK, "note": "hi"}]}
    with pytest.raises(SchemaMismatch, match="Additional properties"):
        await check_response(answer(200, BLOCKS, json=extra))
    with pytest.raises(SchemaMismatch, match="which is no JSON"):
        await check_response(answer(200, BLOCKS, content=b"{", headers=JSON))


async def test_an_unexpected_500_needs_only_the_error_body() -> None:
    error = {"error": {"code": "internal_error", "message": "internal server error"}}
    await check_response(answer(500, BLOCKS, json=error))
    with pytest.raises(SchemaMismatch, match=r"at \['error'\]"):
        await check_response(answer(500, BLOCKS, json={"error": "boom"}))


def test_templated_paths_find_their_operation() -> None:
    check = session_check()
    conversation = f"/api/v1/messenger/conversations/{uuid.uuid4()}"
    assert check.operation_key("GET", conversation) == (
        "GET /api/v1/messenger/conversations/{conversation_id}"
    )
    assert check.operation_key("PATCH", f"{conversation}/messages/{uuid.uuid4()}") == (
        "PATCH /api/v1/messenger/conversations/{conversation_id}/messages/{message_id}"
    )
    # A Web Push token holds '/': the route's path convertor takes it whole.
    token = '{"endpoint": "https://push.example/a/b"}'
    assert check.operation_key("DELETE", f"/api/v1/messenger/devices/{token}") == (
        "DELETE /api/v1/messenger/devices/{device_token}"
    )
    assert check.operation_key("GET", "/api/v1/users/12") == "GET /api/v1/users/{user_id}"
    # Excluded routes, paths of no route and methods a route does not take: unchecked.
    assert check.operation_key("GET", "/openapi.json") is None
    assert check.operation_key("GET", "/api/v1/nothing-here") is None
    assert check.operation_key("DELETE", "/api/v1/me") is None


class _Chunks(httpx2.AsyncByteStream):
    def __init__(self) -> None:
        self.read = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.read = True
        yield b"\x89PNG"


async def test_bodies_not_json_are_not_read() -> None:
    stream = _Chunks()
    path = f"http://127.0.0.1:1/api/v1/messenger/uploads/{uuid.uuid4()}/content"
    headers = {"content-type": "image/png"}
    await check_response(answer(200, path, headers=headers, stream=stream))
    assert not stream.read  # a download stays a stream for the test to read
    # Nor those of excluded routes or unknown paths, whatever they hold.
    await check_response(answer(200, "http://127.0.0.1:1/openapi.json", json={"x": 1}))
    await check_response(answer(404, "http://127.0.0.1:1/api/v1/nothing-here", json=[1]))


async def test_the_suites_clients_check_real_answers(client: Client) -> None:
    assert check_response in client.http.event_hooks["response"]
    user = await client.user()
    r = await client.http.get("/api/v1/me/blocks", headers=user.headers)
    assert r.status_code == 200 and r.json() == {"blocks": []}
    token = '{"endpoint": "https://push.example/x/y"}'
    path = f"/api/v1/messenger/devices/{quote(token, safe='')}"
    r = await client.http.delete(path, headers=user.headers)
    assert r.status_code == 404  # documented: the hook let it through
    assert schema_check.EVENT_HOOKS["response"] == [check_response]
