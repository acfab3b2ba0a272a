"""Notifications that follow the person, in Chromium: a hidden or idle tab lets the push
through, Reply and Mark as read work from the service worker without a page, a read on one
profile takes the notification down on another, a push that arrives late changes nothing,
a deleted message takes down only its own notification, and the app badge follows the
unread total.

Pushes travel for real up to the local fake push service (which decrypts them with the
subscriber's keys); from there the test hands each payload to the browser's service worker
through CDP, as a push service would.
"""

from __future__ import annotations

from typing import Any

from playwright.async_api import BrowserContext, Page, Worker, expect
from sqlalchemy import select

from app.messenger.models import PushDecision
from tests.browser.support import NewContext, SocketLog, devices, open_conversation, sign_in
from tests.browser.test_push import PushDriver, service_worker, shown_notifications
from tests.helpers import Client, Node, Socket, User, eventually
from tests.push_world import PushWorld

# The web client's override of its idle time (attention.js), 60 s in use.
IDLE_KEY = "messenger.idleAfterMs"

# Lets a test hide the page as a background tab would be (headless Chromium keeps every tab
# visible): document.visibilityState and a visibilitychange event, as the page sees them.
VISIBILITY_STUB = """
(() => {
  let hidden = false;
  const proto = Document.prototype;
  const state = () => (hidden ? 'hidden' : 'visible');
  Object.defineProperty(proto, 'visibilityState', { configurable: true, get: state });
  Object.defineProperty(proto, 'hidden', { configurable: true, get: () => hidden });
  window.__setHidden = (value) => {
    hidden = value;
    document.dispatchEvent(new Event('visibilitychange'));
  };
})();
"""

# Records what the worker sets the app badge to (the real calls do nothing where the site
# is not installed as an app).
BADGE_PROBE = """
() => {
  self.__badges = [];
  const record = (value) => { self.__badges.push(value); return Promise.resolve(); };
  navigator.setAppBadge = (count) => record(count ?? 'flag');
  navigator.clearAppBadge = () => record(0);
  return true;
}
"""

# The worker's notificationclick handler, given a notification it shows: a real click cannot
# be made, and a synthetic event cannot waitUntil. self.clients is replaced by a recorder
# (client.focus() is refused outside a real click).
CLICK = """
async ([tag, action, reply]) => {
  const [notification] = await self.registration.getNotifications({ tag });
  if (!notification) return { error: 'no notification' };
  const calls = [];
  const real = Object.getOwnPropertyDescriptor(self, 'clients');
  Object.defineProperty(self, 'clients', {
    configurable: true,
    value: {
      matchAll: async () => [],
      openWindow: async (url) => { calls.push(['openWindow', url]); return null; },
    },
  });
  try {
    const done = await handleNotificationClick({ action, reply, notification });
    return { done, calls };
  } finally {
    if (real) Object.defineProperty(self, 'clients', real);
    else delete self.clients;
  }
}
"""


async def browser_of(
    new_context: NewContext, node: Node, user: User, subscription: str
) -> tuple[BrowserContext, Page, SocketLog]:
    """A browser profile signed in as `user`, registered for pushes on `subscription`,
    with a page that can be hidden."""
    ctx = await new_context(subscription=subscription)
    await ctx.add_init_script(VISIBILITY_STUB)
    page = await ctx.new_page()
    sockets = SocketLog(page)
    await sign_in(ctx, node.url, user, page=page)
    return ctx, page, sockets


async def registered(api: Client, user: User, count: int) -> list[dict]:
    async def check() -> list[dict] | None:
        found = await devices(api, user)
        return found if len(found) == count else None

    found: list[dict] = await eventually(check, within=15.0, what="the browsers to register")
    return found


def activity(sockets: SocketLog) -> list[str]:
    """The states the page reported on its sockets, in order."""
    return [f["state"] for frames in sockets.sent for f in frames if f.get("type") == "activity"]


async def hide(page: Page, sockets: SocketLog) -> None:
    await page.evaluate("window.__setHidden(true)")
    await eventually(
        lambda: activity(sockets)[-1:] == ["idle"], within=10.0, what="the page to report idle"
    )


async def pushed(world: PushWorld, subscription: str, seq: int) -> dict[str, Any]:
    """The message push the push service took for this subscription for message `seq`."""

    def check() -> dict[str, Any] | None:
        for push in world.accepted("web_push", subscription):
            payload = push.payload or {}
            if payload.get("type") != "clear" and payload.get("data", {}).get("seq") == seq:
                return payload
        return None

    found: dict[str, Any] = await eventually(
        check, within=20.0, what=f"the Web Push request for message {seq}"
    )
    return found


