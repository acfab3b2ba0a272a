"""Notifications: enabling them, pushes shown by the service worker, and where a click goes."""

from __future__ import annotations

import json
from typing import Any

from playwright.async_api import BrowserContext, CDPSession, Page, Worker, expect

from tests.browser.support import NewContext, devices, sign_in
from tests.helpers import Client, Node, Socket, User, eventually
from tests.push_world import PushWorld


class PushDriver:
    """Delivers pushes to the page's service worker through CDP, without a push service."""

    def __init__(self, page: Page, cdp: CDPSession, registration_id: str, events: list) -> None:
        self.page = page
        self.cdp = cdp
        self.registration_id = registration_id
        self.events = events

    @classmethod
    async def attach(cls, page: Page, origin: str) -> PushDriver:
        await page.evaluate("navigator.serviceWorker.ready.then(() => true)")
        cdp = await page.context.new_cdp_session(page)
        registrations: list[dict] = []
        events: list[dict] = []
        cdp.on(
            "ServiceWorker.workerRegistrationUpdated",
            lambda e: registrations.extend(e["registrations"]),
        )
        cdp.on(
            "BackgroundService.backgroundServiceEventReceived",
            lambda e: events.append(e["backgroundServiceEvent"]),
        )
        for service in ("pushMessaging", "notifications"):
            await cdp.send("BackgroundService.startObserving", {"service": service})
            await cdp.send(
                "BackgroundService.setRecording", {"shouldRecord": True, "service": service}
            )
        await cdp.send("ServiceWorker.enable")

        def ours() -> str | None:
            live = [
                r["registrationId"]
                for r in registrations
                if r["scopeURL"] == origin + "/" and not r.get("isDeleted")
            ]
            return live[-1] if live else None

        registration_id = await eventually(
            ours, within=15.0, what="the service worker registration"
        )
        return cls(page, cdp, registration_id, events)

    async def deliver(self, payload: dict) -> list[str]:
        """Pushes `payload` and waits for the worker to finish; returns the events' names."""
        start = len(self.events)
        origin = self.page.url.split("/", 3)[:3]
        await self.cdp.send(
            "ServiceWorker.deliverPushMessage",
            {
                "origin": "/".join(origin),
                "registrationId": self.registration_id,
                "data": json.dumps(payload),
            },
        )

        def names() -> list[str]:
            return [e["eventName"] for e in self.events[start:]]

        await eventually(
            lambda: "Push event completed" in names(), within=15.0, what="the push to be handled"
        )
        return names()


async def shown_notifications(page: Page, tag: str) -> list[dict[str, Any]]:
    return await page.evaluate(
        """async (tag) => {
            const registration = await navigator.serviceWorker.ready;
            const shown = await registration.getNotifications({ tag });
            return shown.map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data }));
        }""",
        tag,
    )


async def service_worker(ctx: BrowserContext) -> Worker:
    if ctx.service_workers:
        return ctx.service_workers[0]
    return await ctx.wait_for_event("serviceworker")


def server_payload(base: str, cid: str, sender: User, body: str, seq: int) -> dict:
    """A Web Push payload as the server builds it (see API.md, Push)."""
    return {
        "title": f"{sender.display_name} • {sender.display_name}",
        "body": body,
        "data": {
            "type": "message.new",
            "conversation_id": cid,
            "message_id": f"m-{cid}-{seq}",
            "notification_id": f"n-{cid}-{seq}",
            "sender_id": sender.id,
            "seq": seq,
        },
        "tag": cid,
        "url": f"{base}/?conversation={cid}",
    }


