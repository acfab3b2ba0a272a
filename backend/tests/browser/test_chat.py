"""Chatting through the web client: two browsers talking live through the real server."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from playwright.async_api import Locator, Page, expect

from tests.browser.support import PHONE, NewContext, open_conversation, shoot, sign_in
from tests.helpers import Client, Node, eventually

XSS = "<img src=x onerror=window.__xss=1>"


def message(page: Page, seq: int) -> Locator:
    return page.locator(f'#messages li.message[data-seq="{seq}"]')


async def seqs_shown(page: Page) -> list[int]:
    values = await page.locator("#messages li.message[data-seq]").evaluate_all(
        "nodes => nodes.map(n => Number(n.dataset.seq))"
    )
    return list(values)


async def test_two_users_chat_live(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    alice = await api.user(display_name="Alice Liddell")
    bob = await api.user(display_name="Bob Builder")
    alice_page = await sign_in(await new_context(notifications=False), web_node.url, alice)
    bob_page = await sign_in(await new_context(notifications=False), web_node.url, bob)

    # Alice starts a direct chat with Bob by his username, in the new-chat dialog.
    await alice_page.click("#new-chat")
    dialog = alice_page.locator("#new-chat-dialog")
    await expect(dialog).to_be_visible()
    await alice_page.fill("#new-chat-query", bob.username)
    person = alice_page.locator(f'#new-chat-results button[data-user-id="{bob.id}"]')
    await expect(person).to_be_visible()
    await expect(person).to_contain_text("Bob Builder")
    await expect(person).to_contain_text(f"@{bob.username}")
    await person.click()
    await expect(person).to_have_attribute("aria-pressed", "true")
    await expect(alice_page.locator("#new-chat-selected")).to_contain_text("Bob Builder")
    await expect(alice_page.locator("#create-chat")).to_have_text("Start chat")
    await expect(alice_page.locator("#create-chat")).to_be_enabled()
    await shoot(alice_page, artifacts, "03-new-chat-dialog")
    await alice_page.click("#create-chat")
    await expect(dialog).to_be_hidden()
    await expect(alice_page.locator("#chat-pane")).to_be_visible()
    await expect(alice_page.locator("#chat-title")).to_have_text("Bob Builder")
    await expect(alice_page).to_have_url(re.compile(r"[?]conversation="))
    conversation_id = parse_qs(urlparse(alice_page.url).query)["conversation"][0]

    r = await api.http.get("/api/v1/messenger/conversations", headers=alice.headers)
    [conversation] = r.json()["conversations"]
    assert conversation["id"] == conversation_id
    assert conversation["type"] == "direct"
    assert sorted(conversation["participant_ids"]) == sorted([alice.id, bob.id])

    # Enter sends; the message is confirmed with its seq.
    composer = alice_page.locator("#composer")
    await composer.fill("Hi Bob!")
    await composer.press("Enter")
    await expect(message(alice_page, 1)).to_contain_text("Hi Bob!")
    await expect(message(alice_page, 1)).to_contain_class("own")
    await expect(composer).to_have_value("")
    await expect(alice_page.locator("#messages li.message.pending")).to_have_count(0)

    # Bob's list gets the new conversation live, with the last message and an unread badge.
    item = bob_page.locator(f'#conversation-list li[data-conversation-id="{conversation_id}"]')
    await expect(item.locator(".conversation-name")).to_have_text("Alice Liddell")
    # Alice's typing frame came before the conversation was known to Bob: the message must
    # clear it at once, not after the typing indicator's 6 s expiry.
    await expect(item.locator(".conversation-preview")).to_have_text("Hi Bob!", timeout=3000)
    await expect(item.locator(".unread")).to_have_text("1")
    await expect(item.locator(".unread")).to_be_visible()
    await expect(item).to_contain_class("has-unread")

    # Bob opens it: the message is there, the badge goes, and Alice sees "Seen".
    await open_conversation(bob_page, conversation_id)
    await expect(message(bob_page, 1)).to_contain_text("Hi Bob!")
    await expect(message(bob_page, 1)).to_contain_class("other")
    await expect(item.locator(".unread")).to_be_hidden()
    await expect(alice_page.locator("#messages li.seen")).to_have_text("Seen")

    # Shift+Enter makes a new line; Alice sees Bob typing; Enter sends both lines as one message.
    bob_composer = bob_page.locator("#composer")
    await bob_composer.press_sequentially("line one")
    await expect(alice_page.locator("#typing-indicator")).to_contain_text("Bob Builder is typing")
    await bob_composer.press("Shift+Enter")
    await bob_composer.press_sequentially("line two")
    await expect(bob_composer).to_have_value("line one\nline two")
    assert len(await api.messages(bob, conversation_id)) == 1  # nothing sent yet
    await bob_composer.press("Enter")
    await expect(bob_composer).to_have_value("")
    reply = message(alice_page, 2)
    await expect(reply).to_contain_class("other")
    await expect(reply.locator(".text")).to_have_js_property("textContent", "line one\nline two")
    await expect(alice_page.locator("#typing-indicator")).to_have_text("")
    await expect(
        alice_page.locator(f'#conversation-list li[data-conversation-id="{conversation_id}"]')
    ).to_contain_text("line one line two")

    history = await api.messages(alice, conversation_id)
    assert [(m["seq"], m["sender_id"], m["content"]) for m in history] == [
        (1, alice.id, "Hi Bob!"),
        (2, bob.id, "line one\nline two"),
    ]
    assert await seqs_shown(alice_page) == [1, 2]
    assert await seqs_shown(bob_page) == [1, 2]

    # One more each way, typed and sent with the send button.
    await bob_composer.fill("And the button works too")
    await bob_page.click("#send")
    await expect(message(alice_page, 3)).to_contain_text("And the button works too")
    await expect(message(bob_page, 3)).to_contain_class("own")
    await shoot(alice_page, artifacts, "04-chat-alice")
    await shoot(bob_page, artifacts, "05-chat-bob")


async def test_conversation_list_shows_last_message_and_unread_count(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    carol = await api.user(display_name="Carol")
    dave = await api.user(display_name="Dave")
    erin = await api.user(display_name="Erin")
    group = await api.conversation(carol, dave, erin, title="Book club")
    with_dave = await api.conversation(carol, dave)
    with_erin = await api.conversation(carol, erin)
    for sender, conversation, text in [
        (dave, with_dave, "first from Dave"),
        (dave, with_dave, "second from Dave"),
        (carol, with_erin, "Hi Erin"),
        (erin, with_erin, "hey Carol"),
    ]:
        r = await api.send(sender, conversation["id"], text)
        assert r.status_code == 201, r.text

    page = await sign_in(await new_context(notifications=False), web_node.url, carol)
    items = page.locator("#conversation-list > li[data-conversation-id]")
    await expect(items).to_have_count(3)
    # Most recent activity first.
    assert await items.evaluate_all("ns => ns.map(n => n.dataset.conversationId)") == [
        with_erin["id"],
        with_dave["id"],
        group["id"],
    ]

    def row(conversation: dict) -> Locator:
        return page.locator(f'#conversation-list li[data-conversation-id="{conversation["id"]}"]')

    await expect(row(with_erin).locator(".conversation-name")).to_have_text("Erin")
    await expect(row(with_erin).locator(".conversation-preview")).to_have_text("hey Carol")
    await expect(row(with_erin).locator(".unread")).to_have_text("1")
    await expect(row(with_dave).locator(".conversation-name")).to_have_text("Dave")
    await expect(row(with_dave).locator(".conversation-preview")).to_have_text("second from Dave")
    await expect(row(with_dave).locator(".unread")).to_have_text("2")
    await expect(row(group).locator(".conversation-name")).to_have_text("Book club")
    await expect(row(group).locator(".conversation-preview")).to_have_text("No messages yet")
    await expect(row(group).locator(".unread")).to_be_hidden()
    await expect(page).to_have_title("(3) Messenger")

    # A live message: the row moves to the top, with the new preview and count.
    r = await api.send(dave, with_dave["id"], "third from Dave")
    assert r.status_code == 201
    await expect(row(with_dave).locator(".unread")).to_have_text("3")
    await expect(row(with_dave).locator(".conversation-preview")).to_have_text("third from Dave")
    await expect(items.first).to_have_attribute("data-conversation-id", with_dave["id"])
    await expect(page).to_have_title("(4) Messenger")
    # In a group, the preview names the sender.
    r = await api.send(erin, group["id"], "who has the book?")
    assert r.status_code == 201
    await expect(row(group).locator(".conversation-preview")).to_have_text(
        "Erin: who has the book?"
    )
    await expect(items.first).to_have_attribute("data-conversation-id", group["id"])
    await shoot(page, artifacts, "06-conversation-list")

    # Opening a conversation reads it: the badge goes, here and on the server.
    await open_conversation(page, with_dave["id"])
    await expect(row(with_dave).locator(".unread")).to_be_hidden()
    await expect(row(with_dave)).not_to_contain_class("has-unread")
    await expect(page).to_have_title("(2) Messenger")
    assert await seqs_shown(page) == [1, 2, 3]

    async def unread_on_server() -> int | None:
        r = await api.http.get("/api/v1/messenger/conversations", headers=carol.headers)
        counts = {c["id"]: c["unread_count"] for c in r.json()["conversations"]}
        return counts[with_dave["id"]] == 0 and counts

    counts = await eventually(
        unread_on_server, within=15.0, what="the server to count the chat as read"
    )
    assert counts[with_erin["id"]] == 1
    assert counts[group["id"]] == 1


async def test_message_text_is_shown_as_text_not_html(
    new_context: NewContext, web_node: Node, api: Client
) -> None:
    frank = await api.user(display_name="Frank")
    grace = await api.user(display_name="Grace")
    conversation = await api.conversation(frank, grace)
    cid = conversation["id"]
    r = await api.send(grace, cid, XSS)
    assert r.status_code == 201, r.text

    # Opened straight from its URL.
    page = await sign_in(
        await new_context(notifications=False), web_node.url, frank, f"/?conversation={cid}"
    )
    await expect(page.locator("#chat-title")).to_have_text("Grace")
    await expect(message(page, 1).locator(".text")).to_have_text(XSS)
    await expect(page.locator("#messages").get_by_text(XSS, exact=True)).to_be_visible()
    await expect(
        page.locator(f'#conversation-list li[data-conversation-id="{cid}"] .conversation-preview')
    ).to_have_text(XSS)

    # Live, and typed by the user himself.
    r = await api.send(grace, cid, f"again: {XSS}")
    assert r.status_code == 201
    await expect(message(page, 2).locator(".text")).to_have_text(f"again: {XSS}")
    await page.fill("#composer", f"mine: {XSS}")
    await page.press("#composer", "Enter")
    await expect(message(page, 3).locator(".text")).to_have_text(f"mine: {XSS}")

    assert await page.locator("#messages img").count() == 0
    assert await page.locator("#conversation-list img").count() == 0
    # A wrongly created image would have failed loading, and run its handler, before an
    # image with the same src created now does.
    await page.evaluate(
        """() => new Promise((done) => {
            const probe = new Image();
            probe.onerror = probe.onload = done;
            probe.src = 'x';
        })"""
    )
    assert await page.evaluate("typeof window.__xss") == "undefined"
    assert [m["content"] for m in await api.messages(frank, cid)] == [
        XSS,
        f"again: {XSS}",
        f"mine: {XSS}",
    ]


async def test_phone_layout(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    heidi = await api.user(display_name="Heidi")
    ivan = await api.user(display_name="Ivan")
    conversation = await api.conversation(heidi, ivan)
    for sender, text in [
        (ivan, "Are we still on for tonight?"),
        (heidi, "Yes! 7pm at the usual place."),
        (ivan, "Great, see you there. I'll bring the board games and some snacks."),
    ]:
        assert (await api.send(sender, conversation["id"], text)).status_code == 201

    ctx = await new_context(notifications=False, viewport=PHONE)
    page = await sign_in(ctx, web_node.url, heidi)
    # One pane at a time: the list first.
    await expect(page.locator(".sidebar")).to_be_visible()
    await expect(page.locator(".chat")).to_be_hidden()
    await expect(page.locator(f'li[data-conversation-id="{conversation["id"]}"]')).to_contain_text(
        "see you there"
    )
    await shoot(page, artifacts, "07-phone-list")

    await open_conversation(page, conversation["id"])
    await expect(page.locator(".sidebar")).to_be_hidden()
    await expect(page.locator("#back")).to_be_visible()
    await expect(message(page, 3)).to_be_visible()
    await expect(page.locator("#composer")).to_be_visible()
    await expect(page.locator("#send")).to_be_visible()
    await shoot(page, artifacts, "08-phone-chat")

    await page.click("#back")
    await expect(page.locator(".sidebar")).to_be_visible()
    await expect(page.locator(".chat")).to_be_hidden()
    await expect(page).to_have_url(web_node.url + "/")

    await page.click("#new-chat")
    await expect(page.locator("#new-chat-dialog")).to_be_visible()
    await page.fill("#new-chat-query", ivan.username)
    await expect(
        page.locator(f'#new-chat-results button[data-user-id="{ivan.id}"]')
    ).to_be_visible()
    await shoot(page, artifacts, "09-phone-new-chat")
    await page.click("#new-chat-cancel")
    await expect(page.locator("#new-chat-dialog")).to_be_hidden()


async def test_presence_changes_are_shown(
    new_context: NewContext, web_node: Node, api: Client
) -> None:
    judy = await api.user(display_name="Judy")
    karl = await api.user(display_name="Karl")
    cid = (await api.conversation(judy, karl))["id"]
    judy_page = await sign_in(
        await new_context(notifications=False), web_node.url, judy, f"/?conversation={cid}"
    )
    dot = judy_page.locator(f'li[data-conversation-id="{cid}"] .presence')
    await expect(dot).to_have_attribute("data-online", "false")
    await expect(judy_page.locator("#chat-subtitle")).to_have_text(f"@{karl.username}")

    karl_page = await sign_in(await new_context(notifications=False), web_node.url, karl)
    await expect(dot).to_have_attribute("data-online", "true")
    await expect(judy_page.locator("#chat-subtitle")).to_have_text(f"Online · @{karl.username}")

    await karl_page.close()
    await expect(dot).to_have_attribute("data-online", "false")
    await expect(judy_page.locator("#chat-subtitle")).to_have_text(f"@{karl.username}")


async def test_presence_of_contacts_already_online(
    new_context: NewContext, web_node: Node, api: Client
) -> None:
    lisa = await api.user(display_name="Lisa")
    mona = await api.user(display_name="Mona")
    cid = (await api.conversation(lisa, mona))["id"]
    await sign_in(await new_context(notifications=False), web_node.url, lisa)
    mona_page = await sign_in(await new_context(notifications=False), web_node.url, mona)
    dot = mona_page.locator(f'li[data-conversation-id="{cid}"] .presence')
    await expect(dot).to_have_attribute("data-online", "true", timeout=3000)
