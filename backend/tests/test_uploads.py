"""Uploads and downloads on both databases and both stores: a local folder, and an S3
server (moto's server mode on a free port, the same protocol any S3 store speaks)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from PIL import Image
from sqlalchemy import func, select

from app.messenger.models import Upload
from app.messenger.storage import LocalStorage, S3Storage, check_key
from app.messenger.uploads import parse_range, sanitise_name
from tests.helpers import Client, Node, User, eventually, make_settings, start_node

UPLOADS = "/api/v1/messenger/uploads"
LIMIT = 9 * 1024 * 1024
MiB = 1024 * 1024
OPEN = {"upload_rate_per_minute": 100_000, "upload_burst": 100_000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
async def moto() -> AsyncIterator[str | None]:
    """moto's S3 server on 127.0.0.1, started for this run: its endpoint, or None
    (tests of the S3 store then skip, saying why) when it cannot start."""
    global MOTO_PROBLEM
    program = Path(sys.executable).with_name("moto_server")
    if not program.exists():
        MOTO_PROBLEM = "moto_server is not installed (pip install 'moto[server]')"
        yield None
        return
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(program),
        "-H",
        "127.0.0.1",
        "-p",
        str(port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"

    async def answers() -> bool:
        if process.returncode is not None:
            return True
        try:
            async with httpx2.AsyncClient() as http:
                await http.get(endpoint + "/moto-api/", timeout=1)
        except httpx2.TransportError:
            return False
        return True

    try:
        try:
            await eventually(answers, within=30, what="moto's S3 server")
        except AssertionError:
            MOTO_PROBLEM = "moto_server did not answer within 30 s"
        if process.returncode is not None:
            MOTO_PROBLEM = f"moto_server could not start (exit code {process.returncode})"
        yield endpoint if MOTO_PROBLEM is None else None
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 10)


MOTO_PROBLEM: str | None = None


@pytest.fixture
def s3_endpoint(moto: str | None) -> str:
    if moto is None:
        pytest.skip(f"no S3 server: {MOTO_PROBLEM}")
    return moto


@dataclass
class World:
    node: Node
    client: Client
    store: str

    @property
    def storage(self) -> Any:
        return self.node.services.storage

    async def keys(self) -> set[str]:
        """Every object in the store, finished or not (a .part file, a multipart upload)."""
        storage = self.storage
        if isinstance(storage, LocalStorage):
            root = storage.path("x").parent
            return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        assert isinstance(storage, S3Storage)
        bucket = self.node.services.settings.s3_bucket
        listed = await storage.client.list_objects_v2(Bucket=bucket)
        pending = await storage.client.list_multipart_uploads(Bucket=bucket)
        return {o["Key"] for o in listed.get("Contents", [])} | {
            "multipart:" + u["Key"] for u in pending.get("Uploads", [])
        }

    async def rows(self, user: User) -> int:
        async with self.node.services.engine.connect() as conn:
            count = await conn.scalar(
                select(func.count()).select_from(Upload).where(Upload.uploader_id == user.id)
            )
        return int(count or 0)


async def start_world(
    db_url: str, store: str, tmp: Path, s3_endpoint: str | None, **overrides: Any
) -> World:
    settings: dict[str, Any] = {"upload_dir": str(tmp), "max_upload_bytes": LIMIT, **OPEN}
    bucket = f"uploads-{secrets.token_hex(4)}"
    if store == "s3":
        settings.update(
            s3_endpoint=s3_endpoint,
            s3_bucket=bucket,
            s3_access_key="test",
            s3_secret_key="test",
            s3_region="us-east-1",
        )
    settings.update(overrides)
    node = await start_node(make_settings(db_url, **settings))
    if store == "s3":
        await node.services.storage.client.create_bucket(Bucket=bucket)
    return World(node, Client(node), store)


@pytest.fixture(scope="module", params=["local", "s3"])
async def world(
    request: pytest.FixtureRequest,
    db_url: str,
    moto: str | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[World]:
    if request.param == "s3" and moto is None:
        pytest.skip(f"no S3 server: {MOTO_PROBLEM}")
    w = await start_world(db_url, request.param, tmp_path_factory.mktemp("uploads"), moto)
    yield w
    await w.client.close()
    await w.node.stop()


def form(
    data: bytes,
    filename: str | bytes = "file.bin",
    content_type: str = "application/octet-stream",
    field: str = "file",
) -> tuple[bytes, dict[str, str]]:
    """A multipart body written out by hand, so a test controls every byte of it."""
    boundary = secrets.token_hex(16)
    name = filename.encode() if isinstance(filename, str) else filename
    head = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
        + f"--{boundary}\r\n".encode()
        + f'Content-Disposition: form-data; name="{field}"; filename="'.encode()
        + name
        + b'"\r\n'
        + f"Content-Type: {content_type}\r\n\r\n".encode()
    )
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def upload(w: World, user: User, data: bytes, **kw: Any) -> httpx2.Response:
    body, headers = form(data, **kw)
    return await w.client.http.post(UPLOADS, content=body, headers={**headers, **user.headers})


async def uploaded(w: World, user: User, data: bytes, **kw: Any) -> dict[str, Any]:
    r = await upload(w, user, data, **kw)
    assert r.status_code == 201, r.text
    return dict(r.json())


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


async def test_bytes_come_back_exactly(world: World) -> None:
    user = await world.client.user()
    data = os.urandom(300_000)
    body = await uploaded(world, user, data, filename="report.bin")
    assert body["name"] == "report.bin"
    assert body["size"] == len(data)
    assert body["content_type"] == "application/octet-stream"
    assert body["url"] == f"{UPLOADS}/{body['id']}/content"
    assert "width" not in body
    r = await world.client.http.get(body["url"], headers=user.headers)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"report.bin\"; filename*=UTF-8''report.bin"
    )
    assert r.headers["accept-ranges"] == "bytes"
    head = await world.client.http.head(body["url"], headers=user.headers)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len(data))
    assert await world.rows(user) == 1


async def test_a_large_file_is_streamed_through_in_chunks(world: World) -> None:
    user = await world.client.user()
    data = os.urandom(8 * MiB)
    storage = world.storage
    original = storage.put
    seen: list[int] = []

    async def recording_put(key: str, chunks: AsyncIterable[bytes]) -> int:
        async def recorded() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                seen.append(len(chunk))
                yield chunk

        return int(await original(key, recorded()))

    storage.put = recording_put
    try:
        body = await uploaded(world, user, data)
    finally:
        del storage.put
    # The file reached storage as the network delivered it, never as one piece.
    assert sum(seen) == len(data)
    assert len(seen) >= 16
    assert max(seen) <= MiB
    digest = hashlib.sha256()
    async with world.client.http.stream("GET", body["url"], headers=user.headers) as r:
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(data))
        async for chunk in r.aiter_bytes():
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(data).digest()


async def test_one_byte_past_the_limit_is_413_and_leaves_nothing(world: World) -> None:
    user = await world.client.user()
    before = await world.keys()
    r = await upload(world, user, b"x" * (LIMIT + 1))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert await world.keys() == before
    assert await world.rows(user) == 0


async def test_a_declared_length_past_the_limit_is_refused_before_the_body(world: World) -> None:
    user = await world.client.user()
    host, port = world.node.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            (
                f"POST {UPLOADS} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {user.token}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {LIMIT * 4}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        # No body was sent: the answer can only come from the declared length.
        status = await asyncio.wait_for(reader.readline(), 10)
        assert status.split()[1] == b"413"
    finally:
        writer.close()
    assert await world.rows(user) == 0


async def test_content_type_comes_from_the_bytes(world: World) -> None:
    user = await world.client.user()
    image = await uploaded(world, user, png(3, 2), filename="notes.txt", content_type="text/plain")
    assert image["content_type"] == "image/png"
    assert (image["width"], image["height"]) == (3, 2)
    r = await world.client.http.get(image["url"], headers=user.headers)
    assert r.headers["content-type"] == "image/png"

    page = b"<!doctype html><html><script>alert(document.cookie)</script></html>"
    html = await uploaded(world, user, page, filename="page.html", content_type="text/html")
    assert html["content_type"] == "text/plain"
    r = await world.client.http.get(html["url"], headers=user.headers)
    assert r.content == page
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["content-disposition"].startswith("attachment;")
    assert r.headers["x-content-type-options"] == "nosniff"

    # PNG's signature and then nothing an image decoder can read: a plain file.
    fake = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)
    claimed = await uploaded(world, user, fake, filename="cat.png", content_type="image/png")
    assert claimed["content_type"] == "application/octet-stream"
    assert "width" not in claimed


async def test_names_are_cleaned(world: World) -> None:
    user = await world.client.user()
    cases: list[tuple[str | bytes, str]] = [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        (b"a\x00b.txt", "ab.txt"),
        ("\u202etxt.exe", "txt.exe"),
        ("..", "file"),
        ("r\u00e9sum\u00e9 2026.pdf", "r\u00e9sum\u00e9 2026.pdf"),
    ]
    for raw, expected in cases:
        body = await uploaded(world, user, b"data", filename=raw)
        assert body["name"] == expected, raw
    long = await uploaded(world, user, b"data", filename="x" * 1000 + ".txt")
    assert len(long["name"]) == 200
    assert long["name"].endswith("xx.txt")
    accented = await uploaded(world, user, b"data", filename="r\u00e9sum\u00e9.pdf")
    r = await world.client.http.get(accented["url"], headers=user.headers)
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
    )


async def test_byte_ranges(world: World) -> None:
    user = await world.client.user()
    data = os.urandom(1000)
    url = (await uploaded(world, user, data))["url"]

    async def get(spec: str, **headers: str) -> httpx2.Response:
        return await world.client.http.get(url, headers={**user.headers, "Range": spec, **headers})

    r = await get("bytes=0-9")
    assert r.status_code == 206
    assert r.content == data[:10]
    assert r.headers["content-range"] == "bytes 0-9/1000"
    assert r.headers["content-length"] == "10"
    r = await get("bytes=-100")
    assert (r.status_code, r.content) == (206, data[-100:])
    assert r.headers["content-range"] == "bytes 900-999/1000"
    r = await get("bytes=990-")
    assert (r.status_code, r.content) == (206, data[990:])
    r = await get("bytes=500-5000")
    assert (r.status_code, r.content) == (206, data[500:])
    r = await get("bytes=1000-")
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */1000"
    # Not one range we serve: the whole file.
    for spec in ("bytes=9-1", "bytes=0-1,5-6", "items=0-1", "bytes=x-y"):
        r = await get(spec)
        assert (r.status_code, r.content) == (200, data), spec
    # A range of another version of the file is not applied to this one.
    r = await get("bytes=0-9", **{"If-Range": '"something-else"'})
    assert (r.status_code, r.content) == (200, data)


async def test_only_the_uploader_gets_the_bytes(world: World) -> None:
    owner, other = await world.client.user(), await world.client.user()
    body = await uploaded(world, owner, b"private")
    # Not sent with any message: no one else's (test_attachments has who may once it is).
    r = await world.client.http.get(body["url"], headers=other.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    unknown = await world.client.http.get(
        f"{UPLOADS}/{'0' * 8}-0000-0000-0000-{'0' * 12}/content", headers=other.headers
    )
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "upload_not_found")
    r = await world.client.http.get(f"{UPLOADS}/..%2F..%2Fetc/content", headers=owner.headers)
    assert r.status_code == 404
    assert (await world.client.http.get(body["url"])).status_code == 401
    body_bytes, headers = form(b"data")
    r = await world.client.http.post(UPLOADS, content=body_bytes, headers=headers)
    assert r.status_code == 401


async def test_a_body_without_a_file_is_400(world: World) -> None:
    user = await world.client.user()
    r = await world.client.http.post(UPLOADS, json={"file": "x"}, headers=user.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_body")
    r = await upload(world, user, b"data", field="attachment")
    assert r.status_code == 400
    # A `file` field that is not a file (no filename).
    boundary = "b0undary"
    raw = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"\r\n\r\nvalue\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    r = await world.client.http.post(
        UPLOADS,
        content=raw,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **user.headers},
    )
    assert r.status_code == 400
    # A body cut off inside the file.
    body, headers = form(b"data" * 100)
    r = await world.client.http.post(
        UPLOADS, content=body[:-60], headers={**headers, **user.headers}
    )
    assert r.status_code == 400
    assert await world.rows(user) == 0


async def test_uploads_are_rate_limited_per_user(sqlite_url: str, tmp_path: Path) -> None:
    w = await start_world(
        sqlite_url, "local", tmp_path, None, upload_rate_per_minute=1, upload_burst=2
    )
    try:
        a, b = await w.client.user(), await w.client.user()
        for _ in range(2):
            await uploaded(w, a, b"data")
        r = await upload(w, a, b"data")
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        await uploaded(w, b, b"data")
    finally:
        await w.client.close()
        await w.node.stop()


async def test_s3_downloads_may_redirect_to_a_presigned_url(
    sqlite_url: str, tmp_path: Path, s3_endpoint: str
) -> None:
    w = await start_world(sqlite_url, "s3", tmp_path, s3_endpoint, s3_presigned_url_seconds=60)
    try:
        user, other = await w.client.user(), await w.client.user()
        data = os.urandom(5000)
        body = await uploaded(w, user, data, filename="photo data.bin")
        assert (await w.client.http.get(body["url"], headers=other.headers)).status_code == 403
        r = await w.client.http.get(body["url"], headers=user.headers)
        assert r.status_code == 302
        location = r.headers["location"]
        assert location.startswith(s3_endpoint)
        async with httpx2.AsyncClient() as http:
            fetched = await http.get(location)
        assert fetched.status_code == 200
        assert fetched.content == data
        assert "photo%20data.bin" in fetched.headers["content-disposition"]
    finally:
        await w.client.close()
        await w.node.stop()


def test_keys_cannot_leave_the_folder(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert storage.path("ab/abcdef").parent == tmp_path / "ab"
    for key in ("../x", "/etc/passwd", "ab/../../x", "", "a//b", ".hidden", "a/b/c/d/e"):
        with pytest.raises(ValueError):
            check_key(key)


def test_parse_range() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-0", 10) == (0, 1)
    assert parse_range("bytes=-20", 10) == (0, 10)
    assert parse_range("bytes=-0", 10) == "unsatisfiable"
    assert parse_range("bytes=0-", 0) == "unsatisfiable"
    assert parse_range("bytes=" + "9" * 30 + "-", 10) is None


def test_sanitise_name_keeps_the_extension_of_a_long_name() -> None:
    assert sanitise_name("a" * 300 + ".tar.gz") == "a" * 197 + ".gz"
    assert sanitise_name(" \t name.txt. ") == "name.txt"


async def test_an_empty_file_comes_back_empty(world: World) -> None:
    user = await world.client.user()
    body = await uploaded(world, user, b"", filename="empty.txt")
    assert body["size"] == 0
    ranges: list[str | None] = []

    def note(params: dict[str, Any], **_: Any) -> None:
        ranges.append(params.get("Range"))

    events = world.storage.client.meta.events if world.store == "s3" else None
    if events is not None:
        events.register("provide-client-params.s3.GetObject", note)
    try:
        r = await world.client.http.get(body["url"], headers=user.headers)
    finally:
        if events is not None:
            events.unregister("provide-client-params.s3.GetObject", note)
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")
    # No range was asked, so none is asked of S3 ("bytes=0--1" is no range; stores
    # other than this test's refuse it).
    assert ranges == ([None] if world.store == "s3" else [])


async def test_downloads_are_revalidated_on_each_use(world: World) -> None:
    owner, stranger = await world.client.user(), await world.client.user()
    body = await uploaded(world, owner, b"private notes")
    r = await world.client.http.get(body["url"], headers=owner.headers)
    # A browser keeps the bytes but asks each time: one who lost access is refused.
    assert r.headers["cache-control"] == "private, no-cache"
    etag = r.headers["etag"]
    again = await world.client.http.get(
        body["url"], headers={**owner.headers, "If-None-Match": etag}
    )
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    refused = await world.client.http.get(
        body["url"], headers={**stranger.headers, "If-None-Match": etag}
    )
    assert refused.status_code == 403


async def declared_only(w: World, user: User, length: int) -> bytes:
    """The status line of the answer to an upload that declares `length` bytes and sends
    none of them."""
    host, port = w.node.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            (
                f"POST {UPLOADS} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {user.token}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {length}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def test_unsent_uploads_are_held_to_a_quota(sqlite_url: str, tmp_path: Path) -> None:
    w = await start_world(sqlite_url, "local", tmp_path, None, upload_quota_bytes=100_000)
    try:
        a, b = await w.client.user(), await w.client.user()
        first = await uploaded(w, a, os.urandom(60_000))
        # Past the quota once streamed: refused, nothing kept.
        r = await upload(w, a, os.urandom(60_000))
        assert (r.status_code, r.json()["error"]["code"]) == (413, "upload_quota_exceeded")
        assert await w.rows(a) == 1
        # Past it by its declared length alone: refused before any of the body is read.
        assert (await declared_only(w, a, 200_000)).split()[1] == b"413"
        # Another user has a quota of their own.
        await uploaded(w, b, os.urandom(60_000))
        # Sent with a message, an upload no longer counts.
        conv = await w.client.conversation(a, b)
        sent = await w.client.http.post(
            f"/api/v1/messenger/conversations/{conv['id']}/messages",
            json={"content": "", "attachments": [first["id"]]},
            headers=a.headers,
        )
        assert sent.status_code == 201, sent.text
        await uploaded(w, a, os.urandom(60_000))
    finally:
        await w.client.close()
        await w.node.stop()


async def test_uploaded_bytes_are_limited_per_day(sqlite_url: str, tmp_path: Path) -> None:
    w = await start_world(sqlite_url, "local", tmp_path, None, upload_bytes_per_day=300_000)
    try:
        a, b = await w.client.user(), await w.client.user()
        for _ in range(2):
            await uploaded(w, a, os.urandom(100_000))
        r = await upload(w, a, os.urandom(100_000))
        assert (r.status_code, r.json()["error"]["code"]) == (429, "rate_limited")
        # A day's budget refills in a day: a third of it takes about eight hours.
        assert 3600 < int(r.headers["retry-after"]) <= 86400
        assert await w.rows(a) == 2
        await uploaded(w, b, os.urandom(100_000))
    finally:
        await w.client.close()
        await w.node.stop()


def test_presigned_urls_live_an_hour_at_most() -> None:
    assert make_settings("sqlite+aiosqlite:///x.db", s3_presigned_url_seconds=3600)
    with pytest.raises(ValueError, match="s3_presigned_url_seconds"):
        make_settings("sqlite+aiosqlite:///x.db", s3_presigned_url_seconds=3601)
