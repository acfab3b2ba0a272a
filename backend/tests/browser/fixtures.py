"""The browser tests' fixtures (conftest.py loads them only where Chromium can run)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Playwright,
    async_playwright,
)

from tests.browser import CHROMIUM
from tests.browser.support import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    DESKTOP,
    PUSH_STUB,
    TIMEOUT_MS,
    NewContext,
    free_port,
    node_settings,
)
from tests.helpers import Client, Node, start_node
from tests.push_world import PushWorld, start_push_world

# ---- Session fixtures


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
async def push_world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("browser-push"))


@pytest.fixture(scope="session")
async def web_node(postgresql_url: str, push_world: PushWorld) -> AsyncIterator[Node]:
    port = free_port()
    node = await start_node(node_settings(postgresql_url, push_world, port), port)
    yield node
    await node.stop()


@pytest.fixture(scope="session")
async def api(web_node: Node) -> AsyncIterator[Client]:
    c = Client(web_node)
    yield c
    await c.close()


@pytest.fixture(scope="session")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as p:
        yield p


@pytest.fixture(scope="session")
async def browser(playwright: Playwright) -> AsyncIterator[Browser]:
    b = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    await b.close()


@pytest.fixture
async def new_context(browser: Browser, web_node: Node) -> AsyncIterator[NewContext]:
    """Makes browser contexts (closed after the test).

    notifications: grant the notifications permission for the node's origin.
    subscription: a PushSubscription JSON the stubbed pushManager hands out.
    """
    contexts: list[BrowserContext] = []

    async def make(
        *,
        origin: str | None = None,
        notifications: bool = True,
        subscription: str | None = None,
        viewport: dict[str, int] | None = None,
    ) -> BrowserContext:
        ctx = await browser.new_context(viewport=viewport or DESKTOP, locale="en-GB")
        contexts.append(ctx)
        ctx.set_default_timeout(TIMEOUT_MS)
        if notifications:
            await ctx.grant_permissions(["notifications"], origin=origin or web_node.url)
        if subscription is not None:
            await ctx.add_init_script(
                PUSH_STUB.replace("__SUBSCRIPTION__", json.dumps(json.loads(subscription)))
            )
        return ctx

    yield make
    for ctx in contexts:
        await ctx.close()
