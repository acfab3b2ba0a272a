"""The deployment recipe, run: `deploy/demo/cluster-demo.sh` (what `make cluster-demo`
runs) brings up two real nodes and nginx as docs/DEPLOY.md says, and the clients here
reach them only through nginx over HTTPS: chat across nodes, presence, a Web Push to
an offline user, one node stopped while its clients reconnect to the other, and the
web client's files with their caching headers and CSP. One run uses the test's
PostgreSQL and Redis, the other the demo's own (started and stopped by the script).
The systemd units are checked with systemd-analyze, render.sh with hostile values, and
deploy/demo/walkthrough.sh's plan against every block of docs/DEPLOY.md."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import websockets

from app.webclient import CONTENT_SECURITY_POLICY
from tests import schema_check
from tests.cluster import RedisServer, send_frame
from tests.conftest import PG_HOST, PG_PORT, PG_USER, drop_pg_database
from tests.fakes import free_port
from tests.fakes.webpush import FakePushService, VapidKeys, make_vapid_keys
from tests.helpers import Client, Socket, User, eventually

pytest_plugins = ["tests.cluster_fixtures"]

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy" / "demo" / "cluster-demo.sh"
DEPLOY_MD = ROOT / "docs" / "DEPLOY.md"
UNITS = ROOT / "deploy" / "systemd"
RENDER = ROOT / "deploy" / "nginx" / "render.sh"
WALKTHROUGH = ROOT / "deploy" / "demo" / "walkthrough.sh"
STANDIN = ROOT / "deploy" / "demo" / "systemctl"

needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None,
    reason="nginx is not installed (apt-get install nginx; .ci/run installs it)",
)


@dataclass
class Demo:
    directory: Path
    url: str  # https://localhost:PORT, through nginx
    http_url: str  # the plain-HTTP listener, which only redirects
    node_ports: list[int]
    prefix: str
    tls: ssl.SSLContext

    def node_pid(self, port: int) -> int:
        return int((self.directory / "run" / f"node-{port}.pid").read_text())

    def node_id(self, port: int) -> str:
        return f"{socket.gethostname()}-{port}"  # the unit's NODE_ID=%H-%i


class TlsClient(Client):
    """The REST helpers of tests.helpers, through nginx over HTTPS."""

    def __init__(self, demo: Demo) -> None:
        self.http = httpx2.AsyncClient(
            event_hooks=schema_check.EVENT_HOOKS, base_url=demo.url, verify=demo.tls, timeout=30
        )


def fences(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a Markdown text: (info string, body)."""
    return re.findall(r"^```([^\n`]*)\n(.*?)^```$", text, re.S | re.M)


@pytest.fixture
def vapid() -> VapidKeys:
    return make_vapid_keys()


@pytest.fixture
async def webpush(vapid: VapidKeys) -> AsyncIterator[FakePushService]:
    async with FakePushService(vapid.public) as fake:
        yield fake


@pytest.fixture
async def demo(tmp_path: Path, redis_server: RedisServer, vapid: VapidKeys) -> AsyncIterator[Demo]:
    """The demo on the test's PostgreSQL and Redis."""
    database = f"messenger_deploy_{os.getpid()}_{secrets.token_hex(3)}"
    servers = {
        "DEMO_PG": f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}",
        "REDIS_URL": redis_server.url,
    }
    try:
        async with run_demo(tmp_path, vapid, database, servers) as running:
            yield running
    finally:
        await drop_pg_database(database)


@pytest.fixture
async def own_demo(tmp_path: Path, vapid: VapidKeys) -> AsyncIterator[Demo]:
    """The demo as `make cluster-demo` runs it bare: its own PostgreSQL and Redis."""
    async with run_demo(tmp_path, vapid, "messenger_demo", {}) as running:
        yield running
    # Stopped with the demo: nothing answers where they listened.
    log = (tmp_path / "demo.log").read_text()
    for server in ("PostgreSQL", "Redis"):
        found = re.search(rf"{server} of its own on 127\.0\.0\.1:(\d+)", log)
        assert found, log
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(found.group(1))), timeout=2).close()


