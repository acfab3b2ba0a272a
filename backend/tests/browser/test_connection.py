"""A dropped connection: the client says so, queues what is typed, and catches up once back."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.browser.support import (
    NewContext,
    free_port,
    node_settings,
    shoot,
    sign_in,
)
from tests.helpers import Client, Node, User, start_node
from tests.push_world import PushWorld

NOT_ONLINE = re.compile(r"^(offline|connecting)$")


async def shown(page: Page) -> list[tuple[int, str]]:
    """(seq, text) of every confirmed message on screen, in order."""
    return [
        (int(seq), text)
        for seq, text in await page.locator("#messages li.message[data-seq]").evaluate_all(
            "ns => ns.map(n => [n.dataset.seq, n.querySelector('.text').textContent])"
        )
    ]


async def send_typed(page: Page, text: str) -> None:
    await page.fill("#composer", text)
    await page.press("#composer", "Enter")


async def test_offline_queue_and_catch_up(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    hank = await api.user(display_name="Hank")
    ivy = await api.user(display_name="Ivy")
    cid = (await api.conversation(hank, ivy))["id"]
    assert (await api.send(ivy, cid, "before")).status_code == 201

    hank_ctx = await new_context(notifications=False)
    hank_page = await sign_in(hank_ctx, web_node.url, hank, f"/?conversation={cid}")
    ivy_page = await sign_in(await new_context(notifications=False), web_node.url, ivy)
    await expect(hank_page.locator('#messages li.message[data-seq="1"]')).to_contain_text("before")
    ivy_presence = hank_page.locator(f'li[data-conversation-id="{cid}"] .presence')
    await expect(ivy_presence).to_have_attribute("data-online", "true")
    await expect(hank_page.locator("#chat-subtitle")).to_contain_text("Online")

    # Hank's network goes away.
    await hank_ctx.set_offline(True)
    status = hank_page.locator("#connection-status")
    await expect(status).to_have_attribute("data-state", NOT_ONLINE)
    await expect(status).not_to_have_text("Online")
    await expect(hank_page.locator("#offline-banner")).to_be_visible()
    # Cut off, he cannot know who is online: no stale "Online" for Ivy.
    await expect(ivy_presence).to_have_attribute("data-online", "false")
    await expect(hank_page.locator("#chat-subtitle")).not_to_contain_text("Online")

    # What he types now waits, shown as pending.
    await send_typed(hank_page, "sent while offline")
    pending = hank_page.locator("#messages li.message.pending")
    await expect(pending).to_have_count(1)
    await expect(pending).to_contain_text("sent while offline")
    client_msg_id = await pending.get_attribute("data-client-msg-id")
    assert client_msg_id

    # Meanwhile Ivy writes twice.
    await open_chat(ivy_page, cid)
    await send_typed(ivy_page, "while you were away 1")
    await expect(ivy_page.locator('#messages li.message[data-seq="2"]')).to_be_visible()
    await send_typed(ivy_page, "while you were away 2")
    await expect(ivy_page.locator('#messages li.message[data-seq="3"]')).to_be_visible()
    history = await api.messages(hank, cid)
    assert [m["content"] for m in history] == [
        "before",
        *(f"while you were away {i}" for i in (1, 2)),
    ]
    assert await shown(hank_page) == [(1, "before")]
    await expect(pending).to_have_count(1)
    await shoot(hank_page, artifacts, "10-offline-pending")

    # Back online: the queued message goes out once, and Ivy's two arrive once each.
    await hank_ctx.set_offline(False)
    await expect(status).to_have_attribute("data-state", "online")
    await expect(hank_page.locator("#offline-banner")).to_be_hidden()
    await expect(pending).to_have_count(0)
    await expect(hank_page.locator("#messages li.message[data-seq]")).to_have_count(4)
    expected = [
        (1, "before"),
        (2, "while you were away 1"),
        (3, "while you were away 2"),
        (4, "sent while offline"),
    ]
    assert await shown(hank_page) == expected
    await expect(hank_page.locator('#messages li.message[data-seq="4"]')).to_contain_class("own")
    await expect(ivy_page.locator('#messages li.message[data-seq="4"]')).to_contain_text(
        "sent while offline"
    )

    # Another drop and reconnect resends nothing and duplicates nothing.
    await hank_ctx.set_offline(True)
    await expect(status).to_have_attribute("data-state", NOT_ONLINE)
    await hank_ctx.set_offline(False)
    await expect(status).to_have_attribute("data-state", "online")
    await send_typed(ivy_page, "after the second drop")
    await expect(hank_page.locator('#messages li.message[data-seq="5"]')).to_be_visible()
    assert await shown(hank_page) == [*expected, (5, "after the second drop")]
    assert await shown(ivy_page) == [*expected, (5, "after the second drop")]

    history = await api.messages(hank, cid)
    mine = [m for m in history if m["client_msg_id"] == client_msg_id]
    assert len(mine) == 1, history
    assert (mine[0]["sender_id"], mine[0]["content"], mine[0]["seq"]) == (
        hank.id,
        "sent while offline",
        4,
    )
    assert [m["seq"] for m in history] == [1, 2, 3, 4, 5]


async def open_chat(page: Page, cid: str) -> None:
    await page.locator(f'#conversation-list li[data-conversation-id="{cid}"]').click()
    await expect(page.locator("#chat-pane")).to_be_visible()


@pytest.fixture
async def restartable_node(postgresql_url: str, push_world: PushWorld) -> AsyncIterator[list[Node]]:
    """A node of its own, which the test stops and starts again on the same port."""
    port = free_port()
    nodes = [await start_node(node_settings(postgresql_url, push_world, port), port)]
    yield nodes
    if not nodes[-1].task.done():
        await nodes[-1].stop()


async def test_server_restart_reconnects_and_sends_the_queue(
    new_context: NewContext, restartable_node: list[Node]
) -> None:
    node = restartable_node[0]
    rest = Client(node)
    try:
        jack: User = await rest.user(display_name="Jack")
        kim: User = await rest.user(display_name="Kim")
        cid = (await rest.conversation(jack, kim))["id"]
        assert (await rest.send(kim, cid, "hello Jack")).status_code == 201
        ctx = await new_context(origin=node.url, notifications=False)
        page = await sign_in(ctx, node.url, jack, f"/?conversation={cid}")
        await expect(page.locator('#messages li.message[data-seq="1"]')).to_be_visible()

        # The server goes away: the socket closes and reconnecting fails.
        await node.stop()
        status = page.locator("#connection-status")
        await expect(status).to_have_attribute("data-state", NOT_ONLINE)
        await expect(page.locator("#offline-banner")).to_be_visible()
        await send_typed(page, "typed while the server was down")
        await expect(page.locator("#messages li.message.pending")).to_have_count(1)

        # It comes back on the same address, and Kim writes at once.
        node = await start_node(node.app.state.settings, int(node.url.rsplit(":", 1)[1]))
        restartable_node.append(node)
        await rest.http.aclose()
        rest = Client(node)
        assert (await rest.send(kim, cid, "are you back?")).status_code == 201

        await expect(status).to_have_attribute("data-state", "online", timeout=20_000)
        await expect(page.locator("#messages li.message.pending")).to_have_count(0)
        await expect(page.locator("#messages li.message[data-seq]")).to_have_count(3)
        texts = await shown(page)
        # Kim's message and Jack's queued one race for seq 2: either order, each exactly once.
        assert [seq for seq, _ in texts] == [1, 2, 3]
        assert sorted(text for _, text in texts) == sorted(
            ["hello Jack", "are you back?", "typed while the server was down"]
        )
        history = await rest.messages(jack, cid)
        assert [(m["seq"], m["content"]) for m in history] == texts
    finally:
        await rest.close()
