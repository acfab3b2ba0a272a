"""No secret in any log line. A node runs as `python -m app` does (its own process, its
own logging set-up, uvicorn logging at INFO and at DEBUG, every record of every logger
written out) while a client registers, logs in, refreshes, opens sockets by `?token=`
and by first frame, registers devices of each provider and is pushed; then every line
the node wrote is searched for each token, password and push token."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets as random
import signal
import socket
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import websockets

from app.logs import REDACTED, install_redaction
from tests import schema_check
from tests.helpers import OPEN_LIMITS, SECRET, eventually
from tests.push_world import PushWorld, start_push_world

BACKEND = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery staple"
D = "/api/v1/messenger/devices"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeProcess:
    """`python -m app` on a free port, its stdout and stderr read as they come."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.output = b""

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    async def __aenter__(self) -> NodeProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app",
            cwd=BACKEND,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        self._reading = asyncio.create_task(self.proc.stdout.read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.output = await self._reading

    def exited(self) -> bool:
        return self.proc.returncode is not None


def node_env(db_url: str, level: str, port: int, world: PushWorld) -> dict[str, str]:
    settings: dict[str, Any] = {
        "database_url": db_url,
        "redis_url": "",
        "secret_key": SECRET,
        "host": "127.0.0.1",
        "port": port,
        "log_level": level,
        "password_profile": "CHEAPEST",
        # The spent refresh token presented again must count as reuse (and be logged).
        "refresh_reuse_grace_seconds": 0,
        **OPEN_LIMITS,
        **world.settings,
    }
    env = dict(os.environ)
    for key, value in settings.items():
        env[key.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


async def add_device(api: httpx2.AsyncClient, token: str, provider: str, access_token: str) -> None:
    platform = {"web_push": "web", "fcm": "android", "apns": "ios"}[provider]
    r = await api.post(
        f"{D}/register",
        json={"device_token": token, "platform": platform, "provider": provider},
        headers={"Authorization": f"Bearer {access_token}"},
    )
    assert r.status_code == 201, r.text


async def recv_type(ws: websockets.ClientConnection, type_: str) -> dict[str, Any]:
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame["type"] == type_:
            return dict(frame)


async def use_the_node(api: httpx2.AsyncClient, node: NodeProcess, world: PushWorld) -> list[str]:
    """Everything a client does that handles a secret; the secrets used."""
    secrets: list[str] = [PASSWORD]
    tokens: dict[str, dict[str, Any]] = {}
    names = {name: f"{name}{random.token_hex(4)}" for name in ("alice", "bob")}
    for name, username in names.items():
        r = await api.post(
            "/api/v1/auth/register", json={"username": username, "password": PASSWORD}
        )
        assert r.status_code == 201, r.text
        r = await api.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
        assert r.status_code == 200, r.text
        tokens[name] = r.json()
        secrets += [tokens[name]["access_token"], tokens[name]["refresh_token"]]
    r = await api.post("/api/v1/auth/login", json={"username": names["bob"], "password": "nope"})
    assert r.status_code == 401
    alice, bob = tokens["alice"], tokens["bob"]
    r = await api.post("/api/v1/auth/refresh", json={"refresh_token": alice["refresh_token"]})
    assert r.status_code == 200, r.text
    fresh = r.json()
    secrets += [fresh["access_token"], fresh["refresh_token"]]
    # The spent refresh token again: refused, and logged as a reuse (by ids).
    r = await api.post("/api/v1/auth/refresh", json={"refresh_token": alice["refresh_token"]})
    assert r.status_code == 401
    r = await api.post(
        "/api/v1/auth/login", json={"username": names["alice"], "password": PASSWORD}
    )
    alice = r.json()
    secrets += [alice["access_token"], alice["refresh_token"]]

    web, fcm, apns = world.webpush.subscribe(), world.fcm_token(), world.apns_token()
    subscription = json.loads(web)
    secrets += [web, subscription["endpoint"], fcm, apns, *subscription["keys"].values()]
    secrets.append(subscription["endpoint"].split("://", 1)[1].split("/", 1)[1])  # its path
    for provider, token in (("web_push", web), ("fcm", fcm), ("apns", apns)):
        await add_device(api, token, provider, bob["access_token"])
    r = await api.post(
        "/api/v1/messenger/conversations",
        json={"type": "direct", "participant_ids": [bob["user"]["id"]]},
        headers={"Authorization": f"Bearer {alice['access_token']}"},
    )
    assert r.status_code == 201, r.text
    conversation_id = r.json()["id"]

    by_url = await websockets.connect(f"{node.ws_url}?token={alice['access_token']}")
    by_frame = await websockets.connect(node.ws_url)
    await by_frame.send(
        orjson.dumps({"type": "auth", "access_token": alice["access_token"]}).decode()
    )
    await recv_type(by_frame, "auth.ok")
    await by_url.send(
        orjson.dumps(
            {
                "type": "message.send",
                "conversation_id": conversation_id,
                "content": "are you there?",
                "client_msg_id": "m1",
            }
        ).decode()
    )
    await recv_type(by_url, "message.ack")
    await eventually(
        lambda: all(
            world.accepted(provider, token)
            for provider, token in (("web_push", web), ("fcm", fcm), ("apns", apns))
        ),
        what="a push on each of bob's devices",
    )
    await by_url.close()
    await by_frame.close()
    r = await api.post(
        "/api/v1/auth/logout", headers={"Authorization": f"Bearer {alice['access_token']}"}
    )
    assert r.status_code == 200
    return secrets


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_no_secret_reaches_the_log(db_url: str, level: str, tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        world = await start_push_world(stack, tmp_path)
        port = free_port()
        node = NodeProcess(node_env(db_url, level, port, world), port)
        async with node:
            async with httpx2.AsyncClient(
                event_hooks=schema_check.EVENT_HOOKS, base_url=node.url, timeout=30
            ) as api:
                await eventually(lambda: _healthy(api, node), within=30, what="the node")
                secrets = await use_the_node(api, node, world)
    log = node.output.decode(errors="replace")
    # The log is there, and says what happened: the socket (its token redacted), the
    # logins, the reused refresh token, the pushes.
    assert f"/ws?token={REDACTED}" in log, log[-3000:]
    assert "login user=" in log and "refresh token reused" in log
    assert "push delivered provider=web_push" in log
    if level == "DEBUG":
        assert "DEBUG" in log and REDACTED in log
    leaks = sorted({secret[:24] + "..." for secret in secrets if secret in log})
    assert not leaks, leaks
    for line in log.splitlines():
        assert not any(secret in line for secret in secrets), line


async def _healthy(api: httpx2.AsyncClient, node: NodeProcess) -> bool:
    if node.exited():
        raise AssertionError("the node exited")
    try:
        r = await api.get("/health")
    except httpx2.TransportError:
        return False
    return r.status_code == 200


# -- the redaction itself -----------------------------------------------------------------

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIiwic2lkIjoiYWJjIn0.c2lnbmF0dXJlc2ln"
REFRESH = "0b1f3f0e-6a55-4c43-9a4e-5d2a7c1b9e10." + "N" * 43 + "." + "M" * 22


@pytest.mark.parametrize(
    ("message", "args", "secret"),
    [
        ('%s - "WebSocket %s" [accepted]', ("127.0.0.1:5000", f"/ws?token={JWT}"), JWT),
        ("< %s", (f'TEXT \'{{"type":"auth","access_token":"{JWT[:30]}...',), JWT[:30]),
        ("body %s", ('{"refresh_token": "' + REFRESH + '"}',), REFRESH.split(".", 1)[1]),
        ("header %s", (f"authorization: Bearer {JWT}",), JWT),
        ("push to %s", ("https://fcm.googleapis.com/fcm/send/dGhpcyBpcyBhIHRva2Vu",), "dGhpc"),
        (f"inline {REFRESH}", (), REFRESH.split(".", 1)[1]),
        ("login %s", ("password=hunter2&user=x",), "hunter2"),
    ],
)
def test_records_are_redacted_as_they_are_made(message: str, args: tuple, secret: str) -> None:
    install_redaction()
    record = logging.getLogger("uvicorn.error").makeRecord(
        "uvicorn.error", logging.INFO, __file__, 1, message, args, None
    )
    assert secret not in record.getMessage() and REDACTED in record.getMessage()


def test_uvicorns_access_lines_keep_their_shape() -> None:
    """uvicorn's access formatter unpacks record.args: they stay a 5-tuple."""
    from uvicorn.logging import AccessFormatter

    install_redaction()
    args = ("127.0.0.1:5000", "GET", f"/ws?token={JWT}", "1.1", 101)
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None
    )
    line = AccessFormatter("%(request_line)s %(status_code)s", use_colors=False).format(record)
    assert line == f"GET /ws?token={REDACTED} HTTP/1.1 101 Switching Protocols"


def test_tracebacks_are_redacted() -> None:
    install_redaction()
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        record = logging.getLogger("app").makeRecord(
            "app", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    assert JWT not in logging.Formatter().format(record)