def clears(world: PushWorld, subscription: str) -> list[dict[str, Any]]:
    """The clearing pushes the push service took for this subscription."""
    payloads = [push.payload or {} for push in world.accepted("web_push", subscription)]
    return [p for p in payloads if p.get("type") == "clear"]


async def decision(node: Node, user: User, conversation_id: str, seq: int) -> str | None:
    """Why the push service did or did not push `user` for message `seq`, once decided."""
    decisions = PushDecision.__table__
    async with node.services.engine.connect() as conn:
        reason: str | None = await conn.scalar(
            select(decisions.c.reason).where(
                decisions.c.user_id == user.id,
                decisions.c.conversation_id == conversation_id,
                decisions.c.first_seq <= seq,
                decisions.c.last_seq >= seq,
            )
        )
    return reason


async def renotifies(worker: Worker, tag: str) -> bool:
    """Whether the conversation's notification alerted when it last replaced another."""
    return await worker.evaluate(
        """async (tag) => {
            const [n] = await self.registration.getNotifications({ tag });
            return n.renotify;
        }""",
        tag,
    )


async def badges(worker: Worker) -> list[Any]:
    return await worker.evaluate("self.__badges")


async def test_a_hidden_tab_lets_the_push_through(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld
) -> None:
    ada = await api.user(display_name="Ada")
    ben = await api.user(display_name="Ben")
    cid = (await api.conversation(ben, ada))["id"]
    subscription = push_world.webpush.subscribe()
    ctx, page, sockets = await browser_of(new_context, web_node, ada, subscription)
    await registered(api, ada, 1)
    driver = await PushDriver.attach(page, web_node.url)
    worker = await service_worker(ctx)
    assert await worker.evaluate(BADGE_PROBE)

    # Looking at the list: her open tab is attention, so the push service hears nothing.
    assert (await api.send(ben, cid, "are you looking?")).status_code == 201
    await expect(page.locator(f'[data-conversation-id="{cid}"] .unread')).to_have_text("1")
    assert (
        await eventually(
            lambda: decision(web_node, ada, cid, 1), within=15.0, what="the push decision"
        )
        == "online"
    )
    # The tab goes to the background: the page says so, and the next message is pushed.
    await hide(page, sockets)
    r = await api.send(ben, cid, "now you are not")
    assert r.status_code == 201, r.text
    payload = await pushed(push_world, subscription, 2)
    assert payload["data"]["conversation_id"] == cid
    assert payload["data"]["seq"] == 2
    assert payload["tag"] == cid
    assert payload["badge"] == 2
    assert payload["action_token"]
    assert [p.payload["data"]["seq"] for p in push_world.accepted("web_push", subscription)] == [2]

    # That payload, in this browser's worker: one notification for the conversation, with
    # Reply (inline text) and Mark as read, and the badge set to the unread total.
    assert "Notification displayed" in await driver.deliver(payload)
    [shown] = await shown_notifications(page, cid)
    assert shown["title"] == payload["title"]
    assert shown["body"] == payload["body"]
    assert shown["data"]["seq"] == 2
    actions = await worker.evaluate(
        """async (tag) => {
            const [n] = await self.registration.getNotifications({ tag });
            return n.actions.map((a) => [a.action, a.type]);
        }""",
        cid,
    )
    assert actions == [["reply", "text"], ["read", "button"]]
    assert await badges(worker) == [2]


async def test_an_idle_tab_lets_the_push_through(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld
) -> None:
    cleo = await api.user(display_name="Cleo")
    dan = await api.user(display_name="Dan")
    cid = (await api.conversation(dan, cleo))["id"]
    subscription = push_world.webpush.subscribe()
    ctx = await new_context(subscription=subscription)
    # The idle time made short for the test (before the app starts).
    await ctx.add_init_script(f"localStorage.setItem({IDLE_KEY!r}, '300')")
    page = await ctx.new_page()
    sockets = SocketLog(page)
    await sign_in(ctx, web_node.url, cleo, page=page)
    await registered(api, cleo, 1)
    driver = await PushDriver.attach(page, web_node.url)
    # Untouched, the visible tab turns idle by itself...
    await eventually(
        lambda: activity(sockets)[-1:] == ["idle"], within=10.0, what="the page to turn idle"
    )
    assert (await api.send(dan, cid, "still there?")).status_code == 201
    payload = await pushed(push_world, subscription, 1)
    assert "Notification displayed" in await driver.deliver(payload)
    [shown] = await shown_notifications(page, cid)
    assert shown["body"] == payload["body"]
    # ... and is active again once touched.
    await page.mouse.move(200, 200)
    await page.keyboard.press("Shift")
    await eventually(
        lambda: activity(sockets)[-1:] == ["active"], within=10.0, what="the page to be back"
    )