async def test_enable_notifications_registers_the_browser_and_pushes_reach_it(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld
) -> None:
    lena = await api.user(display_name="Lena")
    max_ = await api.user(display_name="Max")
    cid = (await api.conversation(max_, lena))["id"]
    subscription = push_world.webpush.subscribe()
    # Permission not granted yet: the client offers to turn notifications on.
    ctx = await new_context(notifications=False, subscription=subscription)
    page = await sign_in(ctx, web_node.url, lena)
    banner = page.locator("#notifications-banner")
    await expect(banner).to_be_visible()
    await expect(page.locator("#enable-notifications")).to_be_visible()
    assert await devices(api, lena) == []

    # The user clicks, and answers the browser's prompt with "Allow".
    await ctx.grant_permissions(["notifications"], origin=web_node.url)
    await page.click("#enable-notifications")
    await expect(banner).to_be_hidden()
    [device] = await eventually(
        lambda: devices(api, lena), within=15.0, what="the device to be registered"
    )
    assert device["provider"] == "web_push"
    assert device["platform"] == "web"
    assert device["is_active"] is True
    assert device["device_name"] == "Chrome on Linux"
    stub = await page.evaluate("window.__pushStub")
    assert stub["subscribe"] == 1, stub
    assert stub["key"] == push_world.settings["vapid_public_key"]  # the server's VAPID key
    assert await page.evaluate(
        "navigator.serviceWorker.getRegistration('/').then((r) => r?.active?.scriptURL)"
    ) == (web_node.url + "/sw.js")

    # With no page open Lena is offline: Max's message goes to the subscription the server
    # stored, and the fake push service decrypts it with the subscriber's keys.
    watcher = await Socket.connect(web_node, max_)
    try:
        await page.close()
        await watcher.expect("presence", timeout=10, user_id=lena.id, online=False)
    finally:
        await watcher.close()
    r = await api.send(max_, cid, "Are you there, Lena?")
    assert r.status_code == 201, r.text
    sent = r.json()
    [push] = await eventually(
        lambda: push_world.accepted("web_push", subscription),
        within=15.0,
        what="the Web Push request",
    )
    payload = push.payload
    assert payload is not None
    assert payload["title"] == "Max • Max"
    assert payload["body"] == "Are you there, Lena?"
    assert payload["tag"] == cid
    assert payload["url"] == f"{web_node.url}/?conversation={cid}"
    expected = {
        "type": "message.new",
        "conversation_id": cid,
        "message_id": sent["id"],
        "sender_id": max_.id,
        "seq": 1,
    }
    assert {k: payload["data"].get(k) for k in expected} == expected

    # That very payload, delivered to this browser's service worker, shows the notification.
    page = await ctx.new_page()
    await page.goto(web_node.url + "/")
    await expect(page.locator("#main-view")).to_be_visible()
    driver = await PushDriver.attach(page, web_node.url)
    assert "Notification displayed" in await driver.deliver(payload)
    [shown] = await shown_notifications(page, cid)
    assert (shown["title"], shown["body"]) == ("Max • Max", "Are you there, Lena?")
    assert {k: shown["data"][k] for k in ("url", "conversation_id", "seq")} == {
        "url": f"{web_node.url}/?conversation={cid}",
        "conversation_id": cid,
        "seq": 1,
    }


async def test_pushes_show_replace_and_skip_the_chat_on_screen(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld
) -> None:
    nora = await api.user(display_name="Nora")
    oscar = await api.user(display_name="Oscar")
    pete = await api.user(display_name="Pete")
    with_oscar = (await api.conversation(nora, oscar))["id"]
    with_pete = (await api.conversation(nora, pete))["id"]
    ctx = await new_context(subscription=push_world.webpush.subscribe())
    page = await sign_in(ctx, web_node.url, nora, f"/?conversation={with_oscar}")
    await expect(page.locator("#chat-title")).to_have_text("Oscar")
    driver = await PushDriver.attach(page, web_node.url)
    base = web_node.url

    # A push for another conversation shows a notification built from the payload.
    events = await driver.deliver(server_payload(base, with_pete, pete, "first from Pete", 1))
    assert "Notification displayed" in events
    [shown] = await shown_notifications(page, with_pete)
    assert shown["title"] == "Pete • Pete"
    assert shown["body"] == "first from Pete"
    assert shown["tag"] == with_pete
    assert shown["data"] == {
        "url": f"{base}/?conversation={with_pete}",
        "conversation_id": with_pete,
        "message_id": f"m-{with_pete}-1",
        "notification_id": f"n-{with_pete}-1",
        "seq": 1,
        "count": 1,
        "action_token": None,  # none in this payload: no Reply or Mark as read then
        "open_token": None,  # a message's open is recorded with its action token
    }

    # A second one for the same conversation replaces it.
    events = await driver.deliver(server_payload(base, with_pete, pete, "second from Pete", 2))
    assert "Notification displayed" in events
    [shown] = await shown_notifications(page, with_pete)
    assert shown["body"] == "second from Pete"

    # The worker sees this page as a focused window on the Oscar chat: nothing is shown for it.
    worker = await service_worker(ctx)
    windows = await worker.evaluate(
        """async () => (await self.clients.matchAll({ type: 'window', includeUncontrolled: true }))
            .map((c) => ({ url: c.url, focused: c.focused, visibility: c.visibilityState }))"""
    )
    assert {
        "url": f"{base}/?conversation={with_oscar}",
        "focused": True,
        "visibility": "visible",
    } in (windows)
    events = await driver.deliver(server_payload(base, with_oscar, oscar, "hi Nora", 1))
    assert "Notification displayed" not in events
    assert await shown_notifications(page, with_oscar) == []
    # Pete's notification is still there.
    assert [n["body"] for n in await shown_notifications(page, with_pete)] == ["second from Pete"]

    # Once the window shows the list instead, the same kind of push is shown.
    await page.goto(base + "/")
    await expect(page.locator("#main-view")).to_be_visible()
    events = await driver.deliver(server_payload(base, with_oscar, oscar, "hi again", 2))
    assert "Notification displayed" in events
    [shown] = await shown_notifications(page, with_oscar)
    assert (shown["title"], shown["body"]) == ("Oscar • Oscar", "hi again")


