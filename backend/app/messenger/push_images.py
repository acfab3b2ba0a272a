"""GET /api/v1/push-images/{token}: a message's thumbnail, for the notification that
shows it, without a session.

The token (app.messenger.push.image_links) is the only credential: signed by a node,
naming one upload, not yet expired. It serves that upload's thumbnail, never its
original, and only while the message it was sent with stands (a deleted message's
thumbnail is gone for its links too). Every refusal, whatever its reason (a forged or
expired token, an unknown upload, no thumbnail, a deleted message), is the same 404,
so a token says nothing about what it names unless it is good.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import filetype
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.config import Settings
from app.errors import ApiError
from app.messenger.models import Message, Upload
from app.messenger.push.image_links import PATH, InvalidImageToken, decode_image_token
from app.messenger.storage import ObjectMissing, Storage
from app.openapi.api import Raw, documented

log = logging.getLogger(__name__)

_uploads = Upload.__table__
_messages = Message.__table__
# What a thumbnail may be served as: the type is read from its first bytes, and
# anything else stored under a thumbnail's key is not served at all.
THUMBNAIL_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
# Enough of the start of a file to tell these types apart.
_SNIFF_BYTES = 512


class PushImageRoutes:
    """GET /api/v1/push-images/{token}."""

    def __init__(self, engine: AsyncEngine, storage: Storage, settings: Settings) -> None:
        self._engine = engine
        self._storage = storage
        self._settings = settings

    @property
    def routes(self) -> list[Route]:
        return [Route(PATH + "/{token}", self.image, methods=["GET"])]

    @documented(
        "A pushed message's thumbnail, by the signed link in the push",
        responses={
            200: Raw("image/*", "the thumbnail"),
            404: "no such image, or the link is bad or expired",
        },
        tags=["uploads"],
        auth=False,
    )
    async def image(self, request: Request) -> Response:
        token: str = request.path_params["token"]
        try:
            claims = decode_image_token(token, self._settings.signing_key)
        except InvalidImageToken as exc:
            # The token is a credential: its reason is logged, never the token.
            log.debug("push image refused reason=%s", exc)
            raise _not_found() from None
        async with self._engine.connect() as conn:
            thumbnail_key = await conn.scalar(
                select(_uploads.c.thumbnail_key)
                .join(_messages, _messages.c.id == _uploads.c.message_id)
                .where(_uploads.c.id == claims.upload_id, _messages.c.deleted_at.is_(None))
            )
        if thumbnail_key is None:
            raise _not_found()
        try:
            chunks = await self._storage.open(thumbnail_key)
        except ObjectMissing:
            log.warning("push image thumbnail missing upload=%s", claims.upload_id)
            raise _not_found() from None
        try:
            head = await _read_head(chunks)
        except BaseException:
            await _close(chunks)
            raise
        kind = filetype.guess(head) if head else None
        if kind is None or kind.mime not in THUMBNAIL_TYPES:
            await _close(chunks)
            log.warning("push image thumbnail not an image upload=%s", claims.upload_id)
            raise _not_found()
        # Cached by the device for as long as the link holds, and by nothing shared.
        max_age = max(0, claims.expires_at - int(time.time()))
        headers = {
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": f"private, max-age={max_age}, immutable",
            "Referrer-Policy": "no-referrer",
        }
        return StreamingResponse(_then(head, chunks), headers=headers, media_type=kind.mime)


async def _read_head(chunks: AsyncIterator[bytes]) -> bytes:
    """At least _SNIFF_BYTES of the stream's start (all of it if shorter)."""
    head = b""
    async for chunk in chunks:
        head += chunk
        if len(head) >= _SNIFF_BYTES:
            break
    return head


async def _close(chunks: AsyncIterator[bytes]) -> None:
    # A stream left unread holds its file (or its S3 response) until closed.
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


async def _then(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield head
    async for chunk in rest:
        yield chunk


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "no such image")
