"""Messages that change, in the web client between two people: a reply quoted, a reaction
counted and toggled, an edit and a deletion, each seen live on the other side."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page, expect

from tests.browser.support import NewContext, open_conversation, shoot, sign_in
from tests.helpers import Client, Node


def message(page: Page, text: str) -> object:
    return page.locator("#messages li.message", has_text=text)


async def test_reply_react_edit_and_delete_seen_live(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    ann, bob = await api.user(), await api.user()
    cid = (await api.conversation(ann, bob))["id"]
    r = await api.send(ann, cid, "lunch at noon?")
    assert r.status_code == 201

    a = await sign_in(await new_context(notifications=False), web_node.url, ann)
    b = await sign_in(await new_context(notifications=False), web_node.url, bob)
    await open_conversation(a, cid)
    await open_conversation(b, cid)
    question_b = b.locator('#messages li.message[data-seq="1"]')
    question_a = a.locator('#messages li.message[data-seq="1"]')
    await expect(question_b).to_contain_text("lunch at noon?")

    # Bob replies: the quote is above his composer, then in the message on both sides.
    await question_b.hover()
    await question_b.locator('button[data-msg-action="reply"]').click()
    await expect(b.locator("#composer-context")).to_contain_text("lunch at noon?")
    await b.fill("#composer", "yes, see you there")
    await b.press("#composer", "Enter")
    await expect(b.locator("#composer-context")).to_be_hidden()
    for page in (a, b):
        reply = page.locator('#messages li.message[data-seq="2"]')
        await expect(reply).to_contain_text("yes, see you there")
        await expect(reply.locator("blockquote.quote")).to_contain_text("lunch at noon?")
    [stored] = [m for m in await api.messages(ann, cid) if m["seq"] == 2]
    assert stored["reply_to"] == r.json()["id"]

    # Bob reacts; Ann sees the count, adds hers by clicking it, and takes it back.
    await question_b.hover()
    await question_b.locator('button[data-msg-action="react"]').click()
    await question_b.locator('.reaction-picker button[data-emoji="👍"]').click()
    chip_a = question_a.locator('.reactions button.reaction[data-emoji="👍"]')
    await expect(chip_a).to_have_text("👍 1")
    await expect(chip_a).to_have_attribute("aria-pressed", "false")
    await expect(chip_a).to_have_attribute("title", bob.display_name)
    await chip_a.click()
    chip_b = question_b.locator('.reactions button.reaction[data-emoji="👍"]')
    await expect(chip_b).to_have_text("👍 2")
    await expect(question_a.locator("button.reaction")).to_have_attribute("aria-pressed", "true")
    await shoot(a, artifacts, "message-actions-reacted")
    await question_a.locator("button.reaction").click()
    await expect(chip_b).to_have_text("👍 1")

    # Ann edits her question; Bob sees the new text marked edited.
    await question_a.hover()
    await question_a.locator('button[data-msg-action="edit"]').click()
    await expect(a.locator("#composer")).to_have_value("lunch at noon?")
    await expect(a.locator("#composer-context")).to_contain_text("Editing")
    await a.fill("#composer", "lunch at one?")
    await a.press("#composer", "Enter")
    await expect(question_b.locator(".text")).to_have_text("lunch at one?")
    await expect(question_b.locator(".edited")).to_be_visible()
    # Only her own message offers Edit; Bob's offers neither edit nor delete to her.
    reply_a = a.locator('#messages li.message[data-seq="2"]')
    assert await reply_a.locator('button[data-msg-action="edit"]').count() == 0
    assert await reply_a.locator('button[data-msg-action="delete"]').count() == 0

    # Ann deletes it: gone on both sides, its seq kept.
    a.on("dialog", lambda dialog: dialog.accept())
    await question_a.hover()
    await question_a.locator('button[data-msg-action="delete"]').click()
    for question in (question_a, question_b):
        await expect(question).to_have_class("message other deleted" if question is question_b
                                             else "message own deleted")  # fmt: skip
        await expect(question.locator(".text")).to_have_text("This message was deleted.")
        assert await question.locator(".reactions, .message-actions").count() == 0
    await shoot(b, artifacts, "message-actions-deleted")
    [gone] = [m for m in await api.messages(bob, cid) if m["seq"] == 1]
    assert gone["deleted_at"] is not None and gone["content"] == ""
