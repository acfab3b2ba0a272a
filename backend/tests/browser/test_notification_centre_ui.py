"""The notification centre (bell, unread count, list, open, dismiss, clear) and the test push
in the notification settings, against pushes sent through the real push path to the fakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import expect

from tests.browser.support import NewContext, SocketLog, shoot, sign_in
from tests.browser.test_notifications import VISIBILITY_STUB, hide
from tests.helpers import Client, Node, User, eventually
from tests.push_world import PushWorld

PAGE = 20  # notifications.js shows this many, then "Older notifications"


async def register(api: Client, user: User, token: str, provider: str, platform: str) -> str:
    r = await api.http.post(
        "/api/v1/messenger/devices/register",
        json={"device_token": token, "provider": provider, "platform": platform},
        headers=user.headers,
    )
    assert r.status_code in (200, 201), r.text
    device_id: str = r.json()["device_token_id"]
    return device_id


async def history(api: Client, user: User, **params: Any) -> dict[str, Any]:
    r = await api.http.get("/api/v1/me/notifications", params=params, headers=user.headers)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_bell_counts_lists_opens_dismisses_and_clears(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld, artifacts: Path
) -> None:
    lena = await api.user(display_name="Lena")
    max_ = await api.user(display_name="Max")
    cid = (await api.conversation(max_, lena))["id"]
    web_device = await register(api, lena, push_world.webpush.subscribe(), "web_push", "web")
    fcm_device = await register(api, lena, push_world.fcm_token(), "fcm", "android")

    # Lena has no socket open: each message is pushed to both of her devices. One at a time,
    # each once the one before was pushed: a burst in one conversation is one notification.
    sent = PAGE + 3
    for n in range(sent):
        r = await api.send(max_, cid, f"ping number {n}")
        assert r.status_code in (200, 201), r.text

        async def pushed(count: int = n + 1) -> bool:
            return (await history(api, lena))["unread"] == count

        await eventually(pushed, within=15.0, what=f"message {n} to be pushed")

    async def all_delivered() -> dict[str, Any] | None:
        first = await history(api, lena, limit=100)
        items = first["notifications"]
        done = len(items) == sent and all(
            {d["device_id"] for d in n["deliveries"]} == {web_device, fcm_device} for n in items
        )
        return first if done else None

    answer = await eventually(all_delivered, within=30.0, what="every push to be recorded")
    assert answer["unread"] == sent
    newest = answer["notifications"][0]
    assert newest["conversation_id"] == cid and newest["body"].endswith(f"ping number {sent - 1}")

    page = await sign_in(await new_context(notifications=False), web_node.url, lena)
    bell = page.locator("#notification-centre-toggle")
    await expect(page.locator("#notification-unread")).to_have_text(str(sent))
    await expect(bell).to_have_attribute("aria-label", f"Notifications ({sent} unread)")

    await bell.click()
    items = page.locator("#notification-list li.notification")
    await expect(items).to_have_count(PAGE)
    await expect(page.locator("#notification-list li.notification.not-opened")).to_have_count(PAGE)
    first = items.first
    await expect(first).to_have_attribute("data-notification-id", newest["id"])
    await expect(first.locator(".notification-title")).to_have_text(newest["title"])
    await expect(first.locator(".notification-body")).to_have_text(newest["body"])
    await expect(first.locator(".notification-state")).to_have_text("Not opened")
    await expect(first.locator(".notification-deliveries")).to_contain_text("Web Push: delivered")
    await expect(first.locator(".notification-deliveries")).to_contain_text(
        "Android (FCM): delivered"
    )
    await shoot(page, artifacts, "notification-centre")

    # Older ones come a page at a time (before=).
    await page.click("#notification-more")
    await expect(items).to_have_count(sent)
    await expect(page.locator("#notification-more")).to_be_hidden()
    shown = await items.evaluate_all("(nodes) => nodes.map((n) => n.dataset.notificationId)")
    assert shown == [n["id"] for n in answer["notifications"]]

    # Clicking one opens its conversation, and the server counts it opened in the page.
    await first.locator("button.notification-open").click()
    await expect(page.locator("#notification-centre")).to_be_hidden()
    await expect(page.locator("#chat-pane")).to_be_visible()
    await expect(page.locator("#chat-title")).to_have_text("Max")
    assert f"conversation={cid}" in page.url
    await expect(page.locator("#notification-unread")).to_have_text(str(sent - 1))

    async def opened() -> dict[str, Any] | None:
        items = (await history(api, lena, limit=1))["notifications"]
        return items[0] if items and items[0]["opened_at"] else None

    entry = await eventually(opened, what="the notification to be marked opened")
    assert entry["id"] == newest["id"]

    # Opening it showed the conversation, which read it: the others of that conversation
    # are read in the app now, not unread (yet not opened).
    async def all_read() -> bool:
        return (await history(api, lena))["unread"] == 0

    await eventually(all_read, what="the conversation's notifications counted read")

    # Dismiss one: gone from the list and from the server's history.
    await bell.click()
    await expect(first.locator(".notification-state")).to_contain_text("Opened")
    await expect(items.nth(1).locator(".notification-state")).to_have_text("Read in the app")
    await expect(page.locator("#notification-unread")).to_be_hidden()
    second_id = answer["notifications"][1]["id"]
    await page.locator(
        f'#notification-list li[data-notification-id="{second_id}"] button.notification-dismiss'
    ).click()
    await expect(
        page.locator(f'#notification-list li[data-notification-id="{second_id}"]')
    ).to_have_count(0)
    left = (await history(api, lena, limit=100))["notifications"]
    assert second_id not in {n["id"] for n in left} and len(left) == sent - 1

    # Clear all: nothing left, the badge goes.
    await page.click("#notification-clear")
    await expect(items).to_have_count(0)
    await expect(page.locator("#notification-empty")).to_be_visible()
    await expect(page.locator("#notification-unread")).to_be_hidden()
    cleared = await history(api, lena)
    assert cleared["notifications"] == [] and cleared["unread"] == 0


async def test_the_count_follows_messages_that_arrive_while_the_page_is_hidden(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld
) -> None:
    ines = await api.user(display_name="Ines")
    otto = await api.user(display_name="Otto")
    cid = (await api.conversation(otto, ines))["id"]
    await register(api, ines, push_world.webpush.subscribe(), "web_push", "web")

    ctx = await new_context(notifications=False)
    await ctx.add_init_script(VISIBILITY_STUB)
    page = await ctx.new_page()
    sockets = SocketLog(page)
    await sign_in(ctx, web_node.url, ines, page=page)
    await expect(page.locator("#notification-unread")).to_be_hidden()
    await hide(page, sockets)

    # Ines looks away: the server pushes her (as "idle"), and the page counts it in time.
    async def pushed() -> bool:
        return (await history(api, ines))["unread"] == 1

    r = await api.send(otto, cid, "are you there?")
    assert r.status_code in (200, 201), r.text
    await eventually(pushed, within=30.0, what="the message to be pushed")
    await expect(page.locator("#notification-unread")).to_have_text("1")


async def test_test_push_shows_each_devices_result(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld, artifacts: Path
) -> None:
    nora = await api.user(display_name="Nora")
    web_token = push_world.webpush.subscribe()
    web_device = await register(api, nora, web_token, "web_push", "web")
    fcm_device = await register(api, nora, push_world.fcm_token(), "fcm", "android")

    page = await sign_in(await new_context(notifications=False), web_node.url, nora)
    await page.click("#notification-settings")
    await page.click("#ns-test-push")
    result = page.locator("#ns-test-push-result li")
    await expect(result).to_have_count(2)
    web_row = page.locator(f'#ns-test-push-result li[data-device-id="{web_device}"]')
    fcm_row = page.locator(f'#ns-test-push-result li[data-device-id="{fcm_device}"]')
    await expect(web_row).to_have_attribute("data-outcome", "delivered")
    await expect(web_row).to_contain_text("Web Push: delivered")
    await expect(fcm_row).to_have_attribute("data-outcome", "delivered")
    await expect(fcm_row).to_contain_text("Android (FCM): delivered")
    await expect(page.locator("#ns-test-push-status")).to_have_text("Done.")
    await shoot(page, artifacts, "test-push")
    # It really went out: the fake push service took one for the browser.
    assert push_world.accepted("web_push", web_token)


async def test_test_push_without_devices_says_so(
    new_context: NewContext, web_node: Node, api: Client
) -> None:
    pia = await api.user(display_name="Pia")
    page = await sign_in(await new_context(notifications=False), web_node.url, pia)
    await page.click("#notification-settings")
    await page.click("#ns-test-push")
    await expect(page.locator("#ns-test-push-status")).to_contain_text("No device of yours")
    await expect(page.locator("#ns-test-push-result li")).to_have_count(0)
