"""Where uploaded files live: one small interface, a local folder or an S3-compatible store.

Bytes come in and go out as streams of chunks, never a whole file at once: a local put
writes each chunk as it comes (to a temporary name, renamed when complete), an S3 put
sends parts of PART_SIZE (a multipart upload once a file is larger than one part). A
put that fails, or whose stream raises (too large, client gone), leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from app.config import ROOT, Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
# S3's smallest part (but the last); what an S3 put holds in memory at most.
PART_SIZE = 5 * 1024 * 1024
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class ObjectMissing(LookupError):
    """No stored object has this key."""


def check_key(key: str) -> list[str]:
    """A key's segments; ValueError unless it is 1-4 segments of letters, digits, `_`
    and `-` joined by `/` (no dots, so no `..`, no absolute path, nothing to escape)."""
    segments = key.split("/")
    if not 1 <= len(segments) <= 4 or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise ValueError(f"not a storage key: {key!r}")
    return segments


def content_disposition(filename: str) -> str:
    """`attachment` with the name as RFC 6266 `filename*` (UTF-8), and an ASCII
    `filename` for clients that know no better."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class Storage(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Store the stream under `key`; the bytes written. Nothing stays if it raises."""
        ...

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes from `start` up to `end` (exclusive; None: to the end), as chunks.
        Raises ObjectMissing here, before the first chunk."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; no error if there is none."""
        ...

    async def presigned_url(
        self, key: str, filename: str, content_type: str, expires_seconds: int
    ) -> str | None:
        """A URL that serves the object without the node, for a while; None: not offered."""
        ...


class LocalStorage:
    """Files under one folder: key `ab/cdef` is `<root>/ab/cdef`."""

    def __init__(self, root: Path) -> None:
        self._root = root

    async def start(self) -> None:
        await asyncio.to_thread(self._root.mkdir, parents=True, exist_ok=True)

    async def stop(self) -> None:
        return None

    def path(self, key: str) -> Path:
        path = self._root.joinpath(*check_key(key))
        # check_key allows no way out; this holds even if the rules change.
        if not path.resolve().is_relative_to(self._root.resolve()):
            raise ValueError(f"not a storage key: {key!r}")
        return path

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        path = self.path(key)
        partial = path.with_name(f"{path.name}.{secrets.token_hex(4)}.part")
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        file = await asyncio.to_thread(partial.open, "xb")
        size = 0
        try:
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(file.write, chunk)
                    size += len(chunk)
            finally:
                await asyncio.to_thread(file.close)
            await asyncio.to_thread(os.replace, partial, path)
        except BaseException:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise
        return size

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        try:
            file = await asyncio.to_thread(self.path(key).open, "rb")
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        try:
            await asyncio.to_thread(file.seek, start)
        except BaseException:
            file.close()
            raise
        return _read_file(file, None if end is None else end - start)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, missing_ok=True)

    async def presigned_url(
        self, key: str, filename: str, content_type: str, expires_seconds: int
    ) -> str | None:
        return None


async def _read_file(file: IO[bytes], remaining: int | None) -> AsyncIterator[bytes]:
    try:
        while remaining is None or remaining > 0:
            size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
            chunk = await asyncio.to_thread(file.read, size)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    finally:
        await asyncio.to_thread(file.close)


class S3Storage:
    """Objects in one bucket of an S3-compatible store, through one client (one
    connection pool) opened at start."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._bucket = settings.s3_bucket
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None

    async def start(self) -> None:
        s = self._settings
        creator: Any = get_session().create_client(
            "s3",
            endpoint_url=s.s3_endpoint or None,
            region_name=s.s3_region,
            aws_access_key_id=s.s3_access_key or None,
            aws_secret_access_key=s.s3_secret_key or None,
            config=AioConfig(
                connect_timeout=10,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"} if s.s3_endpoint else None,
            ),
        )
        self._client = await self._stack.enter_async_context(creator)
        log.info("upload storage s3 bucket=%s endpoint=%s", self._bucket, s.s3_endpoint or "aws")

    async def stop(self) -> None:
        await self._stack.aclose()
        self._client = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3 storage is not started")
        return self._client

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        check_key(key)
        buffer = bytearray()
        iterator = aiter(chunks)
        async for chunk in iterator:
            buffer += chunk
            if len(buffer) > PART_SIZE:
                return await self._put_parts(key, buffer, iterator)
        await self.client.put_object(Bucket=self._bucket, Key=key, Body=bytes(buffer))
        return len(buffer)

    async def _put_parts(self, key: str, buffer: bytearray, rest: AsyncIterator[bytes]) -> int:
        client = self.client
        started = await client.create_multipart_upload(Bucket=self._bucket, Key=key)
        upload_id = started["UploadId"]
        parts: list[dict[str, Any]] = []
        size = 0

        async def send(data: bytes) -> None:
            number = len(parts) + 1
            answer = await client.upload_part(
                Bucket=self._bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
            parts.append({"ETag": answer["ETag"], "PartNumber": number})

        try:
            while True:
                while len(buffer) >= PART_SIZE:
                    await send(bytes(buffer[:PART_SIZE]))
                    size += PART_SIZE
                    del buffer[:PART_SIZE]
                chunk = await anext(rest, None)
                if chunk is None:
                    break
                buffer += chunk
            if buffer:
                await send(bytes(buffer))
                size += len(buffer)
            await client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
                )
            raise
        return size

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        check_key(key)
        extra: dict[str, Any] = {}
        if end is not None and end <= start:
            # No bytes asked: S3 has no range for that ("bytes=0--1" is refused), so
            # only whether the object is there is asked.
            try:
                await self.client.head_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise ObjectMissing(key) from None
                raise
            return _no_bytes()
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            answer = await self.client.get_object(Bucket=self._bucket, Key=key, **extra)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectMissing(key) from None
            raise
        return _read_body(answer["Body"])

    async def delete(self, key: str) -> None:
        check_key(key)
        await self.client.delete_object(Bucket=self._bucket, Key=key)

    async def presigned_url(
        self, key: str, filename: str, content_type: str, expires_seconds: int
    ) -> str | None:
        check_key(key)
        url: str = await self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self._bucket,
                "Key": key,
                "ResponseContentDisposition": content_disposition(filename),
                "ResponseContentType": content_type,
            },
            ExpiresIn=expires_seconds,
        )
        return url


async def _no_bytes() -> AsyncIterator[bytes]:
    return
    yield b""  # a generator that yields nothing


async def _read_body(body: Any) -> AsyncIterator[bytes]:
    try:
        while chunk := await body.read(READ_CHUNK):
            yield chunk
    finally:
        body.close()


def build_storage(settings: Settings) -> Storage:
    """S3 when a bucket is named, else the local folder (relative to the repository)."""
    if settings.s3_bucket:
        return S3Storage(settings)
    root = Path(settings.upload_dir)
    return LocalStorage(root if root.is_absolute() else ROOT / root)
