"""Uploads: POST /api/v1/messenger/uploads streams a file to storage; its `url` serves it.

The bytes go from the network to storage a chunk at a time, counted on the way: one
byte past MAX_UPLOAD_BYTES is a 413 and the partial object is deleted. The name is
cleaned of paths and control characters; the content type is read from the first bytes
(the client's word is never taken); an image of a kind not processed (HEIC, AVIF, TIFF,
PSD, ...) is a plain application/octet-stream file, since its metadata (GPS) could not
be removed. Downloads are always attachments with nosniff, so a stored HTML or SVG page
never runs in the node's origin. A user's unsent uploads and daily bytes are bounded
(upload_quota.py).
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import filetype
from PIL import Image
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from app.config import Settings
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.messenger.images import (
    ImageTooLarge,
    ImageUnprocessable,
    check_pixels,
    store_image,
    thumbnail_bytes,
    thumbnail_type,
    thumbnail_url,
)
from app.messenger.models import Message, Participant, Upload
from app.messenger.storage import ObjectMissing, Storage, content_disposition
from app.messenger.upload_form import UploadForm
from app.messenger.upload_quota import quota_exceeded, take_bytes, unsent_bytes
from app.openapi import schemas
from app.openapi.api import Empty, Raw, documented
from app.ratelimit import RateLimiter, too_many_requests
from app.web import RequestReader

log = logging.getLogger(__name__)

_uploads = Upload.__table__
_messages = Message.__table__
_participants = Participant.__table__

BASE = "/api/v1/messenger/uploads"
MAX_NAME = 200
# The first bytes kept for sniffing and for an image's header (a JPEG's EXIF comes first).
HEAD_BYTES = 256 * 1024
# What a multipart body may add around its file (boundaries, part headers) before its
# declared length alone makes it too large.
FORM_OVERHEAD = 16 * 1024
OCTET_STREAM = "application/octet-stream"
# Images whose width and height are read (and that a thumbnail can be made of).
IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
# Sniffed types processed as another: an animated PNG is a PNG (Pillow reads both).
_SAME_AS = {"image/apng": "image/png"}
_SEPARATORS = re.compile(r"[/\\]")
_DROPPED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def sanitise_name(raw: str) -> str:
    """A file name safe to store and to offer back: the last path segment, without
    control or format characters (NUL, bidi overrides), trimmed of dots and spaces at
    either end, at most MAX_NAME characters with its extension kept."""
    name = _SEPARATORS.split(unicodedata.normalize("NFC", raw))[-1]
    name = "".join(
        " " if c.isspace() else c
        for c in name
        if unicodedata.category(c) not in _DROPPED_CATEGORIES or c.isspace()
    )
    name = name.strip(" .")
    if len(name) > MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and len(ext) <= 16:
            name = stem[: MAX_NAME - len(ext) - 1].rstrip(" .") + "." + ext
        else:
            name = name[:MAX_NAME].rstrip(" .")
    return name or "file"


@dataclass(frozen=True, slots=True)
class Sniffed:
    content_type: str
    width: int | None = None
    height: int | None = None


def sniff(head: bytes, whole: bool) -> Sniffed:
    """The content type of a file from its first bytes (`whole`: they are all of it).
    Bytes that claim an image Pillow cannot read are a plain file; an image whose header
    goes on past the first bytes is left to images.py to read whole."""
    kind = filetype.guess(head) if head else None
    if kind is not None:
        mime: str = _SAME_AS.get(kind.mime, kind.mime)
        if mime not in IMAGE_TYPES:
            # An image not processed would keep its metadata and might be shown inline
            # by some viewer: a plain file, offered for download only.
            return Sniffed(OCTET_STREAM if mime.startswith("image/") else mime)
        try:
            with warnings.catch_warnings():
                # MAX_IMAGE_PIXELS is checked on the size; Pillow's error still stops
                # a canvas past its own hard limit.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(head)) as image:
                    width, height = image.size
        except Image.DecompressionBombError as exc:
            # A header claiming a canvas too large to decode: refused, not a plain file.
            raise ImageTooLarge(str(exc)) from None
        except Exception:  # any unreadable header: not the image it claims to be
            return Sniffed(OCTET_STREAM if whole else mime)
        return Sniffed(mime, width, height)
    if head and _is_text(head, whole):
        return Sniffed("text/plain")
    return Sniffed(OCTET_STREAM)


def _is_text(head: bytes, whole: bool) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A character cut in two at the end of what was kept is still text.
        if whole or exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return all(c in "\t\n\r\f" or unicodedata.category(c) != "Cc" for c in text)


async def may_download(conn: AsyncConnection, user_id: int, upload: Any) -> bool:
    """Whether this user may have the upload's bytes (or its thumbnail): its uploader
    may, and once it is sent, whoever sees its message in the history: a participant of
    that conversation who joined before the message (seq > joined_seq), while the
    message is not deleted. One query, for anyone but the uploader."""
    if upload.uploader_id == user_id:
        return True
    if upload.message_id is None:
        return False
    seen = await conn.scalar(
        select(_messages.c.id)
        .join(
            _participants,
            and_(
                _participants.c.conversation_id == _messages.c.conversation_id,
                _participants.c.user_id == user_id,
            ),
        )
        .where(
            _messages.c.id == upload.message_id,
            _messages.c.deleted_at.is_(None),
            _messages.c.seq > _participants.c.joined_seq,
        )
    )
    return seen is not None


def describe(upload: Any) -> dict[str, Any]:
    """An upload as the API shows it."""
    body: dict[str, Any] = {
        "id": upload.id,
        "name": upload.name,
        "content_type": upload.content_type,
        "size": upload.size,
        "url": f"{BASE}/{upload.id}/content",
    }
    if getattr(upload, "thumbnail_key", None) is not None:
        body["thumbnail_url"] = f"{BASE}/{upload.id}/thumbnail"
    if upload.width is not None:
        body["width"] = upload.width
        body["height"] = upload.height
    return body


ByteRange = tuple[int, int]  # start, end (exclusive)


def parse_range(header: str | None, size: int) -> ByteRange | Literal["unsatisfiable"] | None:
    """One `bytes=` range of RFC 9110 against a file of `size` bytes: (start, end),
    None to serve it all (no range, several, or one that does not parse), or
    "unsatisfiable"."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first + last).isdigit() or len(first) > 19 or len(last) > 19:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    end = size if not last else min(int(last) + 1, size)
    return start, end


