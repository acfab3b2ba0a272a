"""Helpers every route uses: the caller's identity, the JSON body, query numbers."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import InvalidToken, decode_access_token
from app.config import Settings
from app.errors import ApiError, describe_validation_error, error_body
from app.jsonutil import JSONResponse

M = TypeVar("M", bound=BaseModel)

# PostgreSQL text cannot hold NUL: refused at the edge, never a 500 (or a failed batch).
NUL_REFUSED = "text cannot contain the NUL character (\\u0000)"


def json_has_nul(raw: str | bytes | bytearray, data: Any) -> bool:
    """Whether a string anywhere in this JSON (its text, and what it parsed to) holds a
    NUL. JSON can only spell NUL as \\u0000, so the text is looked at first."""
    if isinstance(raw, str):
        return "\\u0000" in raw and _has_nul(data)
    return b"\\u0000" in raw and _has_nul(data)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class RequestReader:
    """Who is calling and what they sent: every route reads a request through this."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._limit = settings.max_body_bytes

    def user_id(self, request: Request) -> int:
        """The caller's user id, from the bearer token; 401 without a valid one."""
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise ApiError(401, "unauthorized", "missing bearer token")
        try:
            return decode_access_token(token, self._settings.signing_key)
        except InvalidToken:
            raise ApiError(401, "invalid_token", "the access token is invalid or expired") from None

    async def json(self, request: Request, model: type[M]) -> M:
        """Parse and validate the body; errors are 413, 400 or 422, never a 500."""
        limit = self._limit
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes")
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "malformed_json", "the body must be a JSON object")
        if json_has_nul(body, data):
            raise ApiError(422, "invalid_field", NUL_REFUSED)
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ApiError(422, "invalid_field", describe_validation_error(exc)) from None


def query_int(
    request: Request, name: str, *, minimum: int, maximum: int | None = None
) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "invalid_field", f"{name} must be an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ApiError(422, "invalid_field", f"{name} must be {bound}")
    return value


class RefuseNulInUrl:
    """ASGI middleware: a URL whose path or query holds a NUL gets a 422 before any
    route builds a query from it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope["query_string"]):
            response = JSONResponse(error_body("invalid_field", NUL_REFUSED), 422)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
