"""Signed links to a message's thumbnail, for the image a push shows.

A phone's or browser's notification system fetches a push's image itself, without the
user's session. So the push carries a capability instead: a URL naming one upload and an
expiry, signed with the node's key, that serves that upload's thumbnail (never the
original) to whoever holds it, until it expires (app.messenger.push_images serves it).

The token is `<upload id>.<signature>.<expiry, unix seconds>`: an HMAC-SHA256 under a
key derived from the node's signing key for this purpose alone, so it can stand for
nothing else (an access token, an action token) and nothing else can stand for it. It
names no user: what it gives away is one thumbnail, to the devices it was pushed to.
Shaped like a refresh token (an id, then a long secret), it is redacted from every log
line (an access log's request path included) by the same rule (app.logs).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.messenger.models import Upload

PATH = "/api/v1/push-images"
TTL_SECONDS = 7 * 24 * 3600
# 128 bits of signature: forging one is out of reach, and the URL stays short.
_SIGNATURE_BYTES = 16
_PURPOSE = b"push-image-link"
_TOKEN = re.compile(
    r"(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"\.(?P<sig>[A-Za-z0-9_-]{22})\.(?P<exp>[0-9]{1,12})"
)
_CHUNK = 500  # ids per statement
_uploads = Upload.__table__


class InvalidImageToken(Exception):
    """Malformed, forged, signed with another key, or expired."""


@dataclass(frozen=True, slots=True)
class ImageClaims:
    upload_id: str
    expires_at: int  # unix seconds


def _derive(key: str) -> bytes:
    return hmac.new(key.encode(), _PURPOSE, hashlib.sha256).digest()


def _signature(derived: bytes, upload_id: str, expires_at: int) -> str:
    mac = hmac.new(derived, f"{upload_id}.{expires_at}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:_SIGNATURE_BYTES]).rstrip(b"=").decode()


def issue_image_token(key: str, upload_id: str, expires_at: int) -> str:
    return f"{upload_id}.{_signature(_derive(key), upload_id, expires_at)}.{expires_at}"


def decode_image_token(token: str, key: str, now: float | None = None) -> ImageClaims:
    """The upload and expiry a token names; InvalidImageToken unless it is well formed,
    signed with `key` for this purpose, and not yet expired."""
    found = _TOKEN.fullmatch(token)
    if found is None:
        raise InvalidImageToken("malformed")
    upload_id, expires_at = found["id"], int(found["exp"])
    expected = _signature(_derive(key), upload_id, expires_at)
    if not hmac.compare_digest(expected, found["sig"]):
        raise InvalidImageToken("bad signature")
    if expires_at <= (time.time() if now is None else now):
        raise InvalidImageToken("expired")
    return ImageClaims(upload_id, expires_at)


class ImageLinks:
    """Makes the signed thumbnail URLs of pushes: `{base_url}/api/v1/push-images/{token}`.

    The key is read when the first link is made (the settings' signing key may be made
    or read from disk on first use)."""

    def __init__(
        self, key: Callable[[], str], base_url: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key
        self._base_url = base_url.rstrip("/")
        self._clock = clock

    @cached_property
    def _derived(self) -> bytes:
        return _derive(self._key())

    def url(self, upload_id: str) -> str:
        expires_at = int(self._clock()) + TTL_SECONDS
        signature = _signature(self._derived, upload_id, expires_at)
        return f"{self._base_url}{PATH}/{upload_id}.{signature}.{expires_at}"


def is_image(attachment: Mapping[str, Any]) -> bool:
    """Whether an attachment is shown as an image: the node made a thumbnail of it. Its
    content type alone is not enough (a type not processed, or bytes that did not
    decode, is a plain file)."""
    return bool(attachment.get("thumbnail_url"))


def first_image(message: Mapping[str, Any]) -> str | None:
    """The upload id of a message's first attachment with a thumbnail, if it has one."""
    if message.get("deleted_at") is not None:
        return None
    for attachment in message.get("attachments") or ():
        if isinstance(attachment, Mapping) and is_image(attachment):
            upload_id = attachment.get("id")
            return upload_id if isinstance(upload_id, str) else None
    return None


async def push_images(
    conn: AsyncConnection, messages: Iterable[Mapping[str, Any]], links: ImageLinks
) -> dict[str, str]:
    """message id -> the signed URL of its first image's thumbnail, for the messages
    whose first image has one. One query for the whole batch (none when no message has
    an image), one signature per message whatever the number of devices pushed."""
    wanted: dict[str, str] = {}  # upload id -> message id
    for message in messages:
        upload_id = first_image(message)
        if upload_id is not None:
            wanted[upload_id] = str(message["id"])
    if not wanted:
        return {}
    ids = list(wanted)
    images: dict[str, str] = {}
    for i in range(0, len(ids), _CHUNK):
        rows = await conn.execute(
            select(_uploads.c.id, _uploads.c.message_id).where(
                _uploads.c.id.in_(ids[i : i + _CHUNK]), _uploads.c.thumbnail_key.is_not(None)
            )
        )
        for row in rows:
            # Only an upload sent with this very message: the link route serves no other.
            if row.message_id == wanted[row.id]:
                images[row.message_id] = links.url(row.id)
    return images