@asynccontextmanager
async def run_demo(
    tmp_path: Path, vapid: VapidKeys, database: str, servers: Mapping[str, str]
) -> AsyncIterator[Demo]:
    ports = [free_port(), free_port()]
    http_port, https_port = free_port(), free_port()
    prefix = f"deploy{secrets.token_hex(3)}:"
    extra = tmp_path / "extra.env"
    # The test's own push service and keys; a cheap password hash for speed.
    extra.write_text(
        f"VAPID_PRIVATE_KEY={vapid.private_raw}\nVAPID_PUBLIC_KEY={vapid.public}\n"
        "WEB_PUSH_ALLOW_ANY_ENDPOINT=true\n"
        "PASSWORD_PROFILE=CHEAPEST\n"
        "LOG_LEVEL=WARNING\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DEMO_PG", "REDIS_URL")},
        "DEMO_DIR": str(tmp_path / "demo"),
        "DEMO_DB": database,
        **servers,
        "REDIS_PREFIX": prefix,
        "NODE_PORTS": " ".join(map(str, ports)),
        "HTTP_PORT": str(http_port),
        "HTTPS_PORT": str(https_port),
        "DEMO_EXTRA_ENV": str(extra),
    }
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220  (starts at once; we wait below)
            ["bash", str(DEMO)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"cluster-demo exited {process.returncode}:\n{log_path.read_text()}"
            )
        return "cluster-demo: ready at" in log_path.read_text()

    try:
        await eventually(ready, within=60, what="cluster-demo to be ready", every=0.1)
        tls = ssl.create_default_context(cafile=tmp_path / "demo" / "etc" / "tls" / "fullchain.pem")
        yield Demo(
            tmp_path / "demo",
            f"https://localhost:{https_port}",
            f"http://127.0.0.1:{http_port}",
            ports,
            prefix,
            tls,
        )
    finally:
        process.send_signal(signal.SIGTERM)  # the script's trap stops nodes and nginx
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


async def connect(demo: Demo, user: User) -> Socket:
    """A socket through nginx, registered on its node (it answered a ping)."""
    ws = await websockets.connect(
        f"{demo.url.replace('https://', 'wss://')}/ws?token={user.token}",
        ssl=demo.tls,
        max_size=2**24,
    )
    sock = Socket(ws)
    await sock.send({"type": "ping"})
    await sock.expect("pong")
    return sock


async def node_of(redis_server: RedisServer, demo: Demo, user: User) -> str:
    """The one node that holds the user's sockets, as presence records it."""
    async with redis_server.client() as r:

        async def holders() -> list[str]:
            nodes = [str(node) for node in await r.zrange(f"{demo.prefix}u:{user.id}", 0, -1)]
            return nodes if len(nodes) == 1 else []

        held: list[str] = await eventually(holders, what=f"user {user.id} held by one node")
        return held[0]


