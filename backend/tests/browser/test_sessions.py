"""Sessions in the web client: short-lived tokens renewed in place, the socket authenticated by
its first frame, and sessions logged out from another browser."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from playwright.async_api import Page, Request, Route, expect

from tests.browser.support import (
    NewContext,
    SocketLog,
    free_port,
    node_settings,
    open_conversation,
    shoot,
    sign_in,
    stored_session,
)
from tests.helpers import Client, Node, eventually, start_node
from tests.push_world import PushWorld

TTL_SECONDS = 5
REFRESH = "/api/v1/auth/refresh"


@pytest.fixture
async def short_node(postgresql_url: str, push_world: PushWorld) -> AsyncIterator[Node]:
    """A node whose access tokens live a few seconds."""
    port = free_port()
    node = await start_node(
        node_settings(postgresql_url, push_world, port, access_token_ttl_seconds=TTL_SECONDS),
        port,
    )
    yield node
    await node.stop()


async def send_typed(page: Page, text: str) -> None:
    await page.fill("#composer", text)
    await page.press("#composer", "Enter")


async def tokens_seen(page: Page, seen: set[str], count: int) -> bool:
    """Polled: records the page's current access token; true once `count` different were seen."""
    stored = await stored_session(page)
    if stored:
        seen.add(stored["access_token"])
    return len(seen) >= count


def no_token_in_urls(log: SocketLog, tokens: set[str]) -> None:
    assert log.urls, "the page opened no socket"
    for url in log.urls:
        assert url.endswith("/ws"), url  # no query string at all
        assert not any(token in url for token in tokens), url


async def test_expiring_tokens_are_renewed_while_chatting(
    new_context: NewContext, short_node: Node
) -> None:
    rest = Client(short_node)
    try:
        olga = await rest.user(display_name="Olga")
        paul = await rest.user(display_name="Paul")
        cid = (await rest.conversation(olga, paul))["id"]
        olga_ctx = await new_context(origin=short_node.url, notifications=False)
        olga_page = await olga_ctx.new_page()
        sockets = SocketLog(olga_page)
        refreshes: list[int] = []
        olga_page.on(
            "response", lambda r: refreshes.append(r.status) if r.url.endswith(REFRESH) else None
        )
        await sign_in(olga_ctx, short_node.url, olga, page=olga_page)
        paul_page = await sign_in(
            await new_context(origin=short_node.url, notifications=False), short_node.url, paul
        )
        await open_conversation(olga_page, cid)
        await open_conversation(paul_page, cid)
        login = await stored_session(olga_page)
        assert login and login["refresh_token"] and login["session_id"]
        await olga_page.evaluate("window.__sameDocument = true")

        # Three access tokens in turn: the first two have expired by the time the third is here.
        seen: set[str] = set()
        await eventually(
            lambda: tokens_seen(olga_page, seen, 3),
            within=TTL_SECONDS * 4,
            what="two renewals",
            every=0.1,
        )
        assert refreshes and all(status == 200 for status in refreshes), refreshes

        # Still chatting both ways, on the socket opened at sign-in: each renewal reached it
        # as an auth frame before the token it replaced ran out.
        await send_typed(olga_page, "still here after two renewals")
        await expect(paul_page.locator("#messages li.message[data-seq='1']")).to_contain_text(
            "still here after two renewals"
        )
        await send_typed(paul_page, "and I hear you")
        await expect(olga_page.locator("#messages li.message[data-seq='2']")).to_contain_text(
            "and I hear you"
        )
        await expect(olga_page.locator("#connection-status")).to_have_attribute(
            "data-state", "online"
        )
        assert await olga_page.evaluate("window.__sameDocument") is True
        assert len(sockets.urls) == 1, sockets.urls
        [auths] = sockets.auth_tokens()
        assert sockets.sent[0][0]["type"] == "auth"  # the first frame, before anything else
        assert auths[0] == login["access_token"]
        assert set(auths) >= seen, "every renewed token was sent on the socket"
        no_token_in_urls(sockets, seen)
    finally:
        await rest.close()