class UploadRoutes:
    """POST /api/v1/messenger/uploads and GET /api/v1/messenger/uploads/{id}/content."""

    def __init__(
        self,
        engine: AsyncEngine,
        reader: RequestReader,
        storage: Storage,
        limiter: RateLimiter,
        settings: Settings,
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._storage = storage
        self._limiter = limiter
        self._settings = settings

    @property
    def routes(self) -> list[Route]:
        return [
            Route(BASE, self.upload, methods=["POST"]),
            Route(BASE + "/{upload_id}/content", self.content, methods=["GET"]),
            Route(BASE + "/{upload_id}/thumbnail", self.thumbnail, methods=["GET"]),
        ]

    @documented(
        "Upload a file to attach to a message",
        body=schemas.UploadForm,
        body_media_type="multipart/form-data",
        responses={201: schemas.Attachment, 413: "over MAX_UPLOAD_BYTES", 429: "too many uploads"},
        tags=["uploads"],
    )
    async def upload(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        limit = self._settings.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
            raise _too_large(limit)
        settings = self._settings
        retry_after = await self._limiter.hit(
            f"upload:{user_id}", settings.upload_rate_per_minute / 60, settings.upload_burst
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many uploads; try again later")
        quota = settings.upload_quota_bytes
        async with self._engine.connect() as conn:
            held = await unsent_bytes(conn, user_id)
        # The declared length holds the form around the file too: only what is surely
        # file counts here; the stream is cut at the exact byte below.
        if held + (max(0, int(declared) - FORM_OVERHEAD) if declared.isdigit() else 1) > quota:
            raise quota_exceeded(quota)
        if declared.isdigit():
            await self._take_bytes(user_id, int(declared))
        room = quota - held
        form = UploadForm(request)
        upload_id = str(uuid.uuid4())
        key = f"{upload_id[:2]}/{upload_id}"
        head = bytearray()
        thumbnail_key: str | None = None

        async def counted() -> AsyncIterator[bytes]:
            size = 0
            async for chunk in form.chunks():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                if size > room:
                    raise quota_exceeded(quota)
                if len(head) < HEAD_BYTES:
                    head.extend(chunk[: HEAD_BYTES - len(head)])
                yield chunk

        try:
            await form.open()
            size = await self._storage.put(key, counted())
            sniffed = sniff(bytes(head), whole=size <= len(head))
            row: dict[str, Any] = {
                "id": upload_id,
                "uploader_id": user_id,
                "name": sanitise_name(form.filename),
                "content_type": sniffed.content_type,
                "size": size,
                "storage_key": key,
                "created_at": utcnow(),
                "width": sniffed.width,
                "height": sniffed.height,
            }
            if sniffed.content_type in IMAGE_TYPES:
                image = await self._image(key, sniffed, upload_id)
                thumbnail_key = image.get("thumbnail_key")
                row.update(image)
            if not declared.isdigit():  # a chunked body: its bytes count now
                await self._take_bytes(user_id, size)
            async with self._engine.begin() as conn:
                # Uploads side by side each passed the check above alone.
                if await unsent_bytes(conn, user_id) + row["size"] > quota:
                    raise quota_exceeded(quota)
                await conn.execute(_uploads.insert().values(**row))
        except BaseException as exc:
            # Whatever stopped it (too large, malformed, the client gone, the database),
            # no object stays without its row.
            try:
                await self._storage.delete(key)
                if thumbnail_key is not None:
                    await self._storage.delete(thumbnail_key)
            except Exception:
                log.exception("upload not cleaned up id=%s user=%s", upload_id, user_id)
            if isinstance(exc, ClientDisconnect):
                raise ApiError(400, "client_disconnected", "the upload did not finish") from None
            if isinstance(exc, ImageTooLarge):
                log.info("image refused id=%s user=%s: %s", upload_id, user_id, exc)
                limit_px = self._settings.max_image_pixels
                raise ApiError(
                    422, "image_too_large", f"an image may have at most {limit_px} pixels"
                ) from None
            if isinstance(exc, ImageUnprocessable):
                log.warning("image refused id=%s user=%s: %s", upload_id, user_id, exc)
                raise ApiError(
                    422, "image_unprocessable", "this image could not be processed"
                ) from None
            raise
        log.info(
            "upload stored id=%s user=%s size=%s type=%s",
            upload_id,
            user_id,
            size,
            sniffed.content_type,
        )
        return JSONResponse(describe(_Row(row)), status_code=201)

    async def _take_bytes(self, user_id: int, size: int) -> None:
        """Take `size` bytes from the user's daily budget, or answer 429."""
        per_day = self._settings.upload_bytes_per_day
        retry_after = await take_bytes(self._limiter, user_id, size, per_day)
        if retry_after > 0:
            log.info("upload refused: daily bytes spent user=%s size=%s", user_id, size)
            raise too_many_requests(
                retry_after, f"you may upload at most {per_day} bytes a day; try again later"
            )

    async def _image(self, key: str, sniffed: Sniffed, upload_id: str) -> dict[str, Any]:
        """The row's columns for an image (images.py): its upright size, thumbnail and
        (when its metadata went) new size; a plain file's when its bytes do not decode.
        Raises ImageTooLarge for a canvas past MAX_IMAGE_PIXELS, before any decoding, and
        ImageUnprocessable for an image that decoded but could not be cleaned."""
        check_pixels(sniffed.width or 0, sniffed.height or 0, self._settings.max_image_pixels)
        stored = await store_image(
            self._storage, key, sniffed.content_type, self._settings, upload_id
        )
        if stored is None:
            return {"content_type": OCTET_STREAM, "width": None, "height": None}
        values: dict[str, Any] = {
            "width": stored.width,
            "height": stored.height,
            "animated": stored.animated,
            "thumbnail_key": stored.thumbnail_key,
            "thumbnail_width": stored.thumbnail_width,
            "thumbnail_height": stored.thumbnail_height,
        }
        if stored.size is not None:
            values["size"] = stored.size
        return values

    @documented(
        "An upload's bytes (participants of a conversation holding it, or its uploader)",
        responses={
            200: Raw("*/*", "the file, with its Content-Type and Content-Disposition"),
            206: Raw("*/*", "the range asked for"),
            302: Empty("to the object store's signed URL"),
            304: Empty("not modified"),
            403: "not yours to see",
            404: "no such upload",
            416: "the range is past the end",
        },
        tags=["uploads"],
    )
    async def content(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        upload_id: str = request.path_params["upload_id"]
        if not _UUID.fullmatch(upload_id):
            raise _not_found()
        async with self._engine.connect() as conn:
            upload = (
                await conn.execute(select(_uploads).where(_uploads.c.id == upload_id))
            ).first()
            if upload is None:
                raise _not_found()
            if not await may_download(conn, user_id, upload):
                raise forbidden()
        etag = f'"{upload.id}"'
        headers = {
            "Content-Disposition": content_disposition(upload.name),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Accept-Ranges": "bytes",
            "ETag": etag,
            # Kept, but asked again each time: whoever lost access is refused then.
            "Cache-Control": "private, no-cache",
        }
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        expires = self._settings.s3_presigned_url_seconds
        if expires:
            url = await self._storage.presigned_url(
                upload.storage_key, upload.name, upload.content_type, expires
            )
            if url is not None:
                return RedirectResponse(url, 302, headers={"Cache-Control": "no-store"})
        size: int = upload.size
        if_range = request.headers.get("if-range")
        wanted = None if if_range not in (None, etag) else request.headers.get("range")
        span = parse_range(wanted, size)
        if span == "unsatisfiable":
            # An error like any other (API.md): the error body, and the size to ask within.
            raise ApiError(
                416,
                "range_not_satisfiable",
                "the range starts past the end of the file",
                headers={"Content-Range": f"bytes */{size}"},
            )
        start, end = span if span is not None else (0, size)
        try:
            # No range asked: the whole object, asked without one (an empty file has no
            # byte range to ask S3 for).
            chunks = await self._storage.open(
                upload.storage_key, start, end if span is not None else None
            )
        except ObjectMissing:
            log.warning("upload bytes missing id=%s", upload.id)
            raise _not_found() from None
        headers["Content-Length"] = str(end - start)
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        media_type = upload.content_type
        if media_type == "text/plain":
            media_type += "; charset=utf-8"
        return StreamingResponse(
            chunks, status_code=206 if span else 200, headers=headers, media_type=media_type
        )

    @documented(
        "An image upload's thumbnail",
        responses={
            200: Raw("image/*", "the thumbnail"),
            302: Empty("to the object store's signed URL"),
            304: Empty("not modified"),
            403: "not yours to see",
            404: "no such upload, or it has no thumbnail",
        },
        tags=["uploads"],
    )
    async def thumbnail(self, request: Request) -> Response:
        """The thumbnail of an image, to whoever may have the image itself. Shown inline:
        the node encoded it, nothing of the uploaded bytes but pixels is in it."""
        user_id = await self._reader.user_id(request)
        upload_id: str = request.path_params["upload_id"]
        if not _UUID.fullmatch(upload_id):
            raise _not_found()
        async with self._engine.connect() as conn:
            upload = (
                await conn.execute(select(_uploads).where(_uploads.c.id == upload_id))
            ).first()
            if upload is None:
                raise _not_found()
            if not await may_download(conn, user_id, upload):
                raise forbidden()
        key: str | None = upload.thumbnail_key
        if key is None:
            raise ApiError(404, "thumbnail_not_found", "this upload has no thumbnail")
        etag = f'"{upload.id}-thumbnail"'
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(
                status_code=304, headers={"ETag": etag, "Cache-Control": "private, no-cache"}
            )
        media_type = thumbnail_type(key)
        stem = upload.name.rsplit(".", 1)[0] or "image"
        name = f"{stem}-thumbnail.{'png' if media_type == 'image/png' else 'jpg'}"
        expires = self._settings.s3_presigned_url_seconds
        if expires:
            url = await thumbnail_url(self._storage, key, name, expires)
            if url is not None:
                return RedirectResponse(url, 302, headers={"Cache-Control": "no-store"})
        data = await thumbnail_bytes(self._storage, key)
        if data is None:
            log.warning("thumbnail bytes missing id=%s", upload.id)
            raise ApiError(404, "thumbnail_not_found", "this upload has no thumbnail")
        headers = {
            "Content-Disposition": "inline" + content_disposition(name)[len("attachment") :],
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "ETag": etag,
            "Cache-Control": "private, no-cache",
        }
        return Response(data, headers=headers, media_type=media_type)


class _Row:
    """A dict read like a database row (describe takes either)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names this ETag (or is `*`)."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags or "*" in tags


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"a file may be at most {limit} bytes")


def forbidden() -> ApiError:
    return ApiError(403, "forbidden", "this file was not sent to you")


def _not_found() -> ApiError:
    return ApiError(404, "upload_not_found", "no such upload")
