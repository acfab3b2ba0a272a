"""Messages that change: edits, deletions, replies and reactions, the `message.updated`
frames that tell every participant, and `changed_after`, which tells a client that was
away. Every refusal leaves nothing written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from tests.cluster import Cluster, connect, send_frame
from tests.helpers import Client, Node, Socket, User, eventually, make_settings, start_node
from tests.push_world import PushWorld, start_push_world
from tests.test_push_clearing import add_device, clears, delivered

pytest_plugins = ["tests.cluster_fixtures"]

C = "/api/v1/messenger/conversations"
UNKNOWN = "00000000-0000-0000-0000-000000000000"


def path(conversation_id: str, message_id: str, emoji: str | None = None) -> str:
    base = f"{C}/{conversation_id}/messages/{message_id}"
    return base if emoji is None else f"{base}/reactions/{emoji}"


async def sent(
    client: Client, user: User, conversation_id: str, content: str, **extra: Any
) -> dict:
    r = await client.send(user, conversation_id, content, **extra)
    assert r.status_code == 201, r.text
    message: dict = r.json()
    return message


async def edit(client: Client, user: User, conv: str, mid: str, content: Any) -> Any:
    return await client.http.patch(path(conv, mid), json={"content": content}, headers=user.headers)


async def delete(client: Client, user: User, conv: str, mid: str) -> Any:
    return await client.http.delete(path(conv, mid), headers=user.headers)


async def react(
    client: Client, user: User, conv: str, mid: str, emoji: str, on: bool = True
) -> Any:
    method = client.http.put if on else client.http.delete
    return await method(path(conv, mid, emoji), headers=user.headers)


async def history(client: Client, user: User, conv: str) -> dict:
    r = await client.http.get(f"{C}/{conv}/messages", headers=user.headers)
    assert r.status_code == 200, r.text
    body: dict = r.json()
    return body


async def changes(client: Client, user: User, conv: str, cursor: int, **params: Any) -> dict:
    r = await client.http.get(
        f"{C}/{conv}/messages",
        params={"changed_after": cursor, **params},
        headers=user.headers,
    )
    assert r.status_code == 200, r.text
    body: dict = r.json()
    return body


def error(r: Any, status: int, code: str) -> None:
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text


async def test_edit_reaches_everyone_with_mentions_found_again(client: Client, node: Node) -> None:
    ann, bob = await client.user(), await client.user()
    conv = (await client.conversation(ann, bob))["id"]
    original = await sent(client, ann, conv, "see you at noon")
    assert (original["edited_at"], original["reply_to"], original["reactions"]) == (None, None, {})
    cursor = (await history(client, bob, conv))["cursor"]
    b = await Socket.connect(node, bob)
    try:
        r = await edit(client, ann, conv, original["id"], f"see you at one, @{bob.username}")
        assert r.status_code == 200, r.text
        edited = r.json()
        assert edited["content"] == f"see you at one, @{bob.username}"
        assert edited["edited_at"] is not None and edited["mentions"] == [bob.id]
        assert (edited["seq"], edited["created_at"]) == (original["seq"], original["created_at"])
        frame = await b.expect("message.updated")
        assert frame["message"] == edited
    finally:
        await b.close()
    [stored] = (await history(client, bob, conv))["messages"]
    assert stored == edited
    assert (await changes(client, bob, conv, cursor))["messages"] == [edited]
    # Mentions go when the edit no longer names anyone.
    r = await edit(client, ann, conv, original["id"], "see you")
    assert r.json()["mentions"] == []


async def test_edit_refusals_change_nothing(client: Client) -> None:
    ann, bob, eve = await client.user(), await client.user(), await client.user()
    conv = (await client.conversation(ann, bob))["id"]
    other = (await client.conversation(ann, eve))["id"]
    message = await sent(client, ann, conv, "original")
    elsewhere = await sent(client, ann, other, "elsewhere")
    cursor = (await history(client, ann, conv))["cursor"]

    error(await edit(client, bob, conv, message["id"], "bob was here"), 403, "not_your_message")
    error(await edit(client, eve, conv, message["id"], "eve"), 403, "not_a_participant")
    error(await edit(client, ann, conv, UNKNOWN, "x"), 404, "message_not_found")
    error(await edit(client, ann, conv, elsewhere["id"], "x"), 404, "message_not_found")
    error(await edit(client, ann, conv, "x" * 500, "x"), 404, "message_not_found")
    error(await edit(client, ann, UNKNOWN, message["id"], "x"), 404, "conversation_not_found")
    error(await edit(client, ann, conv, message["id"], "  "), 422, "empty_content")
    error(await edit(client, ann, conv, message["id"], "x" * 4001), 422, "message_too_long")
    error(await edit(client, ann, conv, message["id"], 7), 422, "invalid_field")
    r = await client.http.patch(
        path(conv, message["id"]), content=b"{not json", headers=ann.headers
    )
    assert r.status_code == 400, r.text
    assert (await history(client, ann, conv))["messages"] == [message]
    assert (await changes(client, ann, conv, cursor)) == {
        "messages": [],
        "cursor": cursor,
        "has_more": False,
    }
    # A deleted message cannot be edited (nor undeleted by an edit).
    assert (await delete(client, ann, conv, message["id"])).status_code == 200
    error(await edit(client, ann, conv, message["id"], "back"), 409, "message_deleted")
    [stored] = (await history(client, ann, conv))["messages"]
    assert stored["content"] == "" and stored["edited_at"] is None


async def test_past_the_edit_window_a_message_stays_as_it_is(db_url: str) -> None:
    node = await start_node(make_settings(db_url, message_edit_window_seconds=0))
    client = Client(node)
    try:
        ann, bob = await client.user(), await client.user()
        conv = (await client.conversation(ann, bob))["id"]
        message = await sent(client, ann, conv, "typo")
        error(await edit(client, ann, conv, message["id"], "fixed"), 403, "edit_window_passed")
        assert (await history(client, ann, conv))["messages"] == [message]
        # Deleting is not bound by it.
        assert (await delete(client, ann, conv, message["id"])).status_code == 200
    finally:
        await client.close()
        await node.stop()


async def test_delete_keeps_the_seq_and_drops_content_mentions_and_reactions(
    client: Client, node: Node
) -> None:
    ann, bob = await client.user(), await client.user()
    conv = (await client.conversation(ann, bob))["id"]
    first = await sent(client, ann, conv, "first")
    word = f"zebracrossing{ann.id}"
    doomed = await sent(client, ann, conv, f"{word} @{bob.username}", reply_to=first["id"])
    assert doomed["mentions"] == [bob.id] and doomed["reply_to"] == first["id"]
    assert (await react(client, bob, conv, doomed["id"], "👍")).status_code == 200
    found = await client.http.get(
        "/api/v1/messenger/search", params={"q": word}, headers=bob.headers
    )
    assert [m["id"] for m in found.json()["messages"]] == [doomed["id"]]

    error(await delete(client, bob, conv, doomed["id"]), 403, "not_allowed")
    b = await Socket.connect(node, bob)
    try:
        r = await delete(client, ann, conv, doomed["id"])
        assert r.status_code == 200, r.text
        gone = r.json()
        assert gone["deleted_at"] is not None
        assert (gone["content"], gone["mentions"], gone["reactions"]) == ("", [], {})
        assert (gone["seq"], gone["reply_to"]) == (doomed["seq"], first["id"])
        assert (await b.expect("message.updated"))["message"] == gone
        # Again: the same answer, and nobody is told twice.
        again = await delete(client, ann, conv, doomed["id"])
        assert (again.status_code, again.json()) == (200, gone)
        await b.nothing("message.updated")
    finally:
        await b.close()
    assert [m["id"] for m in (await history(client, bob, conv))["messages"]] == [
        first["id"],
        doomed["id"],
    ]
    found = await client.http.get(
        "/api/v1/messenger/search", params={"q": word}, headers=bob.headers
    )
    assert found.json()["messages"] == []
    error(await react(client, bob, conv, doomed["id"], "👍"), 409, "message_deleted")
    error(await delete(client, ann, UNKNOWN, doomed["id"]), 404, "conversation_not_found")
    error(await delete(client, ann, conv, UNKNOWN), 404, "message_not_found")


async def test_a_groups_creator_may_delete_anyones_message(client: Client) -> None:
    ann, bob, cat = await client.user(), await client.user(), await client.user()
    group = (await client.conversation(ann, bob, cat, title="trio"))["id"]
    by_bob = await sent(client, bob, group, "from bob")
    by_ann = await sent(client, ann, group, "from ann")
    error(await delete(client, cat, group, by_bob["id"]), 403, "not_allowed")
    error(await delete(client, bob, group, by_ann["id"]), 403, "not_allowed")
    r = await delete(client, ann, group, by_bob["id"])
    assert r.status_code == 200 and r.json()["deleted_at"] is not None
    # ... but only the sender edits it.
    other = await sent(client, bob, group, "still bob's")
    error(await edit(client, ann, group, other["id"], "ann's now"), 403, "not_your_message")


async def test_replies_quote_a_message_of_the_same_conversation(client: Client, node: Node) -> None:
    ann, bob, eve = await client.user(), await client.user(), await client.user()
    conv = (await client.conversation(ann, bob))["id"]
    other = (await client.conversation(ann, eve))["id"]
    first = await sent(client, ann, conv, "question?")
    elsewhere = await sent(client, ann, other, "elsewhere")
    reply = await sent(client, bob, conv, "answer", reply_to=first["id"])
    assert reply["reply_to"] == first["id"]

    # Over the socket too, and the other side sees it.
    b, a = await Socket.connect(node, bob), await Socket.connect(node, ann)
    try:
        await b.send({**send_frame(conv, "and more", "r2"), "reply_to": reply["id"]})
        ack = await b.expect("message.ack", client_msg_id="r2")
        assert ack["message"]["reply_to"] == reply["id"]
        assert (await a.expect("message.new"))["message"]["reply_to"] == reply["id"]
        await b.send({**send_frame(conv, "across", "r3"), "reply_to": elsewhere["id"]})
        refused = await b.expect("error", ref="r3")
        assert refused["code"] == "reply_to_not_found"
        await b.send({**send_frame(conv, "typed", "r4"), "reply_to": 5})
        assert (await b.expect("error", ref="r4"))["code"] == "invalid_field"
    finally:
        await a.close()
        await b.close()

    before = (await history(client, ann, conv))["messages"]
    error(await client.send(bob, conv, "x", reply_to=elsewhere["id"]), 404, "reply_to_not_found")
    error(await client.send(bob, conv, "x", reply_to=UNKNOWN), 404, "reply_to_not_found")
    error(await client.send(bob, conv, "x", reply_to="y" * 65), 422, "invalid_field")
    error(await client.send(bob, conv, "x", reply_to=""), 422, "invalid_field")
    assert (await delete(client, ann, conv, first["id"])).status_code == 200
    error(await client.send(bob, conv, "x", reply_to=first["id"]), 404, "reply_to_not_found")
    after = (await history(client, ann, conv))["messages"]
    assert [m["id"] for m in after] == [m["id"] for m in before]
    # A refused reply is no message, and the conversation's seq did not move.
    assert (await sent(client, bob, conv, "next"))["seq"] == before[-1]["seq"] + 1


async def test_reactions_toggle_and_show_who(client: Client, node: Node) -> None:
    ann, bob, eve = await client.user(), await client.user(), await client.user()
    conv = (await client.conversation(ann, bob))["id"]
    message = await sent(client, ann, conv, "lunch?")
    a = await Socket.connect(node, ann)
    try:
        r = await react(client, bob, conv, message["id"], "👍")
        assert r.status_code == 200, r.text
        assert r.json()["reactions"] == {"👍": [bob.id]}
        assert (await a.expect("message.updated"))["message"]["reactions"] == {"👍": [bob.id]}
        # Twice is once, and tells nobody.
        r = await react(client, bob, conv, message["id"], "👍")
        assert r.json()["reactions"] == {"👍": [bob.id]}
        await a.nothing("message.updated")
    finally:
        await a.close()
    for emoji in ("👍", "👨‍👩‍👧‍👦", "🇩🇪", "👍🏽", "❤️", "1️⃣"):
        assert (await react(client, ann, conv, message["id"], emoji)).status_code == 200, emoji
    r = await react(client, bob, conv, message["id"], "👨‍👩‍👧‍👦", on=False)  # never made
    assert r.status_code == 200
    r = await react(client, ann, conv, message["id"], "🇩🇪", on=False)
    assert r.json()["reactions"] == {
        "👍": [bob.id, ann.id],
        "👨‍👩‍👧‍👦": [ann.id],
        "👍🏽": [ann.id],
        "❤️": [ann.id],
        "1️⃣": [ann.id],
    }
    assert (await history(client, bob, conv))["messages"][0]["reactions"] == r.json()["reactions"]

    for bad in ("x" * 40, "ok", "👍👍", "%01", "%0A", " 👍", "🏽", "1", "%E2%80%8D"):
        error(await react(client, bob, conv, message["id"], bad), 422, "invalid_emoji")
    error(await react(client, eve, conv, message["id"], "👍"), 403, "not_a_participant")
    error(await react(client, bob, conv, UNKNOWN, "👍"), 404, "message_not_found")
    error(await react(client, bob, UNKNOWN, message["id"], "👍"), 404, "conversation_not_found")
    other = (await client.conversation(ann, eve))["id"]
    elsewhere = await sent(client, ann, other, "elsewhere")
    error(await react(client, ann, conv, elsewhere["id"], "👍"), 404, "message_not_found")
    assert (await history(client, bob, conv))["messages"][0]["reactions"] == r.json()["reactions"]
    assert (await history(client, ann, other))["messages"][0]["reactions"] == {}


async def test_a_message_holds_a_bounded_number_of_different_emoji(client: Client) -> None:
    ann, bob = await client.user(), await client.user()
    conv = (await client.conversation(ann, bob))["id"]
    message = await sent(client, ann, conv, "react away")
    emoji = [chr(0x1F600 + i) for i in range(21)]
    for e in emoji[:20]:
        assert (await react(client, ann, conv, message["id"], e)).status_code == 200
    error(await react(client, ann, conv, message["id"], emoji[20]), 409, "too_many_reactions")
    # One already there may still be added to.
    r = await react(client, bob, conv, message["id"], emoji[0])
    assert r.status_code == 200 and len(r.json()["reactions"]) == 20


async def test_changed_after_pages_through_every_change_once(client: Client) -> None:
    ann, bob = await client.user(), await client.user()
    conv = (await client.conversation(ann, bob))["id"]
    messages = [await sent(client, ann, conv, f"m{i}") for i in range(5)]
    start = (await history(client, bob, conv))["cursor"]
    assert (await changes(client, bob, conv, 0))["cursor"] == start
    await edit(client, ann, conv, messages[1]["id"], "m1 edited")
    await react(client, bob, conv, messages[3]["id"], "🎉")
    await delete(client, ann, conv, messages[0]["id"])
    await edit(client, ann, conv, messages[1]["id"], "m1 edited twice")  # changed again: last

    page = await changes(client, bob, conv, start, limit=2)
    assert [m["id"] for m in page["messages"]] == [messages[3]["id"], messages[0]["id"]]
    assert page["has_more"] is True
    assert page["messages"][0]["reactions"] == {"🎉": [bob.id]}
    rest = await changes(client, bob, conv, page["cursor"], limit=2)
    assert [m["content"] for m in rest["messages"]] == ["m1 edited twice"]
    assert rest["has_more"] is False
    done = await changes(client, bob, conv, rest["cursor"])
    assert done == {"messages": [], "cursor": rest["cursor"], "has_more": False}
    assert (await history(client, bob, conv))["cursor"] == rest["cursor"]

    for bad in ("-1", "x", "99999999999", ""):
        r = await client.http.get(
            f"{C}/{conv}/messages", params={"changed_after": bad}, headers=bob.headers
        )
        error(r, 422, "invalid_field")
    r = await client.http.get(
        f"{C}/{conv}/messages", params={"changed_after": 0, "limit": 0}, headers=bob.headers
    )
    error(r, 422, "invalid_field")
    eve = await client.user()
    r = await client.http.get(
        f"{C}/{conv}/messages", params={"changed_after": 0}, headers=eve.headers
    )
    error(r, 403, "not_a_participant")


async def test_changed_after_misses_nothing_while_changes_race(client: Client) -> None:
    """Concurrent edits and reactions, followed by a client polling with its cursor all
    along: what it ends up with is what the server has, each change seen."""
    ann, bob = await client.user(), await client.user()
    conv = (await client.conversation(ann, bob))["id"]
    messages = [await sent(client, ann, conv, f"m{i}") for i in range(4)]
    cursor = (await history(client, bob, conv))["cursor"]
    seen: dict[str, dict] = {m["id"]: m for m in messages}
    done = asyncio.Event()

    async def follow() -> None:
        nonlocal cursor
        while True:
            finished = done.is_set()
            page = await changes(client, bob, conv, cursor, limit=3)
            for m in page["messages"]:
                seen[m["id"]] = m
            cursor = page["cursor"]
            if finished and not page["has_more"]:
                return

    async def edits(i: int) -> None:
        for round_ in range(6):
            r = await edit(client, ann, conv, messages[i]["id"], f"m{i} v{round_}")
            assert r.status_code == 200, r.text

    async def reactions() -> None:
        for round_ in range(6):
            for m in messages:
                r = await react(client, bob, conv, m["id"], "👍", on=round_ % 2 == 0)
                assert r.status_code == 200, r.text

    follower = asyncio.create_task(follow())
    await asyncio.gather(*(edits(i) for i in range(len(messages))), reactions())
    done.set()
    await follower
    final = {m["id"]: m for m in (await history(client, bob, conv))["messages"]}
    assert seen == final
    assert {m["content"] for m in final.values()} == {f"m{i} v5" for i in range(4)}


# -- a deleted message's notifications ------------------------------------------------


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("message-changes"))


async def test_deleting_a_pushed_message_clears_its_notification(
    world: PushWorld, db_url: str
) -> None:
    world.reset()
    node = await start_node(make_settings(db_url, **world.settings))
    client = Client(node)
    try:
        ann, bob = await client.user(), await client.user()
        conv = (await client.conversation(ann, bob))["id"]
        token = world.webpush.subscribe()
        await add_device(client, bob, "web_push", token)
        message = await sent(client, ann, conv, "wrong chat, sorry")
        await delivered(node, message["id"], 1)
        assert (await delete(client, ann, conv, message["id"])).status_code == 200

        def cleared() -> list[dict]:
            return clears(world, "web_push", token)

        [clear] = await eventually(cleared, what="the clearing push")
        assert clear["message_id"] == message["id"] and clear["reason"] == "deleted"
        assert clear["conversation_id"] == conv
    finally:
        await client.close()
        await node.stop()


# -- across nodes -----------------------------------------------------------------------


async def test_message_updated_reaches_every_node(cluster: Cluster) -> None:
    n1, n2 = await cluster.node(), await cluster.node()
    api1, api2 = Client(n1), Client(n2)
    ann, bob = await api1.user(), await api1.user()
    conv = (await api1.conversation(ann, bob))["id"]
    a1, b2 = await connect(n1, ann), await connect(n2, bob)
    try:
        await a1.send({**send_frame(conv, "hello", "h1")})
        message = (await a1.expect("message.ack", client_msg_id="h1"))["message"]
        await b2.expect("message.new")
        await b2.send({**send_frame(conv, "hi back", "h2"), "reply_to": message["id"]})
        reply = (await b2.expect("message.ack", client_msg_id="h2"))["message"]
        assert (await a1.expect("message.new"))["message"]["reply_to"] == message["id"]

        r = await edit(api1, ann, conv, message["id"], "hello there")
        assert r.status_code == 200
        assert (await b2.expect("message.updated"))["message"] == r.json()
        assert (await a1.expect("message.updated"))["message"] == r.json()  # own sockets too
        r = await react(api2, bob, conv, message["id"], "👋")
        assert (await a1.expect("message.updated"))["message"]["reactions"] == {"👋": [bob.id]}
        r = await delete(api2, bob, conv, reply["id"])
        assert r.status_code == 200
        assert (await a1.expect("message.updated"))["message"]["deleted_at"] is not None
    finally:
        await a1.close()
        await b2.close()
        await api1.close()
        await api2.close()


async def test_changes_reach_only_those_who_have_the_message(client: Client, node: Node) -> None:
    """A member who joined later is told of changes to the messages after their join
    only, and may reply only to those."""
    ann, bob, dan = await client.user(), await client.user(), await client.user()
    conv = (await client.conversation(ann, bob, title="Later"))["id"]
    early = await sent(client, ann, conv, "before dan")
    r = await client.http.post(
        f"{C}/{conv}/participants", json={"user_ids": [dan.id]}, headers=ann.headers
    )
    assert r.status_code == 200, r.text
    later = await sent(client, ann, conv, "after dan")
    d, b = await Socket.connect(node, dan), await Socket.connect(node, bob)
    try:
        assert (await edit(client, ann, conv, early["id"], "before dan, edited")).status_code == 200
        assert (await react(client, ann, conv, early["id"], "👍")).status_code == 200
        assert (await b.expect("message.updated"))["message"]["id"] == early["id"]
        assert (await edit(client, ann, conv, later["id"], "after dan, edited")).status_code == 200
        # The first change dan hears of is the later message's.
        frame = await d.expect("message.updated")
        assert frame["message"]["id"] == later["id"]
        await d.nothing("message.updated")
    finally:
        await d.close()
        await b.close()
    r = await client.send(dan, conv, "re: before", reply_to=early["id"])
    error(r, 404, "reply_to_not_found")
    assert (await sent(client, dan, conv, "re: after", reply_to=later["id"]))["reply_to"] == later[
        "id"
    ]


async def test_a_blocked_user_cannot_edit_or_react_in_a_direct_conversation(
    client: Client,
) -> None:
    ann, bob = await client.user(), await client.user()
    conv = (await client.conversation(ann, bob))["id"]
    hers = await sent(client, ann, conv, "hers")
    his = await sent(client, bob, conv, "his")
    assert (await react(client, bob, conv, hers["id"], "👍")).status_code == 200
    assert (await client.http.put(f"/api/v1/me/blocks/{bob.id}", headers=ann.headers)).is_success
    error(await edit(client, bob, conv, his["id"], "still here"), 403, "blocked")
    error(await react(client, bob, conv, hers["id"], "😀"), 403, "blocked")
    # Taking back, deleting, and the blocker's own changes stay allowed.
    r = await react(client, bob, conv, hers["id"], "👍", on=False)
    assert r.status_code == 200 and r.json()["reactions"] == {}
    assert (await react(client, ann, conv, his["id"], "👍")).status_code == 200
    assert (await delete(client, bob, conv, his["id"])).status_code == 200
    [first, second] = (await history(client, ann, conv))["messages"]
    assert (first["content"], first["reactions"], second["deleted_at"] is not None) == (
        "hers",
        {},
        True,
    )


async def test_one_emoji_is_one_reaction_however_written(client: Client) -> None:
    ann, bob = await client.user(), await client.user()
    conv = (await client.conversation(ann, bob))["id"]
    mid = (await sent(client, ann, conv, "react"))["id"]
    assert (await react(client, ann, conv, mid, "😀")).status_code == 200
    r = await react(client, bob, conv, mid, "😀\ufe0f")
    assert r.json()["reactions"] == {"😀": [ann.id, bob.id]}
    # Text-default characters keep one selector, however many (or none) were sent.
    assert (await react(client, ann, conv, mid, "❤")).status_code == 200
    r = await react(client, bob, conv, mid, "❤️")
    assert r.json()["reactions"]["❤️"] == [ann.id, bob.id] and "❤" not in r.json()["reactions"]
    r = await react(client, ann, conv, mid, "1\u20e3")
    assert r.json()["reactions"]["1️⃣"] == [ann.id]
    # Taking back matches the same way.
    r = await react(client, bob, conv, mid, "😀", on=False)
    assert r.json()["reactions"]["😀"] == [ann.id]
    r = await react(client, ann, conv, mid, "❤", on=False)
    assert r.json()["reactions"]["❤️"] == [bob.id]
    r = await react(client, ann, conv, mid, "👨‍👩‍👧‍👦")  # four joined: a family
    assert r.status_code == 200
    thumbs = "\u200d".join(["👍"] * 10)
    for bad in (
        "😀\ufe0f\ufe0f",  # two selectors
        thumbs,  # ten joined
        "\u200d".join(["👍"] * 5),  # five joined
        "✓",  # a check mark, no emoji
        "\U0001faff",  # unassigned
        "\u200d".join(["👍", "✓"]),
    ):
        error(await react(client, bob, conv, mid, bad), 422, "invalid_emoji")
    assert set((await history(client, ann, conv))["messages"][0]["reactions"]) == {
        "😀",
        "❤️",
        "1️⃣",
        "👨‍👩‍👧‍👦",
    }
