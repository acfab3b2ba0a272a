"""Send later, reminders and announcements in the web client.

Times are picked in the user's own time zone (their notification settings), which is not
the browser's (UTC here): what the server stores proves the picker's wall clock was read
in that zone. Each timer is set a few seconds ahead and the test waits for what it does.

The module runs its own node on a database of its own: timers fire on whichever node
claims them first, and the suite's other nodes on the shared database (no Redis between
them) know nothing of this browser's socket.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import expect
from sqlalchemy import update

from app.models import User as UserRow
from tests.browser.support import (
    NewContext,
    free_port,
    node_settings,
    open_conversation,
    shoot,
    sign_in,
)
from tests.conftest import create_pg_database, drop_pg_database, migrate
from tests.helpers import Client, Node, User, start_node
from tests.push_world import PushWorld

AHEAD = timedelta(seconds=6)  # long enough to see it listed, short enough to wait for


@pytest.fixture(scope="module")
async def timer_node(push_world: PushWorld) -> AsyncIterator[Node]:
    name, url = await create_pg_database()
    try:
        await migrate(url)
        port = free_port()
        node = await start_node(node_settings(url, push_world, port), port)
        yield node
        await node.stop()
    finally:
        await drop_pg_database(name)


@pytest.fixture(scope="module")
async def timer_api(timer_node: Node) -> AsyncIterator[Client]:
    client = Client(timer_node)
    yield client
    await client.close()


async def set_zone(api: Client, user: User, zone: str) -> None:
    r = await api.http.put(
        "/api/v1/me/notification-settings", json={"time_zone": zone}, headers=user.headers
    )
    assert r.status_code == 200, r.text


def wall_clock(at: datetime, zone: str) -> str:
    """The datetime-local value (with seconds) showing `at` in `zone`."""
    return at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%dT%H:%M:%S")


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def scheduled_of(api: Client, user: User) -> list[dict[str, Any]]:
    r = await api.http.get("/api/v1/messenger/scheduled", headers=user.headers)
    assert r.status_code == 200, r.text
    scheduled: list[dict[str, Any]] = r.json()["scheduled"]
    return scheduled


async def reminders_of(api: Client, user: User) -> list[dict[str, Any]]:
    r = await api.http.get("/api/v1/me/reminders", headers=user.headers)
    assert r.status_code == 200, r.text
    reminders: list[dict[str, Any]] = r.json()["reminders"]
    return reminders


async def test_send_later_at_a_picked_time_arrives_and_another_is_cancelled(
    new_context: NewContext, timer_node: Node, timer_api: Client, artifacts: Path
) -> None:
    api, zone = timer_api, "Asia/Tokyo"
    ann, bob = await api.user(display_name="Ann"), await api.user(display_name="Bob")
    await set_zone(api, ann, zone)
    cid = (await api.conversation(ann, bob))["id"]
    a = await sign_in(await new_context(notifications=False), timer_node.url, ann)
    b = await sign_in(await new_context(notifications=False), timer_node.url, bob)
    r = await api.send(bob, cid, "when do we meet?")
    assert r.status_code == 201, r.text
    question_id = r.json()["id"]
    await open_conversation(a, cid)
    await open_conversation(b, cid)
    panel = a.locator("#scheduled-panel")
    await expect(panel).to_be_hidden()

    # A reply, scheduled: refused first (too far ahead; then the network fails), and each
    # time the composer keeps both its text and the reply-to.
    question = a.locator("#messages li.message", has_text="when do we meet?")
    await question.hover()
    await question.locator('button[data-msg-action="reply"]').click()
    replying = a.locator("#composer-context.replying")
    await expect(replying).to_be_visible()
    await a.fill("#composer", "see you at nine")
    await a.click("#send-later")
    await expect(a.locator("#send-later-zone")).to_have_text("Times in Asia/Tokyo")
    await a.fill("#send-later-at", wall_clock(datetime.now(UTC) + timedelta(days=400), zone))
    await a.click("#send-later-submit")
    await expect(a.locator("#send-later-error")).to_contain_text("days from now")
    await expect(a.locator("#composer")).to_have_value("see you at nine")
    await expect(replying).to_be_visible()

    async def no_network(route: Any) -> None:
        if route.request.method == "POST":
            await route.abort("internetdisconnected")
        else:
            await route.continue_()

    messages_path = f"**/api/v1/messenger/conversations/{cid}/messages"
    await a.route(messages_path, no_network)
    await a.fill("#send-later-at", wall_clock(datetime.now(UTC) + timedelta(hours=2), zone))
    await a.click("#send-later-submit")
    await expect(a.locator("#send-later-error")).to_be_visible()
    await expect(a.locator("#send-later-error")).not_to_contain_text("days from now")
    await expect(a.locator("#composer")).to_have_value("see you at nine")
    await expect(replying).to_be_visible()
    await a.unroute(messages_path, no_network)
    assert await scheduled_of(api, ann) == []

    # Picked in Tokyo's clock: the server holds the same instant in UTC. Accepted, the
    # composer empties and the reply-to goes with it.
    when = (datetime.now(UTC) + AHEAD).replace(microsecond=0)
    await a.fill("#send-later-at", wall_clock(when, zone))
    await a.click("#send-later-submit")
    item = a.locator("#scheduled-list li.scheduled", has_text="see you at nine")
    await expect(item).to_be_visible()
    await expect(a.locator("#composer")).to_have_value("")
    await expect(a.locator("#composer-context")).to_be_hidden()
    await expect(a.locator("#send-later-menu")).to_be_hidden()
    [stored] = await scheduled_of(api, ann)
    assert stored["content"] == "see you at nine"
    assert stored["reply_to"] == question_id
    assert parse(stored["send_at"]) == when
    await shoot(a, artifacts, "send-later-scheduled")
    # Not sent yet: Bob has only his question.
    assert await b.locator("#messages li.message", has_text="see you at nine").count() == 0

    # At its time it reaches Bob live, and leaves Ann's list (it is hers, in her chat too).
    arrived = b.locator("#messages li.message.other", has_text="see you at nine")
    await expect(arrived).to_be_visible()
    await expect(a.locator("#messages li.message.own", has_text="see you at nine")).to_be_visible()
    await expect(panel).to_be_hidden()
    assert await scheduled_of(api, ann) == []
    sent = [m for m in await api.messages(bob, cid) if m["content"] == "see you at nine"]
    assert len(sent) == 1 and sent[0]["sender_id"] == ann.id
    assert sent[0]["reply_to"] == question_id
    assert parse(sent[0]["created_at"]) >= when

    # "In 1 hour", then cancelled from the list: it never goes out.
    await a.fill("#composer", "never mind")
    await a.click("#send-later")
    before = datetime.now(UTC)
    await a.click('#send-later-menu button[data-send-later="hour"]')
    later = a.locator("#scheduled-list li.scheduled", has_text="never mind")
    await expect(later).to_be_visible()
    [pending] = await scheduled_of(api, ann)
    hour = parse(pending["send_at"]) - before
    assert timedelta(minutes=59) < hour < timedelta(minutes=61), hour
    await later.locator("button.scheduled-cancel").click()
    await expect(panel).to_be_hidden()
    assert await scheduled_of(api, ann) == []
    # Reloaded, the list comes from the server: still empty.
    await a.reload()
    await open_conversation(a, cid)
    await expect(a.locator("#messages li.message", has_text="see you at nine")).to_be_visible()
    await expect(panel).to_be_hidden()


async def test_a_reminder_at_a_picked_time_shows_a_toast_that_opens_the_message(
    new_context: NewContext, timer_node: Node, timer_api: Client, artifacts: Path
) -> None:
    api, zone = timer_api, "America/New_York"
    ann, bob = await api.user(display_name="Ann"), await api.user(display_name="Bob")
    cal = await api.user(display_name="Cal")
    await set_zone(api, ann, zone)
    cid = (await api.conversation(ann, bob))["id"]
    other = (await api.conversation(ann, cal))["id"]
    r = await api.send(bob, cid, "call the plumber about the sink")
    assert r.status_code == 201, r.text
    message_id = r.json()["id"]
    r = await api.send(cal, other, "hello from Cal")
    assert r.status_code == 201, r.text

    a = await sign_in(await new_context(notifications=False), timer_node.url, ann)
    await open_conversation(a, cid)
    node = a.locator(f'#messages li.message[data-message-id="{message_id}"]')
    await node.hover()
    await node.locator('button[data-msg-action="remind"]').click()
    menu = node.locator(".reminder-menu")
    await expect(menu.locator(".reminder-zone")).to_have_text("Times in America/New York")

    # "In 1 hour" first (cancelled below from the list), then a picked time a few seconds on.
    before = datetime.now(UTC)
    await menu.locator('button[data-remind="hour"]').click()
    await expect(a.locator("#reminder-status")).to_contain_text("Reminder set for")
    await expect(menu).to_have_count(0)
    [hourly] = await reminders_of(api, ann)
    hour = parse(hourly["remind_at"]) - before
    assert timedelta(minutes=59) < hour < timedelta(minutes=61), hour

    await node.hover()
    await node.locator('button[data-msg-action="remind"]').click()
    await expect(menu.locator(".reminder-zone")).to_have_text("Times in America/New York")
    when = (datetime.now(UTC) + AHEAD).replace(microsecond=0)
    await menu.locator("input.reminder-at").fill(wall_clock(when, zone))
    await shoot(a, artifacts, "reminder-menu")
    await menu.locator("button.reminder-set").click()
    await expect(menu).to_have_count(0)
    soon = [x for x in await reminders_of(api, ann) if x["id"] != hourly["id"]]
    assert len(soon) == 1 and parse(soon[0]["remind_at"]) == when
    assert soon[0]["message_id"] == message_id

    # The list shows both (soonest first); the hourly one is cancelled there.
    await a.click("#reminders-open")
    rows = a.locator("#reminders-list li.reminder")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_have_attribute("data-reminder-id", soon[0]["id"])
    await expect(rows.first.locator(".reminder-text")).to_have_text(
        "call the plumber about the sink"
    )
    hourly_row = a.locator(f'li.reminder[data-reminder-id="{hourly["id"]}"]')
    await hourly_row.locator("button.reminder-cancel").click()
    await expect(hourly_row).to_have_count(0)
    assert [x["id"] for x in await reminders_of(api, ann)] == [soon[0]["id"]]
    await a.click("#reminders-close")

    # Ann looks at another conversation when the reminder fires: the toast takes her back.
    await open_conversation(a, other)
    toast = a.locator(f'#reminder-toasts .reminder-toast[data-reminder-id="{soon[0]["id"]}"]')
    await expect(toast).to_be_visible()
    await expect(toast.locator(".reminder-toast-text")).to_have_text(
        "call the plumber about the sink"
    )
    await shoot(a, artifacts, "reminder-toast")
    await toast.locator("button.reminder-toast-go").click()
    await expect(toast).to_have_count(0)
    await expect(a.locator("#chat-title")).to_have_text("Bob")
    await expect(node).to_have_class(re.compile(r"\bsearch-hit\b"))
    await expect(node).to_be_in_viewport()
    assert await reminders_of(api, ann) == []


async def make_admin(node: Node, user: User) -> None:
    async with node.services.engine.begin() as conn:
        await conn.execute(update(UserRow).where(UserRow.id == user.id).values(is_admin=True))


async def test_an_announcement_from_the_admin_page_lands_read_only(
    new_context: NewContext, timer_node: Node, timer_api: Client, artifacts: Path
) -> None:
    api = timer_api
    ada, cy = await api.user(display_name="Ada"), await api.user(display_name="Cy")
    await make_admin(timer_node, ada)
    c = await sign_in(await new_context(notifications=False), timer_node.url, cy)

    admin = await sign_in(await new_context(notifications=False), timer_node.url, ada)
    await admin.goto(timer_node.url + "/admin")
    await expect(admin.locator("#announce-section")).to_be_visible()
    await admin.fill("#announce-title", "Maintenance tonight")
    await admin.fill("#announce-content", "The service restarts at 22:00 for ten minutes.")
    await admin.fill("#announce-recipients", cy.username)
    await admin.click("#announce-submit")
    progress = admin.locator("#announce-progress")
    await expect(progress).to_have_attribute("data-recipients", "1")
    await expect(progress).to_have_attribute("data-status", re.compile(r"^(?!sending$|failed$)"))
    await expect(progress).to_have_attribute("data-delivered-live", "1")
    await shoot(admin, artifacts, "announcement-sent")

    # Cy was online: it arrived live, in a conversation with a megaphone and no composer.
    item = c.locator("#conversation-list li.conversation", has=c.locator(".announcement-avatar"))
    await expect(item).to_have_count(1)
    await item.click()
    await expect(c.locator("#chat-pane")).to_be_visible()
    await expect(c.locator("#messages li.message")).to_contain_text(
        "The service restarts at 22:00 for ten minutes."
    )
    await expect(c.locator("#composer-form")).to_be_hidden()
    await expect(c.locator("#read-only-note")).to_have_text("Only admins post announcements.")
    await expect(c.locator("#chat-avatar .announcement-avatar")).to_be_visible()
    # A message there offers a reminder, nothing to write.
    message = c.locator("#messages li.message").first
    await message.hover()
    await expect(message.locator("button[data-msg-action]")).to_have_count(1)
    await expect(message.locator('button[data-msg-action="remind"]')).to_be_visible()
    # Mute works as anywhere.
    await expect(c.locator("#mute-toggle")).to_be_enabled()
    await c.click("#mute-toggle")
    await expect(c.locator("#mute-toggle")).to_have_attribute("aria-pressed", "true")
    await shoot(c, artifacts, "announcement-received")

    # And the server holds it read-only whatever a client does.
    conversation_id = await item.get_attribute("data-conversation-id")
    assert conversation_id
    r = await api.send(cy, conversation_id, "can I answer?")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "read_only"
    r = await api.http.get(
        f"/api/v1/messenger/conversations/{conversation_id}/settings", headers=cy.headers
    )
    assert r.status_code == 200 and r.json()["muted"] is True, r.text
    # The admin page's form is for admins only.
    await c.goto(timer_node.url + "/admin")
    await expect(c.locator("#admin-status")).to_contain_text("Admins only")
    await expect(c.locator("#announce-section")).to_be_hidden()
