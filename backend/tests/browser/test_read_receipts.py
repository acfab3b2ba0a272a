"""Read receipts and blocking in the web client: "Seen by" in a group, kept across a
reload; a direct conversation's other person blocked from its header, whose sends the
server then refuses."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from tests.browser.support import NewContext, open_conversation, shoot, sign_in
from tests.helpers import Client, Node

BASE = "/api/v1/messenger/conversations"


async def test_seen_by_in_a_group_survives_a_reload(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    ann = await api.user(display_name="Ann")
    bea = await api.user(display_name="Bea")
    cal = await api.user(display_name="Cal")
    cid = (await api.conversation(ann, bea, cal, title="Trio"))["id"]
    elsewhere = (await api.conversation(bea, cal))["id"]

    a = await sign_in(await new_context(notifications=False), web_node.url, ann)
    await open_conversation(a, cid)
    await a.fill("#composer", "standup in five")
    await a.press("#composer", "Enter")
    own = a.locator('#messages li.message.own[data-seq="1"]')
    await expect(own).to_contain_text("standup in five")
    seen = a.locator("#messages li.seen")
    await expect(seen).to_have_count(0)

    # Bea opens the group: her read frame reaches Ann, who sees who read it.
    b = await sign_in(await new_context(notifications=False), web_node.url, bea)
    await open_conversation(b, cid)
    await expect(b.locator('#messages li.message[data-seq="1"]')).to_be_visible()
    await expect(seen).to_have_text("Seen by Bea")
    await shoot(a, artifacts, "read-receipts-seen-by")

    # After a reload it comes from the server's read marks, not from frames.
    await a.reload()
    await expect(a.locator("#chat-pane")).to_be_visible()
    await expect(a.locator('#messages li.message[data-seq="1"]')).to_be_visible()
    await expect(seen).to_have_text("Seen by Bea")

    # Cal reads elsewhere (REST): added live.
    r = await api.http.post(f"{BASE}/{cid}/read", json={"seq": 1}, headers=cal.headers)
    assert r.status_code == 200
    await expect(seen).to_have_text("Seen by Bea, Cal")

    # A newer message of Ann's, while Bea is elsewhere, is not yet seen by anyone: the
    # line moves with it once she opens the group again.
    await open_conversation(b, elsewhere)
    await a.fill("#composer", "moved to ten")
    await a.press("#composer", "Enter")
    await expect(a.locator('#messages li.message.own[data-seq="2"]')).to_be_visible()
    await expect(seen).to_have_count(0)
    await open_conversation(b, cid)
    await expect(b.locator('#messages li.message[data-seq="2"]')).to_be_visible()
    await expect(seen).to_have_text("Seen by Bea")


async def test_block_from_the_header_refuses_their_messages(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    ann = await api.user(display_name="Ann")
    bob = await api.user(display_name="Bob")
    direct = (await api.conversation(ann, bob))["id"]
    group = (await api.conversation(ann, bob, title="Both"))["id"]

    a = await sign_in(await new_context(notifications=False), web_node.url, ann)
    b = await sign_in(await new_context(notifications=False), web_node.url, bob)
    toggle = a.locator("#block-toggle")

    # Only a direct conversation offers it.
    await open_conversation(a, group)
    await expect(toggle).to_be_hidden()
    await open_conversation(a, direct)
    await expect(toggle).to_have_text("Block")
    await expect(toggle).to_have_attribute("aria-pressed", "false")

    await toggle.click()
    await expect(toggle).to_have_text("Unblock")
    await expect(toggle).to_have_attribute("aria-pressed", "true")
    r = await api.http.get("/api/v1/me/blocks", headers=ann.headers)
    assert [x["user_id"] for x in r.json()["blocks"]] == [bob.id]
    await shoot(a, artifacts, "block-toggle-blocked")

    # Bob's message is refused: the UI says so and keeps it as failed; REST answers 403.
    await open_conversation(b, direct)
    await b.fill("#composer", "are you there?")
    await b.press("#composer", "Enter")
    await expect(b.locator("#messages li.message.failed")).to_contain_text("are you there?")
    await expect(b.locator("#composer-error")).to_contain_text("does not accept messages")
    r = await api.send(bob, direct, "over REST")
    assert r.status_code == 403 and r.json()["error"]["code"] == "blocked"
    assert [m["content"] for m in await api.messages(ann, direct)] == []

    # The state is the server's: still blocked after a reload, then unblocked.
    await a.reload()
    await expect(a.locator("#chat-pane")).to_be_visible()
    await expect(toggle).to_have_text("Unblock")
    await toggle.click()
    await expect(toggle).to_have_text("Block")
    await expect(toggle).to_have_attribute("aria-pressed", "false")
    r = await api.send(bob, direct, "back again")
    assert r.status_code == 201
    await expect(a.locator("#messages li.message", has_text="back again")).to_be_visible()
