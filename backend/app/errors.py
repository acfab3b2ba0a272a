"""One error shape for every failure: {"error": {"code", "message"}}."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import database_unavailable
from app.jsonutil import JSONResponse

log = logging.getLogger(__name__)
_APP_DIR = str(Path(__file__).resolve().parent)
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN = 1013

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
    429: "rate_limited",
}


class ApiError(Exception):
    """An error the client caused (or may retry), answered in the API's error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line human description of the first few problems pydantic found."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(error_body(exc.code, exc.message), exc.status, headers=exc.headers)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)


def describe_unexpected(exc: BaseException) -> str:
    """An error nobody expected, as log fields on one line: its type (and the types it
    was raised from) and where in the app it was raised. Never its message or a
    traceback's text: a driver's message quotes the value it refused, and that value
    came from a client."""
    kinds: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(kinds) < 4:
        kinds.append(type(cause).__qualname__)
        cause = cause.__cause__ or cause.__context__
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(_APP_DIR)][-3:]
    where = " < ".join(
        f"app{f.filename[len(_APP_DIR) :]}:{f.lineno}:{f.name}" for f in reversed(ours)
    )
    if frames and (not ours or frames[-1] is not ours[-1]):
        last = frames[-1]
        where = f"{Path(last.filename).name}:{last.lineno}:{last.name}" + (
            f" < {where}" if where else ""
        )
    return f"error={'<'.join(kinds)} where={where or '-'}"


class AnswerUnexpected:
    """ASGI middleware: an exception no route handled answers 500 in the API's shape and
    is logged on one line (describe_unexpected), instead of the server's traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = False  # the response, or the socket's handshake answer

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            what = "request failed " + scope["method"] if "method" in scope else "socket failed"
            # The database down or too slow is no bug: worth a retry, and no ERROR line.
            busy = database_unavailable(exc)
            level = logging.WARNING if busy else logging.ERROR
            log.log(level, "%s %s %s", what, _endpoint(scope), describe_unexpected(exc))
            try:
                await _answer_unexpected(scope, receive, send, started, busy)
            except Exception:  # the client is gone
                pass


async def _answer_unexpected(
    scope: Scope, receive: Receive, send: Send, started: bool, busy: bool
) -> None:
    if scope["type"] == "http":
        if not started:
            if busy:
                answer = JSONResponse(
                    error_body("unavailable", "the database is not answering; try again"),
                    503,
                    headers={"Retry-After": "1"},
                )
            else:
                answer = JSONResponse(error_body("internal_error", "internal server error"), 500)
            await answer(scope, receive, send)
        return
    # A socket closes with 1011 (internal error), or 1013 (try again later) when the
    # database is away; accepted first if need be: a close before the handshake would
    # read as 403, a refusal the client should not retry.
    if not started:
        await send({"type": "websocket.accept"})
    await send(
        {"type": "websocket.close", "code": CLOSE_TRY_AGAIN if busy else CLOSE_INTERNAL_ERROR}
    )


def _endpoint(scope: Scope) -> str:
    """The route that took the request, by name: the path itself may hold a token."""
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return "endpoint=-"
    return f"endpoint={getattr(endpoint, '__qualname__', None) or type(endpoint).__name__}"


EXCEPTION_HANDLERS = {
    ApiError: api_error_handler,
    HTTPException: http_error_handler,
}