CLICK_CASES = """
() => {
  const here = self.location.origin;
  const win = (name, path, focused = false, origin = here) =>
    ({ name, url: origin + path, focused, visibilityState: 'visible' });
  const pick = (clients, url) => {
    const target = chooseClickTarget(clients, url);
    return { action: target.action, client: target.client?.name ?? null, url: target.url ?? null };
  };
  const url = '/?conversation=c1';
  return {
    showingIt: pick([win('list', '/', true), win('chat', '/?conversation=c1')], url),
    focusedApp: pick([win('other', '/?conversation=c9'), win('list', '/', true)], url),
    anyApp: pick([win('other', '/?conversation=c9')], url),
    otherPage: pick([win('health', '/health', true)], url),
    foreignOnly: pick([win('x', '/?conversation=c1', true, 'https://elsewhere.example')], url),
    none: pick([], url),
  };
}
"""

SHOW_CASES = """
() => {
  const here = self.location.origin;
  const win = (path, focused, visibilityState = 'visible') =>
    ({ url: here + path, focused, visibilityState });
  return {
    focusedOnIt: shouldShowNotification([win('/?conversation=c1', true)], 'c1'),
    numericId: shouldShowNotification([win('/?conversation=7', true)], 7),
    unfocused: shouldShowNotification([win('/?conversation=c1', false)], 'c1'),
    hidden: shouldShowNotification([win('/?conversation=c1', true, 'hidden')], 'c1'),
    otherChat: shouldShowNotification([win('/?conversation=c2', true)], 'c1'),
    list: shouldShowNotification([win('/', true)], 'c1'),
    noWindows: shouldShowNotification([], 'c1'),
    noConversation: shouldShowNotification([win('/?conversation=c1', true)], null),
  };
}
"""

PAYLOAD_CASES = """
() => {
  const full = notificationFromPayload({
    title: 'Max • Max', body: 'hi', tag: 'c1',
    url: 'http://localhost:8000/?conversation=c1',
    data: { type: 'message.new', conversation_id: 'c1', seq: 3 },
  });
  const bare = notificationFromPayload({});
  return {
    full: { title: full.title, body: full.options.body, tag: full.options.tag,
            renotify: full.options.renotify, data: full.options.data },
    bare: { title: bare.title, body: bare.options.body, tag: bare.options.tag ?? null,
            renotify: bare.options.renotify, data: bare.options.data },
    ids: [conversationIdFromUrl('/?conversation=abc'), conversationIdFromUrl('/'),
          conversationIdFromUrl(here() + '/?conversation=a%2Fb')],
  };
  function here() { return self.location.origin; }
}
"""

# handleClick with self.clients replaced by recording fakes (a real click cannot be made, and
# client.focus() is refused outside a real notificationclick).
HANDLE_CLICK = """
async ([windows, data]) => {
  const calls = [];
  const fake = (url, focused) => ({
    url: self.location.origin + url, focused, visibilityState: 'visible',
    focus() { calls.push(['focus', url]); return Promise.resolve(this); },
    postMessage(message) { calls.push(['postMessage', url, message]); },
    navigate(to) { calls.push(['navigate', url, to]); return Promise.resolve(null); },
  });
  const clients = windows.map(([url, focused]) => fake(url, focused));
  // On the global scope `clients` is an own property: keep it to put it back.
  const real = Object.getOwnPropertyDescriptor(self, 'clients');
  Object.defineProperty(self, 'clients', {
    configurable: true,
    value: {
      matchAll: async () => clients,
      openWindow: async (url) => { calls.push(['openWindow', url]); return null; },
    },
  });
  try {
    await handleClick(data);
  } finally {
    if (real) Object.defineProperty(self, 'clients', real);
    else delete self.clients;
  }
  return calls;
}
"""


