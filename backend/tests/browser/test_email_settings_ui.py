"""Email settings in the web client's Notifications dialog: the address and digest period
are saved, the verification state is shown (and follows the emailed link), a notice says
when a bounce turned digests off, and one when the verification email did not get
through, with a button that sends it again."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from playwright.async_api import expect
from sqlalchemy import select, update

from app.db import utcnow
from app.email.links import verify_url
from app.models import NotificationSettings
from tests.browser.support import NewContext, shoot, sign_in
from tests.helpers import Client, Node

URL = "/api/v1/me/notification-settings"


async def test_email_address_digest_and_bounce_notice(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    ann = await api.user()
    address = f"{ann.username}@example.com"
    page = await sign_in(await new_context(notifications=False), web_node.url, ann)
    await page.click("#notification-settings")
    await expect(page.locator("#ns-save")).to_be_enabled()
    await expect(page.locator("#ns-email-state")).to_contain_text("Add an address")
    await expect(page.locator("#ns-email-bounced")).to_be_hidden()

    # Not an address: the browser refuses it before anything is sent.
    await page.fill("#ns-email", "not an address")
    assert await page.locator("#ns-email").evaluate("input => !input.checkValidity()")
    # One the browser takes but the server does not (no dot in the domain): its 422 shows.
    await page.fill("#ns-email", "ann@localhost")
    await page.click("#ns-save")
    await expect(page.locator("#ns-error")).to_contain_text("email must be an address")
    assert (await api.http.get(URL, headers=ann.headers)).json()["email"] is None

    await page.fill("#ns-email", address)
    await page.locator("#ns-email-digest").select_option("daily")
    await page.click("#ns-save")
    await expect(page.locator("#ns-status")).to_have_text("Saved.")
    await expect(page.locator("#ns-email-state")).to_contain_text("Not verified yet")
    got = (await api.http.get(URL, headers=ann.headers)).json()
    assert (got["email"], got["email_digest"], got["email_verified"]) == (address, "daily", False)

    # The verification email did not get through: the dialog says why and sends it again.
    table = NotificationSettings.__table__
    async with web_node.services.engine.begin() as conn:
        await conn.execute(
            update(table)
            .where(table.c.user_id == ann.id)
            .values(email_verification_error="550 mailbox unavailable")
        )
    await page.click("#ns-close")
    await page.click("#notification-settings")
    failed = page.locator("#ns-email-failed")
    await expect(failed).to_be_visible()
    await expect(failed).to_contain_text("550 mailbox unavailable")
    await shoot(page, artifacts, "email-settings-verification-failed")
    await page.click("#ns-email-resend")
    await expect(failed).to_be_hidden()
    await expect(page.locator("#ns-email-state")).to_contain_text("A new link was sent")
    got = (await api.http.get(URL, headers=ann.headers)).json()
    assert got["email_verification_failed"] is None and got["email"] == address

    # The emailed link verifies it (its page's button); the dialog, opened again, says so.
    async with web_node.services.engine.connect() as conn:
        set_at = await conn.scalar(select(table.c.email_set_at).where(table.c.user_id == ann.id))
    link = urlsplit(verify_url(web_node.services.settings, ann.id, address, set_at))
    assert (await api.http.post(f"{link.path}?{link.query}")).status_code == 200
    await page.click("#ns-close")
    await page.click("#notification-settings")
    await expect(page.locator("#ns-email-state")).to_have_text("Verified.")
    await expect(page.locator("#ns-email")).to_have_value(address)
    await expect(page.locator("#ns-email-digest")).to_have_value("daily")

    # The mail server refused the address for good: digests went off, and the user is told.
    async with web_node.services.engine.begin() as conn:
        await conn.execute(
            update(table)
            .where(table.c.user_id == ann.id)
            .values(
                email_digest="off",
                email_disabled_at=utcnow(),
                email_disabled_reason="550 mailbox unavailable",
            )
        )
    await page.click("#ns-close")
    await page.click("#notification-settings")
    notice = page.locator("#ns-email-bounced")
    await expect(notice).to_be_visible()
    await expect(notice).to_contain_text("550 mailbox unavailable")
    await expect(page.locator("#ns-email-digest")).to_have_value("off")
    await shoot(page, artifacts, "email-settings-bounced")

    # Turning them on again clears the notice.
    await page.locator("#ns-email-digest").select_option("hourly")
    await page.click("#ns-save")
    await expect(page.locator("#ns-status")).to_have_text("Saved.")
    await expect(notice).to_be_hidden()
    got = (await api.http.get(URL, headers=ann.headers)).json()
    assert got["email_digest"] == "hourly" and got["email_digest_disabled"] is None
