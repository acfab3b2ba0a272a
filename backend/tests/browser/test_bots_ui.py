"""Bots in the web client: a webhook's post shows its sender with a "bot" badge, and the
group's member list marks the webhook's bot the same way (people get none)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from playwright.async_api import expect

from tests import schema_check
from tests.browser.support import NewContext, open_conversation, shoot, sign_in
from tests.helpers import Client, Node

BASE = "/api/v1/messenger/conversations"


async def test_a_webhook_post_and_its_bot_carry_a_bot_badge(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    ann = await api.user(display_name="Ann")
    bea = await api.user(display_name="Bea")
    cid = (await api.conversation(ann, bea, title="Deploys"))["id"]
    r = await api.http.post(f"{BASE}/{cid}/webhooks", json={"name": "CI"}, headers=ann.headers)
    assert r.status_code == 201, r.text
    hook_url = web_node.url + urlsplit(r.json()["url"]).path

    page = await sign_in(await new_context(notifications=False), web_node.url, bea)
    await open_conversation(page, cid)
    assert (await api.send(ann, cid, "from a person")).status_code == 201
    async with httpx2.AsyncClient(event_hooks=schema_check.EVENT_HOOKS) as http:
        posted = await http.post(hook_url, json={"content": "build 7 green"})
    assert posted.status_code == 200, posted.text

    from_bot = page.locator("li.message", has_text="build 7 green")
    await expect(from_bot.locator(".sender")).to_contain_text("CI")
    await expect(from_bot.locator(".sender .bot-badge")).to_have_text("bot")
    from_ann = page.locator("li.message", has_text="from a person")
    await expect(from_ann.locator(".sender")).to_have_text("Ann")
    await expect(from_ann.locator(".bot-badge")).to_have_count(0)

    await page.click("#group-info-open")
    await expect(page.locator("#group-members li.member")).to_have_count(3)
    badges = page.locator("#group-members li.member .bot-badge")
    await expect(badges).to_have_count(1)
    bot_id = int(await badges.locator("xpath=ancestor::li[1]").get_attribute("data-user-id") or 0)
    hooks = await api.http.get(f"{BASE}/{cid}/webhooks", headers=ann.headers)
    assert bot_id == hooks.json()["webhooks"][0]["bot_id"]
    await shoot(page, artifacts, "bot-badge")