async def test_a_socket_closed_for_an_expired_token_comes_back(
    new_context: NewContext, short_node: Node
) -> None:
    """Renewal cannot reach the server until the token has expired: the socket is closed
    (4401), the page stays signed in, and once the server answers it reconnects and sends
    what was typed meanwhile."""
    rest = Client(short_node)
    try:
        rita = await rest.user(display_name="Rita")
        sam = await rest.user(display_name="Sam")
        cid = (await rest.conversation(rita, sam))["id"]
        ctx = await new_context(origin=short_node.url, notifications=False)
        page = await ctx.new_page()
        sockets = SocketLog(page)
        await sign_in(ctx, short_node.url, rita, f"/?conversation={cid}", page=page)
        await page.evaluate("window.__sameDocument = true")
        first = await stored_session(page)
        assert first

        async def unreachable(route: Route) -> None:
            await route.abort("internetdisconnected")

        await page.route(f"**{REFRESH}", unreachable)
        status = page.locator("#connection-status")
        # The server closes the socket once the token expires; the page keeps trying.
        await expect(status).not_to_have_attribute("data-state", "online", timeout=20_000)
        await send_typed(page, "typed while my token had expired")
        await expect(page.locator("#messages li.message.pending")).to_have_count(1)
        await expect(page.locator("#main-view")).to_be_visible()

        await page.unroute(f"**{REFRESH}", unreachable)
        await expect(status).to_have_attribute("data-state", "online", timeout=40_000)
        await expect(page.locator("#messages li.message.pending")).to_have_count(0)
        # (The test's own token for Sam has expired too: the page asks, with its fresh one.)
        history = await page.evaluate(
            "cid => import('/api.js').then(({ api }) => api.messages(cid, {}))", cid
        )
        assert [m["content"] for m in history["messages"]] == ["typed while my token had expired"]
        assert await page.evaluate("window.__sameDocument") is True
        renewed = await stored_session(page)
        assert renewed and renewed["session_id"] == first["session_id"]
        assert renewed["access_token"] != first["access_token"]
        assert len(sockets.urls) >= 2, sockets.urls
        assert all(frames and frames[0]["type"] == "auth" for frames in sockets.sent[1:])
        no_token_in_urls(sockets, {first["access_token"], renewed["access_token"]})
    finally:
        await rest.close()


async def test_tabs_of_one_browser_share_each_renewal(
    new_context: NewContext, short_node: Node
) -> None:
    """Two tabs hold one session and renew it in turn: both stay signed in with their
    sockets open through every renewal."""
    rest = Client(short_node)
    try:
        tess = await rest.user(display_name="Tess")
        ctx = await new_context(origin=short_node.url, notifications=False)
        # The refresh tokens each tab sent (a tab retrying its own lost answer may repeat one).
        spent: dict[int, set[str]] = {0: set(), 1: set()}

        def count(tab: int) -> Callable[[Request], None]:
            def record(request: Request) -> None:
                if request.url.endswith(REFRESH) and request.post_data:
                    spent[tab].add(orjson.loads(request.post_data)["refresh_token"])

            return record

        first_tab = await ctx.new_page()
        second_tab = await ctx.new_page()
        for i, tab in enumerate((first_tab, second_tab)):
            tab.on("request", count(i))
        second_sockets = SocketLog(second_tab)
        await sign_in(ctx, short_node.url, tess, page=first_tab)
        await second_tab.goto(short_node.url + "/")
        await expect(second_tab.locator("#connection-status")).to_have_attribute(
            "data-state", "online"
        )
        seen: set[str] = set()
        await eventually(
            lambda: tokens_seen(first_tab, seen, 4),
            within=TTL_SECONDS * 5,
            what="three renewals",
            every=0.1,
        )
        # The tabs took turns (Web Locks). Chromium may hand the lock over before the other
        # tab's localStorage shows the new token, so now and then both spend one token: the
        # server takes the second as a retry (REFRESH_REUSE_GRACE_SECONDS), and the session
        # lives on in both tabs, as checked below.
        assert len(spent[0] | spent[1]) >= 3, spent
        # The other tab's socket took each renewal too (told through storage), and stayed.
        latest = await stored_session(first_tab)
        assert latest
        await eventually(
            lambda: latest["access_token"] in second_sockets.auth_tokens()[0],
            what="the second tab's socket to get the newest token",
        )
        assert len(second_sockets.urls) == 1, second_sockets.urls
        for tab in (first_tab, second_tab):
            me = await tab.evaluate("import('/api.js').then(({ api }) => api.me())")
            assert me["id"] == tess.id
            await expect(tab.locator("#main-view")).to_be_visible()
            await expect(tab.locator("#connection-status")).to_have_attribute(
                "data-state", "online"
            )
    finally:
        await rest.close()


