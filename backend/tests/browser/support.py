"""What the browser tests share: the node starter, the push stub, and small helpers."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from playwright.async_api import BrowserContext, Page, WebSocket, expect

from app.config import Settings
from tests.helpers import Client, User, make_settings
from tests.push_world import PushWorld

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000
PASSWORD = "correct horse battery"  # every user tests.helpers.Client.user makes has it
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

expect.set_options(timeout=TIMEOUT_MS)


# ---- A node on a port chosen beforehand, so it can be restarted on the same one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_settings(db_url: str, world: PushWorld, port: int, **overrides: Any) -> Settings:
    # web_base_url makes the push payload's url this node's origin, as in production.
    return make_settings(
        db_url,
        **world.settings,
        host="127.0.0.1",
        port=port,
        web_base_url=f"http://127.0.0.1:{port}",
        **overrides,
    )


NewContext = Callable[..., Awaitable[BrowserContext]]


# ---- A stand-in for pushManager.subscribe (a real one needs Google's push servers)

PUSH_STUB = """
(() => {
  if (typeof PushManager === 'undefined') return;
  const SUB = __SUBSCRIPTION__;
  const KEY = '__stubPushKey';
  const stub = { subscribe: 0, unsubscribe: 0, getSubscription: 0, key: null };
  window.__pushStub = stub;
  const toBytes = (value) => Uint8Array.from(
    atob(value.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(value.length / 4) * 4, '=')),
    (char) => char.charCodeAt(0));
  const toBase64Url = (bytes) => btoa(String.fromCharCode(...bytes))
    .replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
  const subscription = (key) => ({
    endpoint: SUB.endpoint,
    expirationTime: null,
    options: { userVisibleOnly: true, applicationServerKey: toBytes(key).buffer },
    getKey: (name) => toBytes(SUB.keys[name]).buffer,
    toJSON: () => ({ endpoint: SUB.endpoint, expirationTime: null, keys: { ...SUB.keys } }),
    unsubscribe: async () => {
      stub.unsubscribe += 1;
      localStorage.removeItem(KEY);
      return true;
    },
  });
  PushManager.prototype.subscribe = async function (options = {}) {
    stub.subscribe += 1;
    if (Notification.permission !== 'granted') {
      throw new DOMException('Registration failed - permission denied', 'NotAllowedError');
    }
    const key = toBase64Url(new Uint8Array(options.applicationServerKey));
    stub.key = key;
    localStorage.setItem(KEY, key);
    return subscription(key);
  };
  PushManager.prototype.getSubscription = async function () {
    stub.getSubscription += 1;
    const key = localStorage.getItem(KEY);
    return key ? subscription(key) : null;
  };
})();
"""


# ---- Helpers for the tests


async def sign_in(
    ctx: BrowserContext, base: str, user: User, path: str = "/", page: Page | None = None
) -> Page:
    """A page at `path` signed in as `user` through the sign-in form (a session of its own)."""
    page = page or await ctx.new_page()
    await page.goto(base + path)
    await expect(page.locator("#auth-view")).to_be_visible()
    await page.fill("#login-username", user.username)
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-submit")
    await expect(page.locator("#main-view")).to_be_visible()
    await expect(page.locator("#connection-status")).to_have_attribute("data-state", "online")
    return page


async def stored_session(page: Page) -> dict[str, Any] | None:
    """What the client keeps of its session: access and refresh token, session id, expiry."""
    raw = await page.evaluate("localStorage.getItem('messenger.session')")
    return json.loads(raw) if raw else None


class SocketLog:
    """Every WebSocket a page opens: its URL and the frames the page sent on it."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.sent: list[list[dict[str, Any]]] = []
        page.on("websocket", self._opened)

    def _opened(self, ws: WebSocket) -> None:
        self.urls.append(ws.url)
        frames: list[dict[str, Any]] = []
        self.sent.append(frames)
        ws.on("framesent", lambda payload: frames.append(json.loads(payload)))

    def auth_tokens(self) -> list[list[str]]:
        """Per socket, the access tokens of the auth frames sent on it, in order."""
        return [
            [f["access_token"] for f in frames if f.get("type") == "auth"] for frames in self.sent
        ]


async def open_conversation(page: Page, conversation_id: str) -> None:
    await page.locator(f'#conversation-list li[data-conversation-id="{conversation_id}"]').click()
    await expect(page.locator("#chat-pane")).to_be_visible()
    await expect(page.locator("#messages li.history-status")).not_to_have_text("Loading messages…")


async def devices(api: Client, user: User) -> list[dict]:
    r = await api.http.get("/api/v1/messenger/devices", headers=user.headers)
    assert r.status_code == 200, r.text
    return r.json()["devices"]


async def shoot(page: Page, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    await page.screenshot(path=str(path))
    return path
