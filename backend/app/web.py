"""Helpers every route uses: the caller's identity, the JSON body, query numbers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
from pydantic import AfterValidator, AwareDatetime, BaseModel, ValidationError
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import AccessClaims, InvalidToken
from app.config import Settings
from app.errors import ApiError, describe_validation_error, error_body
from app.jsonutil import JSONResponse
from app.models import MAX_ID

if TYPE_CHECKING:
    from app.sessions import SessionStore

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
    # A loop, not recursion: orjson parses up to 1024 levels deep, past Python's stack.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None


# A time with a zone, as UTC; one whose UTC is outside years 1-9999 is a 422, not a 500.
UTCDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc)]


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class RequestReader:
    """Who is calling and what they sent: every route reads a request through this."""

    def __init__(self, settings: Settings, sessions: SessionStore) -> None:
        self._sessions = sessions
        self._limit = settings.max_body_bytes

    async def caller(self, request: Request) -> AccessClaims:
        """Who is calling (user and session), from the bearer token; 401 without a valid
        one, or once its session is revoked."""
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise ApiError(401, "unauthorized", "missing bearer token")
        try:
            return await self._sessions.verify(token)
        except InvalidToken:
            raise ApiError(
                401, "invalid_token", "the access token is invalid, expired or revoked"
            ) from None

    async def user_id(self, request: Request) -> int:
        """The caller's user id (see caller)."""
        return (await self.caller(request)).user_id

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


_INTEGER = re.compile(r"-?[0-9]{1,19}")


def query_int(request: Request, name: str, *, minimum: int, maximum: int = MAX_ID) -> int | None:
    """A whole number from the query, within bounds. Every number a query holds is
    compared with a 32-bit column: past it, asyncpg refuses the value and SQLite
    overflows (a 500), so the default maximum is the largest such value."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not _INTEGER.fullmatch(raw):
        raise ApiError(422, "invalid_field", f"{name} must be an integer")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise ApiError(422, "invalid_field", f"{name} must be between {minimum} and {maximum}")
    return value


class _PathInt(Convertor[int]):
    """`{name:int}` in a route, at most 18 digits: Starlette's own takes any number, and
    int() of over 4300 digits raises while the route is matched (a 500). A longer
    number matches no route (404); a route still checks the value against its column."""

    regex = "[0-9]{1,18}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


# Replaces Starlette's "int" before any route is built (routes are built by create_app).
register_url_convertor("int", _PathInt())


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
