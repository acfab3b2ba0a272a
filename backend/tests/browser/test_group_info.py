"""The group info panel in the web client: the owner renames the group, adds someone and
removes someone, a member leaves; every member's client follows live from the
`conversation.updated` frames (a removed member's list drops the group, an added one's
shows it). A member is blocked and unblocked from the panel; the server's refusals are
shown there."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Locator, Page, expect

from tests.browser.support import NewContext, open_conversation, shoot, sign_in
from tests.helpers import Client, Node, User

BASE = "/api/v1/messenger/conversations"


def listed(page: Page, cid: str) -> Locator:
    return page.locator(f'#conversation-list li[data-conversation-id="{cid}"]')


def member(page: Page, user: User) -> Locator:
    return page.locator(f'#group-members li.member[data-user-id="{user.id}"]')


async def members_of(api: Client, viewer: User, cid: str) -> dict[int, str]:
    r = await api.http.get(f"{BASE}/{cid}", headers=viewer.headers)
    assert r.status_code == 200, r.text
    return {p["user_id"]: p["role"] for p in r.json()["participants"]}


async def test_owner_renames_adds_and_removes_and_a_member_leaves(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    ann = await api.user(display_name="Ann")
    bea = await api.user(display_name="Bea")
    cal = await api.user(display_name="Cal")
    dan = await api.user(display_name="Dan")
    cid = (await api.conversation(ann, bea, cal, title="Trio"))["id"]

    a = await sign_in(await new_context(notifications=False), web_node.url, ann)
    b = await sign_in(await new_context(notifications=False), web_node.url, bea)
    c = await sign_in(await new_context(notifications=False), web_node.url, cal)
    d = await sign_in(await new_context(notifications=False), web_node.url, dan)
    await open_conversation(c, cid)  # Cal has it open when he is removed
    await expect(listed(d, cid)).to_have_count(0)

    # A member's message offers Delete to the owner (by her role), not to another member.
    assert (await api.send(cal, cid, "from Cal")).status_code == 201
    await open_conversation(a, cid)
    await open_conversation(b, cid)
    for page, offered in ((a, 1), (b, 0)):
        cals = page.locator("li.message", has_text="from Cal")
        await expect(cals).to_have_count(1)
        await expect(cals.locator('button[data-msg-action="delete"]')).to_have_count(offered)

    # The panel: members with their roles; the owner may rename, add and remove.
    await a.click("#group-info-open")
    panel = a.locator("#group-info-dialog")
    await expect(panel).to_be_visible()
    await expect(a.locator("#group-members li.member")).to_have_count(3)
    await expect(member(a, ann)).to_have_attribute("data-role", "owner")
    await expect(member(a, ann).locator(".member-name")).to_have_text("Ann (you)")
    await expect(member(a, bea).locator(".member-role")).to_have_text("Member")
    await expect(member(a, ann).locator("button.member-remove")).to_have_count(0)
    await expect(member(a, bea).locator("button.member-remove")).to_be_visible()
    await expect(a.locator("#group-title-input")).to_have_value("Trio")

    # Rename: the others' lists and open headers follow live.
    await a.fill("#group-title-input", "Launch crew")
    await a.click("#group-rename")
    await expect(listed(b, cid).locator(".conversation-name")).to_have_text("Launch crew")
    await expect(c.locator("#chat-title")).to_have_text("Launch crew")
    await expect(a.locator("#chat-title")).to_have_text("Launch crew")
    r = await api.http.get(f"{BASE}/{cid}", headers=bea.headers)
    assert r.json()["title"] == "Launch crew"

    # Add Dan with the picker: the group appears in his list.
    await a.fill("#group-add-query", dan.username)
    pick = a.locator(f'#group-add-results button.person[data-user-id="{dan.id}"]')
    await pick.click()
    await expect(pick).to_have_attribute("aria-pressed", "true")
    await a.click("#group-add-submit")
    await expect(member(a, dan)).to_be_visible()
    await expect(a.locator("#group-members li.member")).to_have_count(4)
    await expect(listed(d, cid).locator(".conversation-name")).to_have_text("Launch crew")
    await expect(a.locator("#chat-subtitle")).to_have_text("4 members")
    await shoot(a, artifacts, "group-info-panel")

    # Remove Cal: his list drops the group and his open chat closes, live.
    await member(a, cal).locator("button.member-remove").click()
    await expect(member(a, cal)).to_have_count(0)
    await expect(listed(c, cid)).to_have_count(0)
    await expect(c.locator("#chat-pane")).to_be_hidden()
    assert cal.id not in await members_of(api, ann, cid)
    r = await api.http.get(f"{BASE}/{cid}", headers=cal.headers)
    assert r.status_code in (403, 404)

    # Bea leaves, after confirming: gone from her list, and from the panel the owner has open.
    await open_conversation(b, cid)
    await b.click("#group-info-open")
    await expect(member(b, bea)).to_have_attribute("data-role", "member")
    await expect(b.locator("#group-rename")).to_be_hidden()
    await expect(b.locator("#group-add-form")).to_be_hidden()
    await expect(b.locator("#group-members button.member-remove")).to_have_count(0)
    await b.click("#group-leave")
    await b.click("#group-leave-no")  # changed her mind once: nothing happens
    assert bea.id in await members_of(api, ann, cid)
    await b.click("#group-leave")
    await b.click("#group-leave-yes")
    await expect(b.locator("#group-info-dialog")).to_be_hidden()
    await expect(listed(b, cid)).to_have_count(0)
    await expect(b.locator("#chat-pane")).to_be_hidden()
    await expect(member(a, bea)).to_have_count(0)
    await expect(a.locator("#group-members li.member")).to_have_count(2)
    await expect(a.locator("#chat-subtitle")).to_have_text("2 members")
    assert await members_of(api, ann, cid) == {ann.id: "owner", dan.id: "member"}

    # Those still in it keep talking; those who left hear nothing more of it.
    await open_conversation(d, cid)
    await d.fill("#composer", "glad to be here")
    await d.press("#composer", "Enter")
    await expect(a.locator("#messages li.message", has_text="glad to be here")).to_be_visible()
    await expect(listed(b, cid)).to_have_count(0)
    await expect(listed(c, cid)).to_have_count(0)


async def test_block_from_the_panel_and_refusals_shown(
    new_context: NewContext, web_node: Node, api: Client
) -> None:
    ann = await api.user(display_name="Ann")
    bob = await api.user(display_name="Bob")
    eve = await api.user(display_name="Eve")
    cid = (await api.conversation(ann, bob, title="Pair plus"))["id"]
    # Eve blocked Ann: Ann cannot add her to a group.
    r = await api.http.put(f"/api/v1/me/blocks/{ann.id}", headers=eve.headers)
    assert r.status_code == 200, r.text

    a = await sign_in(await new_context(notifications=False), web_node.url, ann)
    await open_conversation(a, cid)
    await a.click("#group-info-open")
    block = member(a, bob).locator("button.member-block")
    await expect(block).to_have_text("Block")
    await expect(member(a, ann).locator("button.member-block")).to_have_count(0)

    await block.click()
    await expect(block).to_have_text("Unblock")
    await expect(block).to_have_attribute("aria-pressed", "true")
    r = await api.http.get("/api/v1/me/blocks", headers=ann.headers)
    assert [x["user_id"] for x in r.json()["blocks"]] == [bob.id]
    await block.click()
    await expect(block).to_have_text("Block")
    r = await api.http.get("/api/v1/me/blocks", headers=ann.headers)
    assert r.json()["blocks"] == []

    # The server refuses to add Eve: the panel says so, and nobody was added.
    error = a.locator("#group-info-error")
    await expect(error).to_be_hidden()
    await a.fill("#group-add-query", eve.username)
    await a.locator(f'#group-add-results button.person[data-user-id="{eve.id}"]').click()
    await a.click("#group-add-submit")
    await expect(error).to_be_visible()
    await expect(error).not_to_be_empty()
    await expect(a.locator("#group-members li.member")).to_have_count(2)
    assert set(await members_of(api, ann, cid)) == {ann.id, bob.id}

    # A panel opened by a member who is no admin offers neither rename nor add nor remove.
    b = await sign_in(await new_context(notifications=False), web_node.url, bob)
    await open_conversation(b, cid)
    await b.click("#group-info-open")
    await expect(member(b, ann)).to_have_attribute("data-role", "owner")
    await expect(b.locator("#group-title-input")).to_have_attribute("readonly", "")
    await expect(b.locator("#group-rename")).to_be_hidden()
    await expect(b.locator("#group-add-form")).to_be_hidden()
    await expect(b.locator("#group-members button.member-remove")).to_have_count(0)