async def test_reply_and_mark_as_read_from_the_notification(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld
) -> None:
    eve = await api.user(display_name="Eve")
    finn = await api.user(display_name="Finn")
    cid = (await api.conversation(finn, eve))["id"]
    subscription = push_world.webpush.subscribe()
    ctx, page, sockets = await browser_of(new_context, web_node, eve, subscription)
    await registered(api, eve, 1)
    driver = await PushDriver.attach(page, web_node.url)
    worker = await service_worker(ctx)
    await hide(page, sockets)
    finn_socket = await Socket.connect(web_node, finn)
    try:
        assert (await api.send(finn, cid, "lunch at 1?")).status_code == 201
        payload = await pushed(push_world, subscription, 1)
        assert "Notification displayed" in await driver.deliver(payload)

        # Reply: the worker posts the typed text with the notification's token, and Finn
        # gets it from Eve as any message.
        answer = await worker.evaluate(CLICK, [cid, "reply", "yes, see you there"])
        assert answer == {"done": "replied", "calls": []}, answer
        frame = await finn_socket.expect("message.new", timeout=10)
        while frame["message"]["sender_id"] != eve.id:  # his own, sent by REST, first
            frame = await finn_socket.expect("message.new", timeout=10)
        assert frame["message"]["content"] == "yes, see you there"
        assert frame["message"]["conversation_id"] == cid
        assert await shown_notifications(page, cid) == []  # the click took it down

        # Mark as read: up to the notified message, told to Finn as any read.
        assert (await api.send(finn, cid, "great")).status_code == 201
        message_push = await pushed(push_world, subscription, 3)
        assert "Notification displayed" in await driver.deliver(message_push)
        answer = await worker.evaluate(CLICK, [cid, "read", None])
        assert answer == {"done": "read", "calls": []}, answer
        await finn_socket.expect("read", timeout=10, user_id=eve.id, seq=3)

        # A browser that gives no inline reply: the click opens the conversation instead.
        assert (await api.send(finn, cid, "one more")).status_code == 201
        message_push = await pushed(push_world, subscription, 4)
        assert "Notification displayed" in await driver.deliver(message_push)
        answer = await worker.evaluate(CLICK, [cid, "reply", None])
        assert answer == {
            "done": "opened",
            "calls": [["openWindow", f"{web_node.url}/?conversation={cid}"]],
        }, answer
    finally:
        await finn_socket.close()
    contents = [m["content"] for m in await api.messages(finn, cid)]
    assert contents == ["lunch at 1?", "yes, see you there", "great", "one more"]


