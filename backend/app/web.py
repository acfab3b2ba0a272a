"""Helpers every route uses: the caller's identity, the JSON body, query numbers."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from app.auth import InvalidToken, decode_access_token
from app.errors import ApiError, describe_validation_error

M = TypeVar("M", bound=BaseModel)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def current_user_id(request: Request) -> int:
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise ApiError(401, "unauthorized", "missing bearer token")
    try:
        return decode_access_token(token, request.app.state.services.settings.signing_key)
    except InvalidToken:
        raise ApiError(401, "invalid_token", "the access token is invalid or expired") from None


async def read_json(request: Request, model: type[M]) -> M:
    """Parse and validate the body; errors are 413, 400 or 422, never a 500."""
    limit = request.app.state.services.settings.max_body_bytes
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
