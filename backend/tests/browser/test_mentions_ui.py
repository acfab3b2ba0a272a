"""Mentions and notification settings in the web client: highlighted names (drawn as text),
the conversation's notify level, and the Notifications dialog."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from tests.browser.support import NewContext, open_conversation, shoot, sign_in
from tests.helpers import Client, Node, eventually

MARKUP = "<b>bold</b>"


async def test_mentions_are_highlighted_and_settings_saved(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    ann, bob, cat = await api.user(), await api.user(), await api.user()
    conversation = await api.conversation(ann, bob, cat, title="team")
    cid = conversation["id"]
    r = await api.send(ann, cid, f"{MARKUP} @{bob.username.upper()}, see @{cat.username}.")
    assert r.status_code == 201 and r.json()["mentions"] == sorted([bob.id, cat.id])
    await api.send(ann, cid, f"nothing for {bob.username}@example.com")

    page = await sign_in(await new_context(notifications=False), web_node.url, bob)
    await open_conversation(page, cid)
    first = page.locator('#messages li.message[data-seq="1"]')
    await expect(first).to_have_class("message other mentions-me")
    await expect(first.locator(".text")).to_have_text(
        f"{MARKUP} @{bob.username.upper()}, see @{cat.username}."
    )
    await expect(first.locator("span.mention.me")).to_have_text(f"@{bob.username.upper()}")
    # Another participant's name: highlighted, less strongly; the full stop is not in it.
    await expect(first.locator("span.mention:not(.me)")).to_have_text(f"@{cat.username}")
    assert await first.locator(".text b").count() == 0  # markup stays text
    second = page.locator('#messages li.message[data-seq="2"]')
    await expect(second).not_to_have_class("mentions-me")
    assert await second.locator("span.mention").count() == 0
    await shoot(page, artifacts, "mentions-highlighted")

    # The conversation's notify level, next to the mute toggle.
    select = page.locator("#notify-level")
    await expect(select).to_be_enabled()
    await expect(select).to_have_value("all")
    await select.select_option("mentions")
    settings_url = f"/api/v1/messenger/conversations/{cid}/settings"

    async def saved() -> bool:
        r = await api.http.get(settings_url, headers=bob.headers)
        return bool(r.json()["notify"] == "mentions")

    await eventually(saved, what="the notify level to be saved")
    await expect(select).to_be_enabled()

    # The Notifications dialog: the browser's zone is offered (the context's is UTC).
    await page.click("#notification-settings")
    dialog = page.locator("#notification-settings-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#ns-save")).to_be_enabled()
    zone = await page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
    await expect(page.locator("#ns-time-zone")).to_have_value(zone)
    await expect(page.locator("#ns-quiet-start")).to_be_disabled()
    await page.locator("#ns-time-zone").select_option("Europe/Berlin")
    await page.check("#ns-quiet")
    await page.fill("#ns-quiet-start", "22:30")
    await page.fill("#ns-quiet-end", "06:45")
    await page.check("#ns-quiet-mentions")
    await page.locator("#ns-push-delay").select_option("60")
    await page.locator("#ns-preview").select_option("sender")
    await page.locator("#ns-locale").select_option("de")
    await shoot(page, artifacts, "mentions-notification-settings")
    await page.click("#ns-save")
    await expect(page.locator("#ns-status")).to_have_text("Saved.")
    r = await api.http.get("/api/v1/me/notification-settings", headers=bob.headers)
    # (The email fields are tests/browser/test_email_settings_ui.py's.)
    assert {k: v for k, v in r.json().items() if not k.startswith("email")} == {
        "time_zone": "Europe/Berlin",
        "quiet_hours": {"start": "22:30", "end": "06:45", "allow_mentions": True},
        "push_delay_seconds": 60,
        "preview": "sender",
        "locale": "de",
    }
    # Equal times are refused before anything is sent.
    await page.fill("#ns-quiet-end", "22:30")
    await page.click("#ns-save")
    await expect(page.locator("#ns-error")).to_be_visible()
    await page.click("#ns-close")
    await expect(dialog).to_be_hidden()
    # Opened again, it shows what the server holds.
    await page.click("#notification-settings")
    await expect(page.locator("#ns-quiet-end")).to_have_value("06:45")
    await expect(page.locator("#ns-time-zone")).to_have_value("Europe/Berlin")