@needs_nginx
async def test_two_nodes_behind_nginx(
    demo: Demo, redis_server: RedisServer, webpush: FakePushService
) -> None:
    api = TlsClient(demo)
    try:
        alice, bob, carol = await api.user(), await api.user(), await api.user()
        # Carol has a browser subscribed to Web Push and no socket open.
        token = webpush.subscribe()
        r = await api.http.post(
            "/api/v1/messenger/devices/register",
            json={"device_token": token, "platform": "web", "provider": "web_push"},
            headers=carol.headers,
        )
        assert r.status_code == 201, r.text
        group = (await api.conversation(alice, bob, carol, title="deploy"))["id"]

        # least_conn puts the second long-lived socket on the other node.
        alice_ws = await connect(demo, alice)
        bob_ws = await connect(demo, bob)
        ids = {demo.node_id(port): port for port in demo.node_ports}
        alice_node = await node_of(redis_server, demo, alice)
        bob_node = await node_of(redis_server, demo, bob)
        assert {alice_node, bob_node} == set(ids), (alice_node, bob_node)

        # Presence crosses nodes: Alice hears that Bob came online.
        await alice_ws.expect("presence", user_id=bob.id, online=True)

        # Chat across nodes, and a push to the offline member.
        await alice_ws.send(send_frame(group, "hello through nginx", "m0"))
        ack = await alice_ws.expect("message.ack", client_msg_id="m0")
        got = await bob_ws.expect("message.new")
        assert got["message"]["content"] == "hello through nginx"
        pushed = await eventually(lambda: webpush.received_for(token), what="carol's push")
        assert pushed[0].status == 201 and pushed[0].payload is not None
        assert pushed[0].payload["data"]["seq"] == got["message"]["seq"]

        # Bob's node stops (as systemctl stop does: SIGTERM); his socket closes.
        os.kill(demo.node_pid(ids[bob_node]), signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await bob_ws.recv(timeout=30)
        last_seen = got["message"]["seq"]

        # Alice, on the survivor, goes on talking meanwhile.
        missed = []
        for i in range(1, 4):
            await alice_ws.send(send_frame(group, f"while away {i}", f"m{i}"))
            acked = await alice_ws.expect("message.ack", client_msg_id=f"m{i}")
            missed.append(acked["message"]["seq"])

        # Bob reconnects through the same address: nginx sends him to the survivor.
        bob_ws = await connect(demo, bob)
        assert await node_of(redis_server, demo, bob) == alice_node
        r = await api.http.get(
            f"/api/v1/messenger/conversations/{group}/messages",
            params={"after_seq": last_seen},
            headers={**bob.headers, "Accept-Encoding": "gzip"},
        )
        assert r.headers["content-encoding"] == "gzip"  # JSON is compressed on the way
        caught_up = r.json()["messages"]
        assert [m["seq"] for m in caught_up] == missed
        assert [m["content"] for m in caught_up] == [f"while away {i}" for i in range(1, 4)]
        assert ack["message"]["seq"] == last_seen

        # And live frames reach him there.
        await alice_ws.send(send_frame(group, "welcome back", "m4"))
        live = await bob_ws.expect("message.new")
        assert live["message"]["content"] == "welcome back"
        assert live["message"]["seq"] == missed[-1] + 1
        await alice_ws.close()
        await bob_ws.close()
        # nginx's log names the node of each request, and never a query string: the
        # sockets' ?token= stays out of it.
        log = (demo.directory / "log" / "messenger-access.log").read_text()
        assert '"GET /ws" 101' in log and "token" not in log
        for port in demo.node_ports:
            assert f"upstream=127.0.0.1:{port}" in log

        # A webhook's URL is its credential: the log keeps its id, never its secret.
        r = await api.http.post(
            f"/api/v1/messenger/conversations/{group}/webhooks",
            json={"name": "CI"},
            headers=alice.headers,
        )
        assert r.status_code == 201, r.text
        hook_path = "/" + r.json()["url"].split("/", 3)[3]
        secret = hook_path.rsplit("/", 1)[1]
        posted = await api.http.post(hook_path, json={"content": "deployed"})
        assert posted.status_code == 200, posted.text
        assert posted.headers["strict-transport-security"] == "max-age=31536000"
        hook_id = r.json()["id"]

        def hook_logged() -> str | None:
            log = (demo.directory / "log" / "messenger-access.log").read_text()
            return log if f'"POST /api/v1/hooks/{hook_id}/REDACTED" 200' in log else None

        log = await eventually(hook_logged, what="the webhook post in the access log")
        assert secret not in log
    finally:
        await api.close()


@needs_nginx
async def test_nginx_serves_the_web_client(own_demo: Demo) -> None:
    demo = own_demo
    async with httpx2.AsyncClient(
        event_hooks=schema_check.EVENT_HOOKS, base_url=demo.url, verify=demo.tls, timeout=10
    ) as http:
        # Pages come from a node, with its Content-Security-Policy.
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        admin = await http.get("/admin")
        assert admin.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        worker = await http.get("/sw.js")
        assert worker.headers["content-security-policy"] == CONTENT_SECURITY_POLICY

        # Scripts from the checkout: revalidated each load, compressed.
        script = await http.get("/app.js", headers={"Accept-Encoding": "gzip"})
        assert script.status_code == 200
        assert script.headers["cache-control"] == "no-cache"
        # HTTPS only from here on, on what nginx answers alone and what the nodes do.
        for answer in (page, script):
            assert answer.headers["strict-transport-security"] == "max-age=31536000"
        assert script.headers["content-encoding"] == "gzip"
        assert script.headers["x-content-type-options"] == "nosniff"
        assert script.text == (ROOT / "frontend" / "app.js").read_text()
        again = await http.get("/app.js", headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304

        vendor = await http.get("/vendor/chartjs/chart.umd.js")
        assert vendor.status_code == 200
        assert vendor.headers["cache-control"] == "public, max-age=86400"

        # A file the checkout lacks, and what nginx refuses itself: JSON errors.
        missing = await http.get("/missing.js")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        # nginx's own answer, not a node's: no operation of the schema to hold it to.
        async with httpx2.AsyncClient(base_url=demo.url, verify=demo.tls, timeout=10) as bare:
            metrics = await bare.get("/metrics")
        assert metrics.status_code == 404
        assert metrics.json()["error"]["code"] == "not_found"
        assert metrics.headers["strict-transport-security"] == "max-age=31536000"
        too_large = await http.post(
            "/api/v1/messenger/uploads", content=b"x" * (26214400 + 16384 + 1)
        )
        assert too_large.status_code == 413
        assert too_large.json()["error"]["code"] == "payload_too_large"
        health = await http.get("/health")
        assert health.json() == {"status": "ok", "database": "ok", "redis": "ok"}

        # A client cannot pose as many addresses: nginx replaces its X-Forwarded-For, so
        # the per-address registration bucket (burst 10) is one for all these forgeries.
        statuses = []
        for i in range(11):
            r = await http.post(
                "/api/v1/auth/register",
                json={"username": f"f{secrets.token_hex(5)}", "password": "correct horse battery"},
                headers={"X-Forwarded-For": f"203.0.113.{i + 1}"},
            )
            statuses.append(r.status_code)
        assert statuses == [201] * 10 + [429], statuses

    # Plain HTTP: nginx answers every request itself (a redirect), never a node.
    async with httpx2.AsyncClient(base_url=demo.http_url, timeout=10) as plain:
        r = await plain.get("/api/v1/users?q=a", headers={"Host": "localhost"})
        assert r.status_code == 301
        assert r.headers["location"] == f"{demo.url}/api/v1/users?q=a"

    # Which of these nginx answered alone (no node saw them), and no query string logged.
    log = (demo.directory / "log" / "messenger-access.log").read_text()
    for request in ("GET /app.js", "GET /metrics", "POST /api/v1/messenger/uploads"):
        assert re.search(f'"{request}" \\d+ \\d+ upstream=- ', log), request
    assert re.search(r'"GET /" 200 \d+ upstream=127\.0\.0\.1:\d+ ', log)
    assert "q=a" not in log


def test_deploy_md_blocks_are_all_run_or_checked() -> None:
    """`make deploy-walkthrough` (root, ports 80 and 443, minutes: not run here) runs
    every block of DEPLOY.md: its plan holds each once, in the doc's order, as written
    but for the clone URL, the packages first and "Upgrading" in a phase of its own."""
    text = DEPLOY_MD.read_text()
    blocks = fences(text)
    kinds = {info for info, _ in blocks}
    assert kinds == {"sh", "sh check", "console"}, kinds
    sections = [(m.group(1), m.start()) for m in re.finditer(r"^## (.+)$", text, re.M)]
    offsets = [m.start() for m in re.finditer(r"^```\S", text, re.M)]
    plan = subprocess.run(
        ["bash", str(WALKTHROUGH), "--plan"], capture_output=True, text=True, check=True
    ).stdout
    parts = re.split(r"^### phase (\w+)\n", plan, flags=re.M)
    phases = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert list(phases) == ["packages", "setup", "upgrade"]

    run = []  # (phase, number, kind, section, body) in the order the walkthrough runs them
    for phase, script in phases.items():
        ran = re.findall(
            r"^wt_begin (\d+) '([^']*)' '([^']*)'\n(.*?)^wt_end \1$", script, re.S | re.M
        )
        run += [(phase, int(n), kind, section, body) for n, kind, section, body in ran]
        # The phase's script is valid shell as a whole.
        checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert checked.returncode == 0, (phase, checked.stderr)
    assert [n for _, n, *_ in run] == list(range(1, len(blocks) + 1))

    clone = "https://example.com/messenger.git"
    assert sum(clone in body for _, body in blocks) == 1
    for (info, body), offset, (phase, _, kind, section, ran) in zip(
        blocks, offsets, run, strict=True
    ):
        assert kind == info
        assert ran == body.replace(clone, f"file://{ROOT}")
        assert section == [name for name, at in sections if at < offset][-1]
        expected = {"1. Packages": "packages", "Upgrading": "upgrade"}.get(section, "setup")
        assert phase == expected, (section, phase)


def test_systemctl_stand_in_refuses_what_it_does_not_do(tmp_path: Path) -> None:
    env = {**os.environ, "SYSTEMCTL_STANDIN_DIR": str(tmp_path)}
    for args in (["is-active", "nginx"], ["restart", "nginx"], ["stop", "--force", "x"]):
        result = subprocess.run([str(STANDIN), *args], env=env, capture_output=True, text=True)
        assert result.returncode == 1, args
        assert result.stderr.startswith("systemctl (stand-in): "), result.stderr
    unset = {k: v for k, v in os.environ.items() if k != "SYSTEMCTL_STANDIN_DIR"}
    result = subprocess.run(
        [str(STANDIN), "daemon-reload"], env=unset, capture_output=True, text=True
    )
    assert result.returncode == 1 and "SYSTEMCTL_STANDIN_DIR" in result.stderr


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian's systemd package holds it)",
)
def test_systemd_units_verify(tmp_path: Path) -> None:
    """Both units as installed, with this checkout at /opt/messenger's place (so their
    commands exist), pass systemd-analyze verify without a warning."""
    env = tmp_path / "env"
    env.write_text("")
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace("/etc/messenger/env", str(env))
        (tmp_path / unit.name).write_text(text.replace("/opt/messenger", str(ROOT)))
    result = subprocess.run(
        [
            *("systemd-analyze", "verify", "--man=no"),
            str(tmp_path / "messenger@8001.service"),
            str(tmp_path / "messenger-migrate.service"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_render_refuses_what_would_add_directives() -> None:
    env = {
        **os.environ,
        "NODES": "127.0.0.1:8001",
        "SERVER_NAME": "chat.example.com; include /etc/passwd",
        "TLS_CERT": "/c",
        "TLS_KEY": "/k",
        "FRONTEND_DIR": "/f",
    }
    result = subprocess.run(["bash", str(RENDER)], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "SERVER_NAME" in result.stderr and result.stdout == ""


def render(**values: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "NODES": "127.0.0.1:8001",
        "SERVER_NAME": "chat.example.com",
        "TLS_CERT": "/c",
        "TLS_KEY": "/k",
        "FRONTEND_DIR": "/f",
        **values,
    }
    return subprocess.run(["bash", str(RENDER)], env=env, capture_output=True, text=True)


def test_render_fills_placeholders_in_one_pass() -> None:
    """A value is never searched for placeholders itself: NODES holding "@TLS_KEY@"
    stays as written instead of pulling the key's path in, and '@' is refused in every
    other value."""
    done = render(NODES="127.0.0.1:8001@TLS_KEY@")
    assert done.returncode == 0, done.stderr
    assert "server 127.0.0.1:8001@TLS_KEY@ max_fails=1" in done.stdout
    assert "ssl_certificate_key /k;" in done.stdout
    for name in ("SERVER_NAME", "TLS_CERT", "FRONTEND_DIR", "LOG_DIR"):
        refused = render(**{name: "/x@NODES@"})
        assert refused.returncode == 2 and name in refused.stderr, refused.stderr
        assert refused.stdout == ""


def test_the_by_hand_migration_runs_as_the_app_user() -> None:
    """Peer authentication refuses root the role `messenger`: the documented command
    switches user, and the demo runs that same text."""
    sh = "\n".join(body for info, body in fences(DEPLOY_MD.read_text()) if info == "sh")
    assert 'runuser -u "$APP_USER" -- ../.venv/bin/alembic upgrade head' in sh
    assert "postgresql://messenger@/messenger?host=/var/run/postgresql" in sh
    assert "doc_blocks sh" in DEMO.read_text()
