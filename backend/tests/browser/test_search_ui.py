"""Message search in the web client: results with highlighted snippets (drawn as text)
that open the conversation at the message, paging back through history to reach it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.async_api import expect
from sqlalchemy import update

from app.messenger.models import Conversation, Message
from tests.browser.support import NewContext, shoot, sign_in
from tests.helpers import Client, Node

# PostgreSQL's headline leaves tags out of a snippet, but keeps entities: drawn as text,
# they show as typed, where drawn as HTML they would turn into "<b>".
ENTITIES = "&lt;b&gt;hay&lt;/b&gt;"
NEEDLE = f"the needle in the {ENTITIES}stack"


async def test_a_result_opens_its_message_far_back_in_history(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    ann, bob = await api.user(), await api.user()
    conversation = await api.conversation(ann, bob)
    cid = conversation["id"]
    # 260 messages: the match is the first, four pages of history back from the newest.
    start = datetime.now(UTC) - timedelta(hours=1)
    rows = [
        {
            "id": f"{cid[:8]}-{seq:05d}-search-ui",
            "conversation_id": cid,
            "seq": seq,
            "sender_id": ann.id,
            "content": NEEDLE if seq == 1 else f"more hay, bale {seq}",
            "created_at": start + timedelta(seconds=seq),
        }
        for seq in range(1, 261)
    ]
    async with web_node.services.engine.begin() as conn:
        await conn.execute(Message.__table__.insert(), rows)
        await conn.execute(update(Conversation).where(Conversation.id == cid).values(last_seq=260))

    page = await sign_in(await new_context(notifications=False), web_node.url, bob)
    await page.fill("#search-query", "needles")
    result = page.locator("#search-results-list li.search-result")
    await expect(result).to_have_count(1)
    await expect(page.locator("#conversation-list")).to_be_hidden()
    await expect(result).to_have_attribute("data-message-id", rows[0]["id"])
    await expect(result.locator(".search-snippet mark")).to_have_text("needle")
    await expect(result.locator(".search-snippet")).to_contain_text(ENTITIES)
    assert await result.locator(".search-snippet *:not(mark)").count() == 0
    await shoot(page, artifacts, "search-results")

    await result.locator("button").click()
    await expect(page.locator("#chat-pane")).to_be_visible()
    target = page.locator('#messages li.message[data-seq="1"]')
    await expect(target).to_have_class("message other search-hit")
    await expect(target).to_be_in_viewport()
    await expect(target.locator(".text")).to_have_text(NEEDLE)
    # Everything between it and the newest is drawn: the window stays contiguous.
    await expect(page.locator("#messages li.message")).to_have_count(260)
    await shoot(page, artifacts, "search-jump")

    # Many matches come a page at a time.
    await page.fill("#search-query", "bale")
    await expect(result).to_have_count(20)
    await page.click("#search-more")
    await expect(result).to_have_count(40)
    ids = await result.evaluate_all("nodes => nodes.map(n => n.dataset.messageId)")
    assert len(set(ids)) == 40

    # Escape clears the search and brings the conversation list back.
    await page.locator("#search-query").press("Escape")
    await expect(page.locator("#search-results")).to_be_hidden()
    await expect(page.locator("#conversation-list")).to_be_visible()