async def test_notification_click_choices(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld
) -> None:
    quinn = await api.user(display_name="Quinn")
    rosa = await api.user(display_name="Rosa")
    cid = (await api.conversation(quinn, rosa))["id"]
    ctx = await new_context(subscription=push_world.webpush.subscribe())
    page = await sign_in(ctx, web_node.url, quinn)
    await page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    worker = await service_worker(ctx)
    base = web_node.url
    target = f"{base}/?conversation=c1"

    # Where a click goes: the window showing the conversation, else the focused app window,
    # else any app window; another page of ours is navigated; with none, a new window opens.
    assert await worker.evaluate(CLICK_CASES) == {
        "showingIt": {"action": "focus", "client": "chat", "url": None},
        "focusedApp": {"action": "focus", "client": "list", "url": None},
        "anyApp": {"action": "focus", "client": "other", "url": None},
        "otherPage": {"action": "navigate", "client": "health", "url": target},
        "foreignOnly": {"action": "open", "client": None, "url": target},
        "none": {"action": "open", "client": None, "url": target},
    }
    assert await worker.evaluate(SHOW_CASES) == {
        "focusedOnIt": False,
        "numericId": False,
        "unfocused": True,
        "hidden": True,
        "otherChat": True,
        "list": True,
        "noWindows": True,
        "noConversation": True,
    }
    assert await worker.evaluate(PAYLOAD_CASES) == {
        # A url on another origin (the server's idea of its address) is replaced by ours.
        "full": {
            "title": "Max • Max",
            "body": "hi",
            "tag": "c1",
            "renotify": True,
            "data": {
                "url": target,
                "conversation_id": "c1",
                "message_id": None,  # none in this payload
                "notification_id": None,
                "seq": 3,
                "count": 1,
                "action_token": None,
                "open_token": None,
            },
        },
        "bare": {
            "title": "New message",
            "body": "",
            "tag": None,
            "renotify": False,
            "data": {
                "url": base + "/",
                "conversation_id": None,
                "message_id": None,
                "notification_id": None,
                "seq": None,
                "count": 1,
                "action_token": None,
                "open_token": None,
            },
        },
        "ids": ["abc", None, "a/b"],
    }

    # With the real window list: the page (on the list) is the one to focus.
    real = await worker.evaluate(
        """async (url) => {
            const windows = await self.clients.matchAll({ type: 'window' });
            const target = chooseClickTarget(windows, url);
            return { action: target.action, url: target.client?.url ?? null };
        }""",
        f"/?conversation={cid}",
    )
    assert real == {"action": "focus", "url": base + "/"}

    # The click handler's actions: focus the window and tell it which conversation to open...
    data = {"url": f"{base}/?conversation={cid}", "conversation_id": cid}
    calls = await worker.evaluate(HANDLE_CLICK, [[["/", True]], data])
    assert calls == [
        ["focus", "/"],
        ["postMessage", "/", {"type": "open-conversation", "conversation_id": cid}],
    ]
    # ... or open a new window when none of ours is open.
    calls = await worker.evaluate(HANDLE_CLICK, [[], data])
    assert calls == [["openWindow", f"{base}/?conversation={cid}"]]
    # ... or, for another page of ours that cannot be navigated, a new window too.
    calls = await worker.evaluate(HANDLE_CLICK, [[["/health", True]], data])
    assert calls == [
        ["navigate", "/health", f"{base}/?conversation={cid}"],
        ["openWindow", f"{base}/?conversation={cid}"],
    ]

    # And the page does open the conversation the worker names.
    await worker.evaluate(
        """async (cid) => {
            const message = { type: 'open-conversation', conversation_id: cid };
            for (const w of await self.clients.matchAll({ type: 'window' })) w.postMessage(message);
        }""",
        cid,
    )
    await expect(page.locator("#chat-pane")).to_be_visible()
    await expect(page.locator("#chat-title")).to_have_text("Rosa")
    await expect(page).to_have_url(f"{base}/?conversation={cid}")
