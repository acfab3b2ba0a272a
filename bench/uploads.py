"""The `uploads` scenario: file upload and download throughput, and the memory an upload
holds, on the local store and on an S3 server.

For each store (a temporary folder; moto's S3 server, started here on a free port, the
same protocol as any S3 store) one node is started with that store. One user uploads a
20 MB file of random bytes (POST /api/v1/messenger/uploads, multipart, streamed from the
driver in 64 KiB chunks) and downloads it again (its `url`), a few times one after the
other; each is timed from request to complete answer, as MB/s (10^6 bytes per second).
Before those, on the fresh node, a 100 MB file is uploaded while the node's resident
memory is sampled every 5 ms from /proc: its growth over what it held before is what
one upload costs, and should be flat (a chunk; with S3 a 5 MiB part and the client's
copies of it), not the file's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bench.procstat import rss_bytes

if TYPE_CHECKING:
    from bench.runner import Bench, Node

UPLOADS = "/api/v1/messenger/uploads"
MB = 1_000_000
MiB = 1024 * 1024
CHUNK = 64 * 1024
THROUGHPUT_BYTES = 20 * MB
MEMORY_BYTES = 100 * MB
TIMEOUT = aiohttp.ClientTimeout(total=600)


async def run(bench: Bench, quick: bool) -> dict[str, Any]:
    rounds = 2 if quick else 5
    data = os.urandom(THROUGHPUT_BYTES)
    results: dict[str, Any] = {"file_mb": THROUGHPUT_BYTES / MB, "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="bench-uploads-") as folder:
        results["local"] = await _one_store(bench, {"upload_dir": folder}, data, rounds)
    async with _moto(bench) as endpoint:
        bucket = f"bench-{secrets.token_hex(4)}"
        assert bench.http is not None
        # moto makes a bucket on a plain PUT (it checks no signature).
        async with bench.http.put(f"{endpoint}/{bucket}") as r:
            if r.status != 200:
                raise RuntimeError(f"moto: bucket not made: {r.status} {await r.text()}")
        s3 = {
            "s3_endpoint": endpoint,
            "s3_bucket": bucket,
            "s3_access_key": "bench",
            "s3_secret_key": "bench",
            "s3_region": "us-east-1",
        }
        results["s3"] = await _one_store(bench, s3, data, rounds)
    return results


async def _one_store(
    bench: Bench, store: dict[str, str], data: bytes, rounds: int
) -> dict[str, Any]:
    from bench.runner import Node

    assert bench.http is not None
    env = bench.node_env()
    extra = {
        **store,
        "max_upload_bytes": MEMORY_BYTES + MiB,
        "upload_rate_per_minute": 1_000_000,
        "upload_burst": 1_000_000,
    }
    env.update({k.upper(): str(v) for k, v in extra.items()})
    node = Node(f"uploads-{'s3' if 's3_bucket' in store else 'local'}", env, bench.logs)
    bench.nodes.append(node)
    try:
        await node.start(bench.http)
        (user,) = await bench.register(node, "upl", 1)
        headers = {"Authorization": f"Bearer {user['token']}"}
        # First, on a node that has held no file yet: what it keeps of one is not
        # hidden in memory freed by the earlier ones.
        memory = await _upload_memory(bench.http, node, headers)
        up: list[float] = []
        down: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            body = await _upload(bench.http, node, headers, _chunks(data), "bench.bin")
            up.append(len(data) / MB / (time.perf_counter() - started))
            started = time.perf_counter()
            received = await _download(bench.http, node, headers, body["url"])
            down.append(received / MB / (time.perf_counter() - started))
            if received != len(data):
                raise RuntimeError(f"download: {received} bytes of {len(data)}")
    finally:
        await node.stop()
    return {
        "upload_mb_per_s": _spread(up),
        "download_mb_per_s": _spread(down),
        "upload_memory": memory,
    }


async def _upload_memory(
    http: aiohttp.ClientSession, node: Node, headers: dict[str, str]
) -> dict[str, Any]:
    """RSS of the node before and at its highest while one 100 MB upload goes in."""
    assert node.proc is not None
    pid = node.proc.pid
    before = rss_bytes(pid)
    peak = before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.005)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    try:
        body = await _upload(http, node, headers, _random_chunks(MEMORY_BYTES), "big.bin")
    finally:
        done.set()
        await sampler
    seconds = time.perf_counter() - started
    if body["size"] != MEMORY_BYTES:
        raise RuntimeError(f"upload: {body['size']} bytes stored of {MEMORY_BYTES}")
    return {
        "file_mb": MEMORY_BYTES / MB,
        "rss_before_mib": round(before / MiB, 1),
        "rss_peak_mib": round(peak / MiB, 1),
        "rss_growth_mib": round((peak - before) / MiB, 1),
        "upload_mb_per_s": round(MEMORY_BYTES / MB / seconds, 1),
    }


async def _upload(
    http: aiohttp.ClientSession,
    node: Node,
    headers: dict[str, str],
    chunks: AsyncIterator[bytes],
    name: str,
) -> dict[str, Any]:
    boundary = secrets.token_hex(16)

    async def body() -> AsyncIterator[bytes]:
        yield (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        async for chunk in chunks:
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    content_type = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with http.post(
        f"{node.url}{UPLOADS}", data=body(), headers={**headers, **content_type}, timeout=TIMEOUT
    ) as r:
        answer: dict[str, Any] = await r.json()
        if r.status != 201:
            raise RuntimeError(f"upload: {r.status} {answer}")
    return answer


async def _download(
    http: aiohttp.ClientSession, node: Node, headers: dict[str, str], url: str
) -> int:
    received = 0
    async with http.get(f"{node.url}{url}", headers=headers, timeout=TIMEOUT) as r:
        if r.status != 200:
            raise RuntimeError(f"download: {r.status} {await r.text()}")
        async for chunk in r.content.iter_chunked(CHUNK):
            received += len(chunk)
    return received


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), CHUNK):
        yield bytes(view[start : start + CHUNK])


async def _random_chunks(total: int) -> AsyncIterator[bytes]:
    """`total` bytes without holding them: one random MiB sent again and again."""
    block = os.urandom(MiB)
    sent = 0
    while sent < total:
        piece = block[: min(MiB, total - sent)]
        for start in range(0, len(piece), CHUNK):
            yield piece[start : start + CHUNK]
        sent += len(piece)


def _spread(rates: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(rates), 1),
        "min": round(min(rates), 1),
        "max": round(max(rates), 1),
    }


@contextlib.asynccontextmanager
async def _moto(bench: Bench) -> AsyncIterator[str]:
    """moto's S3 server on a free port, for the length of the block: its endpoint."""
    from bench.runner import free_port

    assert bench.http is not None
    program = Path(sys.executable).with_name("moto_server")
    if not program.exists():
        raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    log = bench.logs / "moto.log"
    with open(log, "ab") as out:  # noqa: ASYNC230  (a local log file)
        process = await asyncio.create_subprocess_exec(
            str(program), "-H", "127.0.0.1", "-p", str(port), stdout=out, stderr=out
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"moto_server exited ({process.returncode}); see {log}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with bench.http.get(f"{endpoint}/moto-api/") as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError("moto_server did not answer within 30 s")
            await asyncio.sleep(0.1)
        yield endpoint
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
