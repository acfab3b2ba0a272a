"""Uploads: POST /api/v1/messenger/uploads streams a file to storage; its `url` serves it.

The bytes go from the network to storage a chunk at a time, counted on the way: one
byte past MAX_UPLOAD_BYTES is a 413 and the partial object is deleted. The name is
cleaned of paths and control characters; the content type is read from the first bytes
(the client's word is never taken). Downloads are always attachments with nosniff, so a
stored HTML or SVG page never runs in the node's origin.
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
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from app.config import Settings
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.messenger.models import Upload
from app.messenger.storage import ObjectMissing, Storage, content_disposition
from app.messenger.upload_form import UploadForm
from app.ratelimit import RateLimiter, too_many_requests
from app.web import RequestReader

log = logging.getLogger(__name__)

_uploads = Upload.__table__

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
    Bytes that claim an image Pillow cannot read are a plain file."""
    kind = filetype.guess(head) if head else None
    if kind is not None:
        mime: str = kind.mime
        if mime not in IMAGE_TYPES:
            return Sniffed(mime)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(head)) as image:
                    width, height = image.size
        except Exception:  # any unreadable header: not the image it claims to be
            return Sniffed(OCTET_STREAM)
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
    """Whether this user may have the upload's bytes: its uploader may."""
    return bool(upload.uploader_id == user_id)


def describe(upload: Any) -> dict[str, Any]:
    """An upload as the API shows it."""
    body: dict[str, Any] = {
        "id": upload.id,
        "name": upload.name,
        "content_type": upload.content_type,
        "size": upload.size,
        "url": f"{BASE}/{upload.id}/content",
    }
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
        ]

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
        form = UploadForm(request)
        upload_id = str(uuid.uuid4())
        key = f"{upload_id[:2]}/{upload_id}"
        head = bytearray()

        async def counted() -> AsyncIterator[bytes]:
            size = 0
            async for chunk in form.chunks():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                if len(head) < HEAD_BYTES:
                    head.extend(chunk[: HEAD_BYTES - len(head)])
                yield chunk

        try:
            await form.open()
            size = await self._storage.put(key, counted())
            sniffed = sniff(bytes(head), whole=size <= len(head))
            row = {
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
            async with self._engine.begin() as conn:
                await conn.execute(_uploads.insert().values(**row))
        except BaseException as exc:
            # Whatever stopped it (too large, malformed, the client gone, the database),
            # no object stays without its row.
            try:
                await self._storage.delete(key)
            except Exception:
                log.exception("upload not cleaned up id=%s user=%s", upload_id, user_id)
            if isinstance(exc, ClientDisconnect):
                raise ApiError(400, "client_disconnected", "the upload did not finish") from None
            raise
        log.info(
            "upload stored id=%s user=%s size=%s type=%s",
            upload_id,
            user_id,
            size,
            sniffed.content_type,
        )
        return JSONResponse(describe(_Row(row)), status_code=201)

    async def content(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        upload_id: str = request.path_params["upload_id"]
        if not _UUID.fullmatch(upload_id):
            raise _not_found()
        async with self._engine.connect() as conn:
            upload = (
                await conn.execute(select(_uploads).where(_uploads.c.id == upload_id))
            ).first()
            # Someone else's upload is as unknown as one that never was.
            if upload is None or not await may_download(conn, user_id, upload):
                raise _not_found()
        etag = f'"{upload.id}"'
        headers = {
            "Content-Disposition": content_disposition(upload.name),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Cache-Control": "private, max-age=86400",
        }
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
            return Response(
                status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"}
            )
        start, end = span if span is not None else (0, size)
        try:
            chunks = await self._storage.open(upload.storage_key, start, end)
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


class _Row:
    """A dict read like a database row (describe takes either)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"a file may be at most {limit} bytes")


def _not_found() -> ApiError:
    return ApiError(404, "upload_not_found", "no such upload")
