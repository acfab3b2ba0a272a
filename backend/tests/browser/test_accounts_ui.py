"""Creating an account, signing in and out through the web client's own screens."""

from __future__ import annotations

import secrets
from pathlib import Path

from playwright.async_api import expect

from tests.browser.support import NewContext, devices, shoot, sign_in, stored_session
from tests.helpers import Client, Node, eventually
from tests.push_world import PushWorld

PASSWORD = "correct horse battery"


async def test_register_log_in_and_log_out(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    ctx = await new_context(notifications=False)
    page = await ctx.new_page()
    await page.goto(web_node.url + "/")
    await expect(page.locator("#auth-view")).to_be_visible()
    await expect(page.locator("#main-view")).to_be_hidden()
    await expect(page.locator("#register-display-name")).to_be_hidden()
    await shoot(page, artifacts, "01-login")

    # Create an account: the form switches to register mode, then signs the new user in.
    username = f"Ui_{secrets.token_hex(4)}"
    await page.click("#register-toggle")
    await expect(page.locator("#login-submit")).to_have_text("Create account")
    await page.fill("#login-username", username)
    await page.fill("#register-display-name", "Ada Lovelace")
    await page.fill("#login-password", PASSWORD)
    await shoot(page, artifacts, "02-register")
    await page.click("#login-submit")
    await expect(page.locator("#main-view")).to_be_visible()
    await expect(page.locator("#auth-view")).to_be_hidden()
    await expect(page.locator("#me-name")).to_have_text("Ada Lovelace")
    await expect(page.locator("#connection-status")).to_have_attribute("data-state", "online")
    await expect(page.locator("#connection-status")).to_have_text("Online")
    await expect(page.locator("#conversation-empty")).to_be_visible()

    # The server has the account (usernames are stored lower-case).
    r = await api.http.post(
        "/api/v1/auth/login", json={"username": username.lower(), "password": PASSWORD}
    )
    assert r.status_code == 200, r.text
    assert r.json()["user"]["display_name"] == "Ada Lovelace"

    # A reload keeps the session.
    await page.reload()
    await expect(page.locator("#me-name")).to_have_text("Ada Lovelace")

    # Log out: back to the sign-in screen, session gone (on the server too: its tokens are
    # refused), and a reload stays signed out.
    held = await stored_session(page)
    assert held
    await page.click("#logout")
    await expect(page.locator("#auth-view")).to_be_visible()
    await expect(page.locator("#main-view")).to_be_hidden()
    assert await page.evaluate("localStorage.getItem('messenger.session')") is None
    r = await api.http.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {held['access_token']}"}
    )
    assert r.status_code == 401, r.text
    r = await api.http.post("/api/v1/auth/refresh", json={"refresh_token": held["refresh_token"]})
    assert r.status_code == 401, r.text
    await page.reload()
    await expect(page.locator("#auth-view")).to_be_visible()

    # A wrong password is refused with a message; the right one signs in.
    await page.fill("#login-username", username)
    await page.fill("#login-password", "not the password")
    await page.click("#login-submit")
    await expect(page.locator("#auth-error")).to_be_visible()
    await expect(page.locator("#auth-error")).to_contain_text("wrong username or password")
    await expect(page.locator("#main-view")).to_be_hidden()
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-submit")
    await expect(page.locator("#me-name")).to_have_text("Ada Lovelace")
    await expect(page.locator("#auth-error")).to_be_hidden()
    await page.click("#logout")
    await expect(page.locator("#auth-view")).to_be_visible()


async def test_log_out_unsubscribes_and_deletes_the_device(
    new_context: NewContext, web_node: Node, api: Client, push_world: PushWorld
) -> None:
    user = await api.user(display_name="Devi")
    subscription = push_world.webpush.subscribe()
    ctx = await new_context(subscription=subscription)
    page = await sign_in(ctx, web_node.url, user)

    # Notifications are already allowed: the client registers this browser by itself.
    registered = await eventually(
        lambda: devices(api, user), within=15.0, what="the device to be registered"
    )
    assert [(d["provider"], d["platform"]) for d in registered] == [("web_push", "web")]
    # The page keeps what it registered once the server's answer is in.
    await eventually(
        lambda: page.evaluate("localStorage.getItem('messenger.pushDeviceToken')"),
        what="the page to keep its device token",
    )

    await page.click("#logout")
    await expect(page.locator("#auth-view")).to_be_visible()
    # Logout waits for the push clean-up before it shows the sign-in screen.
    assert await devices(api, user) == []
    stub = await page.evaluate("window.__pushStub")
    assert stub["unsubscribe"] == 1, stub
    assert await page.evaluate("localStorage.getItem('messenger.pushDeviceToken')") is None
    assert await page.evaluate("localStorage.getItem('messenger.session')") is None
