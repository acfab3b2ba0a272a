"""A click on a test push's Web Push notification, in Chromium's service worker, records
its open: the push carries no action token (it is about no conversation) but an open
token for that notification alone, which the worker reports with."""

from __future__ import annotations

from typing import Any

from tests.browser.support import NewContext
from tests.browser.test_notification_opens import click, opened_how
from tests.browser.test_notifications import browser_of, registered
from tests.browser.test_push import PushDriver, service_worker
from tests.helpers import Client, Node, eventually
from tests.push_world import PushWorld


async def test_a_click_on_a_test_push_records_its_open(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld
) -> None:
    ida = await api.user(display_name="Ida")
    subscription = push_world.webpush.subscribe()
    ctx, page, _ = await browser_of(new_context, web_node, ida, subscription)
    await registered(api, ida, 1)
    driver = await PushDriver.attach(page, web_node.url)
    worker = await service_worker(ctx)

    r = await api.http.post("/api/v1/notifications/test", headers=ida.headers)
    assert r.status_code == 202, r.text
    notification_id = r.json()["id"]

    def test_push() -> dict[str, Any] | None:
        for push in push_world.accepted("web_push", subscription):
            if (push.payload or {}).get("type") == "test":
                return dict(push.payload)
        return None

    payload = await eventually(test_push, within=20.0, what="the test push")
    assert payload["open_token"] and "action_token" not in payload
    assert "Notification displayed" in await driver.deliver(payload)
    answer = await click(worker, payload["tag"], front=False)
    assert answer["done"] == "opened", answer
    assert (
        await eventually(
            lambda: opened_how(api, ida, notification_id), what="the test push's open recorded"
        )
        == "click"
    )
