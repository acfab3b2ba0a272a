"""What an incoming webhook's POST says: the text to post, from the bodies tools send.

Accepted, so that `curl -d ... URL` works without a header and Slack's clients work
unchanged:
- a JSON object with `content` (ours) or `text` (Slack's), whatever the Content-Type
  (curl -d sends JSON as application/x-www-form-urlencoded);
- a form with `payload=<that JSON>` (Slack's form encoding), or `content=` / `text=`;
- any other body whose Content-Type is text/plain or a form: the text itself
  (`curl -d "deploy done" URL`).
Errors: 413 past the size limit, 400 for a body that is not UTF-8 or a JSON that does
not parse, 415 for another Content-Type, 422 for a JSON without a text field.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request

from app.errors import ApiError
from app.web import NUL_REFUSED

_FORM = "application/x-www-form-urlencoded"
_FORM_FIELDS = ("payload", "content", "text")


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, 413 past `limit` bytes (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes")
    return bytes(body)


def _from_json(data: Any) -> str:
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    for field in ("content", "text"):
        value = data.get(field)
        if value is not None:
            if not isinstance(value, str):
                raise ApiError(422, "invalid_field", f"{field} must be a string")
            return value
    raise ApiError(422, "invalid_field", "content (or Slack's text) is required")


def _parse_json(raw: str) -> str:
    try:
        return _from_json(orjson.loads(raw))
    except orjson.JSONDecodeError:
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None


def webhook_text(content_type: str, body: bytes) -> str:
    """The text a webhook's body asks to post (see the module's note)."""
    media = content_type.partition(";")[0].strip().lower()
    try:
        raw = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_body", "the body is not UTF-8") from None
    if "\x00" in raw:
        raise ApiError(422, "invalid_field", NUL_REFUSED)
    stripped = raw.strip()
    if media == "application/json" or (media in ("", _FORM, "text/plain") and stripped[:1] == "{"):
        text = _parse_json(stripped)
    elif media == _FORM and stripped.partition("=")[0] in _FORM_FIELDS:
        fields = parse_qs(stripped, keep_blank_values=True)
        if "payload" in fields:
            text = _parse_json(fields["payload"][0])
        else:
            text = (fields.get("content") or fields.get("text") or [""])[0]
    elif media in ("", _FORM, "text/plain"):
        text = raw
    else:
        raise ApiError(415, "unsupported_media_type", "send JSON, a form, or text/plain")
    if "\x00" in text:
        raise ApiError(422, "invalid_field", NUL_REFUSED)
    return text