async def test_a_read_on_one_profile_clears_the_other_and_the_badge(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld
) -> None:
    gil = await api.user(display_name="Gil")
    hana = await api.user(display_name="Hana")
    cid = (await api.conversation(hana, gil))["id"]
    laptop_sub, desktop_sub = push_world.webpush.subscribe(), push_world.webpush.subscribe()
    _, laptop_page, laptop_sockets = await browser_of(new_context, web_node, gil, laptop_sub)
    desktop, desktop_page, desktop_sockets = await browser_of(
        new_context, web_node, gil, desktop_sub
    )
    await registered(api, gil, 2)
    laptop_driver = await PushDriver.attach(laptop_page, web_node.url)
    desktop_driver = await PushDriver.attach(desktop_page, web_node.url)
    desktop_worker = await service_worker(desktop)
    assert await desktop_worker.evaluate(BADGE_PROBE)
    await hide(laptop_page, laptop_sockets)
    await hide(desktop_page, desktop_sockets)

    # One message at a time: sent together, they would be planned together, and only
    # the second pushed (it stands for both).
    assert (await api.send(hana, cid, "first")).status_code == 201
    pushes_of_first = [await pushed(push_world, sub, 1) for sub in (laptop_sub, desktop_sub)]
    assert (await api.send(hana, cid, "second")).status_code == 201
    # Both profiles show the conversation's notification: one, for both messages.
    for first, sub, driver in zip(
        pushes_of_first, (laptop_sub, desktop_sub), (laptop_driver, desktop_driver), strict=True
    ):
        second = await pushed(push_world, sub, 2)
        assert second["count"] == 2
        assert "Notification displayed" in await driver.deliver(first)
        assert "Notification displayed" in await driver.deliver(second)
    [shown] = await shown_notifications(desktop_page, cid)
    assert shown["data"]["seq"] == 2
    assert await shown_notifications(laptop_page, cid) != []
    assert (await badges(desktop_worker))[-1] == 2
    # The second alerted again (more is unread); the same push once more would not.
    assert await renotifies(desktop_worker, cid) is True
    second = await pushed(push_world, desktop_sub, 2)
    await desktop_driver.deliver(second)
    assert await renotifies(desktop_worker, cid) is False
    # The first message's push arriving after the second's (a retry, another route through
    # the push service) changes nothing: neither the text shown nor the badge.
    # Its badge as it was when only the first was unread.
    late = {**await pushed(push_world, desktop_sub, 1), "badge": 1}
    assert "Notification displayed" not in await desktop_driver.deliver(late)
    [shown] = await shown_notifications(desktop_page, cid)
    assert shown["data"]["seq"] == 2 and shown["body"] == second["body"]
    assert (await badges(desktop_worker))[-1] == 2
    # A read up to the first message elsewhere leaves the notification of the second.
    await desktop_driver.deliver(
        {"type": "clear", "tag": cid, "conversation_id": cid, "seq": 1, "badge": 1}
    )
    assert [n["data"]["seq"] for n in await shown_notifications(desktop_page, cid)] == [2]
    assert (await badges(desktop_worker))[-1] == 1

    # Gil comes back to the laptop and reads the conversation there.
    await laptop_page.evaluate("window.__setHidden(false)")
    await open_conversation(laptop_page, cid)
    await expect(laptop_page.locator("#messages li.message")).to_have_count(2)

    # The desktop's worker is told: its notification goes, and the badge with it.
    [clear] = await eventually(
        lambda: clears(push_world, desktop_sub), within=20.0, what="the clearing push"
    )
    assert clear["tag"] == cid
    assert clear["conversation_id"] == cid
    assert clear["seq"] == 2
    assert clear["badge"] == 0
    await desktop_driver.deliver(clear)
    assert await shown_notifications(desktop_page, cid) == []
    assert (await badges(desktop_worker))[-1] == 0
    # A push that comes after the read that covers it is not shown again.
    assert "Notification displayed" not in await desktop_driver.deliver(second)
    assert await shown_notifications(desktop_page, cid) == []


async def test_a_deleted_message_takes_down_only_its_own_notification(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld
) -> None:
    """A clear with `reason: "deleted"` and `message_id` closes the notification showing
    that message, leaves one showing another, and marks nothing read."""
    ivy = await api.user(display_name="Ivy")
    jon = await api.user(display_name="Jon")
    cid = (await api.conversation(jon, ivy))["id"]
    subscription = push_world.webpush.subscribe()
    ctx, page, sockets = await browser_of(new_context, web_node, ivy, subscription)
    await registered(api, ivy, 1)
    driver = await PushDriver.attach(page, web_node.url)
    worker = await service_worker(ctx)
    assert await worker.evaluate(BADGE_PROBE)
    await hide(page, sockets)
    # One at a time, so each gets its own push (a burst is planned as one).
    assert (await api.send(jon, cid, "first")).status_code == 201
    first = await pushed(push_world, subscription, 1)
    assert (await api.send(jon, cid, "second")).status_code == 201
    second = await pushed(push_world, subscription, 2)
    assert "Notification displayed" in await driver.deliver(second)

    def deleted(message: dict[str, Any], badge: int) -> dict[str, Any]:
        return {
            "type": "clear",
            "reason": "deleted",
            "tag": cid,
            "conversation_id": cid,
            "message_id": message["data"]["message_id"],
            "seq": message["data"]["seq"],
            "badge": badge,
        }

    # The first message deleted: the notification shows the second, and stays.
    await driver.deliver(deleted(first, 1))
    assert [n["data"]["seq"] for n in await shown_notifications(page, cid)] == [2]
    assert (await badges(worker))[-1] == 1
    # The second deleted: its notification goes, and nothing counts as read.
    await driver.deliver(deleted(second, 0))
    assert await shown_notifications(page, cid) == []
    assert (await badges(worker))[-1] == 0
    assert await worker.evaluate("(cid) => loadReadMark(cid)", cid) is None
    # So a push for an earlier message, still unread, is shown.
    assert "Notification displayed" in await driver.deliver(first)
    assert [n["data"]["seq"] for n in await shown_notifications(page, cid)] == [1]