async def test_a_401_renews_once_for_concurrent_requests_and_a_dead_session_signs_out(
    new_context: NewContext, web_node: Node, api: Client
) -> None:
    uma = await api.user(display_name="Uma")
    page = await sign_in(await new_context(notifications=False), web_node.url, uma)
    refreshes: list[int] = []
    page.on("response", lambda r: refreshes.append(r.status) if r.url.endswith(REFRESH) else None)

    # The server no longer takes the access token (as after a restart with a new key): three
    # requests at once get a 401, one refresh serves them all, and each is made once more.
    await page.evaluate(
        """() => {
            const s = JSON.parse(localStorage.getItem('messenger.session'));
            s.access_token = 'not-a-token';
            localStorage.setItem('messenger.session', JSON.stringify(s));
        }"""
    )
    answers = await page.evaluate(
        """async () => {
            const { api } = await import('/api.js');
            const [me, list, again] = await Promise.all([api.me(), api.conversations(), api.me()]);
            return [me.id, Array.isArray(list.conversations), again.id];
        }"""
    )
    assert answers == [uma.id, True, uma.id]
    assert refreshes == [200]
    stored = await stored_session(page)
    assert stored and stored["access_token"] != "not-a-token"

    # A refresh the server refuses ends the session: back to the sign-in screen.
    await page.evaluate(
        """() => {
            const s = JSON.parse(localStorage.getItem('messenger.session'));
            Object.assign(s, { access_token: 'not-a-token', refresh_token: 'not-a-refresh-token' });
            localStorage.setItem('messenger.session', JSON.stringify(s));
        }"""
    )
    await page.evaluate("import('/api.js').then(({ api }) => api.me()).catch(() => null)")
    await expect(page.locator("#auth-view")).to_be_visible()
    await expect(page.locator("#auth-error")).to_contain_text("session has ended")
    assert refreshes == [200, 401]
    assert await stored_session(page) is None


async def test_logging_out_other_sessions_from_the_sessions_view(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    vera = await api.user(display_name="Vera")
    laptop = await sign_in(await new_context(notifications=False), web_node.url, vera)
    phone = await sign_in(await new_context(notifications=False), web_node.url, vera)
    laptop_session = await stored_session(laptop)
    phone_session = await stored_session(phone)
    assert laptop_session and phone_session
    assert laptop_session["session_id"] != phone_session["session_id"]

    await laptop.click("#sessions")
    dialog = laptop.locator("#sessions-dialog")
    await expect(dialog).to_be_visible()
    rows = laptop.locator("#sessions-list li.session")
    # Vera's own sessions: the helper's login, and the two browsers.
    await expect(rows).to_have_count(3)
    current = laptop.locator("#sessions-list li.session.current")
    await expect(current).to_have_count(1)
    await expect(current).to_have_attribute("data-session-id", laptop_session["session_id"])
    await expect(current.locator(".badge")).to_have_text("This browser")
    await expect(current.locator("button.session-logout")).to_have_count(0)
    phone_id = phone_session["session_id"]
    phone_row = laptop.locator(f'#sessions-list li[data-session-id="{phone_id}"]')
    await expect(phone_row.locator(".session-name")).to_have_text("Chrome on Linux")
    await expect(phone_row.locator(".session-detail").first).to_contain_text("127.0.0.1")
    await shoot(laptop, artifacts, "20-sessions")

    # Logging the phone out: it is back at the sign-in screen within seconds, by itself.
    await phone_row.locator("button.session-logout").click()
    await expect(phone_row).to_have_count(0)
    await expect(rows).to_have_count(2)
    await expect(phone.locator("#auth-view")).to_be_visible(timeout=10_000)
    await expect(phone.locator("#auth-error")).to_contain_text("session has ended")
    assert await stored_session(phone) is None

    # Everywhere else: the helper's session and a new tablet go; the laptop stays.
    tablet = await sign_in(await new_context(notifications=False), web_node.url, vera)
    await laptop.click("#sessions-close")
    await laptop.click("#sessions")
    await expect(rows).to_have_count(3)
    await laptop.click("#logout-others")
    await expect(rows).to_have_count(1)
    await expect(laptop.locator("#logout-others")).to_be_disabled()
    await expect(tablet.locator("#auth-view")).to_be_visible(timeout=10_000)
    r = await api.http.get("/api/v1/me", headers=vera.headers)
    assert r.status_code == 401, r.text
    await laptop.click("#sessions-close")
    await expect(laptop.locator("#connection-status")).to_have_attribute("data-state", "online")
    me = await laptop.evaluate("import('/api.js').then(({ api }) => api.me())")
    assert me["id"] == vera.id
