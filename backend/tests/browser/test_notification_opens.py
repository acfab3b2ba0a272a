"""A click on a Web Push notification, in Chromium's service worker, records its open in
the notification history: "click" with no page of ours in front, "foreground" with one
visible and focused. The worker has no access token; the push's action token is the
credential."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Worker

from tests.browser.support import NewContext
from tests.browser.test_notifications import browser_of, hide, pushed, registered
from tests.browser.test_push import PushDriver, service_worker
from tests.helpers import Client, Node, User, eventually
from tests.push_world import PushWorld

# A plain click on the notification of `tag`; self.clients is replaced by a recorder
# whose windows are `front` (one visible, focused page of ours) or none.
CLICK = """
async ([tag, front]) => {
  const [notification] = await self.registration.getNotifications({ tag });
  if (!notification) return { error: 'no notification' };
  const calls = [];
  const page = {
    url: location.origin + '/', focused: true, visibilityState: 'visible', type: 'window',
    focus: async () => { calls.push(['focus']); return page; },
    postMessage: (message) => calls.push(['postMessage', message.type]),
    navigate: async () => page,
  };
  const real = Object.getOwnPropertyDescriptor(self, 'clients');
  Object.defineProperty(self, 'clients', {
    configurable: true,
    value: {
      matchAll: async () => (front ? [page] : []),
      openWindow: async (url) => { calls.push(['openWindow', url]); return null; },
    },
  });
  try {
    const done = await handleNotificationClick({ action: '', notification });
    return { done, calls };
  } finally {
    if (real) Object.defineProperty(self, 'clients', real);
    else delete self.clients;
  }
}
"""


async def opened_how(api: Client, user: User, notification_id: str) -> str | None:
    r = await api.http.get(f"/api/v1/me/notifications/{notification_id}", headers=user.headers)
    assert r.status_code == 200, r.text
    how: str | None = r.json()["opened_how"]
    return how


async def click(worker: Worker, tag: str, front: bool) -> Any:
    return await worker.evaluate(CLICK, [tag, front])


async def test_a_click_records_the_open_with_how(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld
) -> None:
    gus = await api.user(display_name="Gus")
    hal = await api.user(display_name="Hal")
    cid = (await api.conversation(hal, gus))["id"]
    subscription = push_world.webpush.subscribe()
    ctx, page, sockets = await browser_of(new_context, web_node, gus, subscription)
    await registered(api, gus, 1)
    driver = await PushDriver.attach(page, web_node.url)
    worker = await service_worker(ctx)
    await hide(page, sockets)

    # No page of ours in front: "click", and the conversation opens.
    assert (await api.send(hal, cid, "first")).status_code == 201
    first = await pushed(push_world, subscription, 1)
    assert "Notification displayed" in await driver.deliver(first)
    answer = await click(worker, cid, front=False)
    assert answer["done"] == "opened" and answer["calls"][0][0] == "openWindow", answer
    first_id = first["data"]["notification_id"]
    assert (
        await eventually(lambda: opened_how(api, gus, first_id), what="the click's open recorded")
        == "click"
    )

    # A visible, focused page of ours: "foreground".
    assert (await api.send(hal, cid, "second")).status_code == 201
    second = await pushed(push_world, subscription, 2)
    assert "Notification displayed" in await driver.deliver(second)
    answer = await click(worker, cid, front=True)
    assert answer["done"] == "opened" and ["focus"] in answer["calls"], answer
    second_id = second["data"]["notification_id"]
    assert (
        await eventually(
            lambda: opened_how(api, gus, second_id), what="the foreground open recorded"
        )
        == "foreground"
    )
