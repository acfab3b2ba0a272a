"""A group's members and roles: rename, add, remove, leave, change a role; the
`conversation.updated` frames; history from when a member joined; and a removed
member's sockets, on any node, get nothing of the conversation from then on. Every
refusal leaves nothing written."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import func, insert, select

from app.db import utcnow
from app.messenger.models import Participant, PushDecision
from app.messenger.participants import ParticipantCache
from app.models import User as UserRow
from tests.cluster import Cluster, connect
from tests.helpers import Client, Node, Socket, User, eventually, make_settings, start_node

pytest_plugins = ["tests.cluster_fixtures"]

C = "/api/v1/messenger/conversations"
UNKNOWN = "00000000-0000-0000-0000-000000000000"


def error(r: Any, status: int, code: str) -> None:
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text


async def get(client: Client, user: User, conv: str) -> Any:
    return await client.http.get(f"{C}/{conv}", headers=user.headers)


async def state(client: Client, owner: User, conv: str) -> tuple[Any, dict[int, str]]:
    """(title, {user_id: role}) as the owner sees it."""
    r = await get(client, owner, conv)
    assert r.status_code == 200, r.text
    body = r.json()
    return body["title"], {p["user_id"]: p["role"] for p in body["participants"]}


async def rename(client: Client, user: User, conv: str, body: Any) -> Any:
    return await client.http.patch(f"{C}/{conv}", json=body, headers=user.headers)


async def add(client: Client, user: User, conv: str, body: Any) -> Any:
    if isinstance(body, list):
        body = {"user_ids": [u.id if isinstance(u, User) else u for u in body]}
    return await client.http.post(f"{C}/{conv}/participants", json=body, headers=user.headers)


async def remove(client: Client, user: User, conv: str, target: int) -> Any:
    return await client.http.delete(f"{C}/{conv}/participants/{target}", headers=user.headers)


async def set_role(client: Client, user: User, conv: str, target: int, role: Any) -> Any:
    return await client.http.patch(
        f"{C}/{conv}/participants/{target}", json={"role": role}, headers=user.headers
    )


async def sent(client: Client, user: User, conv: str, content: str) -> dict:
    r = await client.send(user, conv, content)
    assert r.status_code == 201, r.text
    message: dict = r.json()
    return message


async def search(client: Client, user: User, q: str) -> list[str]:
    r = await client.http.get("/api/v1/messenger/search", params={"q": q}, headers=user.headers)
    assert r.status_code == 200, r.text
    return [m["id"] for m in r.json()["messages"]]


async def updated(socket: Socket, conv: str) -> dict:
    frame = await socket.expect("conversation.updated")
    conversation: dict = frame["conversation"]
    assert conversation["id"] == conv
    return conversation


def roles_of(conversation: dict) -> dict[int, str]:
    return {p["user_id"]: p["role"] for p in conversation["participants"]}


async def test_roles_and_rename(client: Client, node: Node) -> None:
    ann, bob, cat = await client.user(), await client.user(), await client.user()
    conv = (await client.conversation(ann, bob, cat, title="Team"))["id"]
    assert await state(client, ann, conv) == (
        "Team",
        {ann.id: "owner", bob.id: "member", cat.id: "member"},
    )
    socket = await Socket.connect(node, bob)
    try:
        error(await rename(client, bob, conv, {"title": "Mine"}), 403, "not_allowed")
        for bad in ({"title": "x" * 201}, {"title": 5}, {"title": "   "}, {}, {"name": "x"}):
            error(await rename(client, ann, conv, bad), 422, "invalid_field")
        assert (await state(client, ann, conv))[0] == "Team"

        r = await rename(client, ann, conv, {"title": "  Launch  "})
        assert r.status_code == 200, r.text
        assert r.json()["title"] == "Launch" and r.json()["unread_count"] == 0
        pushed = await updated(socket, conv)
        assert pushed["title"] == "Launch" and roles_of(pushed)[ann.id] == "owner"

        # The owner makes bob an admin: he may rename it now.
        r = await set_role(client, ann, conv, bob.id, "admin")
        assert r.status_code == 200 and roles_of(r.json())[bob.id] == "admin"
        assert roles_of(await updated(socket, conv))[bob.id] == "admin"
        r = await rename(client, bob, conv, {"title": None})
        assert r.status_code == 200 and r.json()["title"] is None
    finally:
        await socket.close()


async def test_role_changes_are_the_owners(client: Client) -> None:
    ann, bob, cat = await client.user(), await client.user(), await client.user()
    conv = (await client.conversation(ann, bob, cat, title="Roles"))["id"]
    assert (await set_role(client, ann, conv, bob.id, "admin")).status_code == 200
    before = await state(client, ann, conv)
    # An admin changes no roles; nobody but the owner does.
    error(await set_role(client, bob, conv, cat.id, "admin"), 403, "not_allowed")
    error(await set_role(client, cat, conv, cat.id, "admin"), 403, "not_allowed")
    for bad in ("king", "", None, 1):
        error(await set_role(client, ann, conv, cat.id, bad), 422, "invalid_field")
    error(await set_role(client, ann, conv, 10**9, "admin"), 404, "participant_not_found")
    assert (await set_role(client, ann, conv, 10**30, "admin")).status_code == 404
    # The last owner stays: the owner cannot step down without handing ownership on.
    error(await set_role(client, ann, conv, ann.id, "member"), 409, "last_owner")
    assert await state(client, ann, conv) == before

    # Handing ownership over: the old owner becomes an admin.
    r = await set_role(client, ann, conv, cat.id, "owner")
    assert r.status_code == 200
    assert roles_of(r.json()) == {ann.id: "admin", bob.id: "admin", cat.id: "owner"}
    error(await set_role(client, ann, conv, bob.id, "member"), 403, "not_allowed")


async def test_a_new_member_sees_history_from_when_they_joined(client: Client, node: Node) -> None:
    ann, bob, dan = await client.user(), await client.user(), await client.user()
    conv = (await client.conversation(ann, bob, title="History"))["id"]
    early = await sent(client, ann, conv, "the lighthouse plan, before dan")
    await sent(client, bob, conv, "second")
    socket = await Socket.connect(node, dan)
    try:
        r = await add(client, ann, conv, [dan, bob])  # bob is in already: left as he is
        assert r.status_code == 200, r.text
        assert roles_of(r.json()) == {ann.id: "owner", bob.id: "member", dan.id: "member"}
        pushed = await updated(socket, conv)
        assert dan.id in pushed["participant_ids"] and "unread_count" not in pushed
        await socket.expect("conversation.new", conversation_id=conv)

        # Nothing before the join: no history, no last message, nothing unread.
        mine = (await get(client, dan, conv)).json()
        assert (mine["last_message"], mine["unread_count"]) == (None, 0)
        assert {p["user_id"]: p["last_read_seq"] for p in mine["participants"]}[dan.id] == 2
        assert await client.messages(dan, conv) == []
        assert await client.messages(dan, conv, before_seq=3) == []
        assert await client.messages(dan, conv, after_seq=0) == []
        later = await sent(client, ann, conv, "welcome dan, the lighthouse is ours")
        assert later["seq"] == 3  # seq stays the conversation's
        assert [m["id"] for m in await client.messages(dan, conv, after_seq=0)] == [later["id"]]
        assert [m["id"] for m in await client.messages(dan, conv)] == [later["id"]]
        assert await search(client, dan, "lighthouse") == [later["id"]]
        assert set(await search(client, bob, "lighthouse")) == {early["id"], later["id"]}

        # Changes to earlier messages are none of dan's, and he cannot make any.
        path = f"{C}/{conv}/messages/{early['id']}"
        r = await client.http.patch(path, json={"content": "edited"}, headers=ann.headers)
        assert r.status_code == 200
        r = await client.http.get(
            f"{C}/{conv}/messages", params={"changed_after": 0}, headers=dan.headers
        )
        assert r.status_code == 200 and r.json()["messages"] == []
        r = await client.http.put(path + "/reactions/👍", headers=dan.headers)
        error(r, 404, "message_not_found")
        r = await client.http.get(
            f"{C}/{conv}/messages", params={"changed_after": 0}, headers=bob.headers
        )
        assert [m["id"] for m in r.json()["messages"]] == [early["id"]]

        # Adding only members already in changes nothing and tells nobody.
        r = await add(client, ann, conv, [bob, dan])
        assert r.status_code == 200
        await socket.nothing("conversation.updated")
    finally:
        await socket.close()


async def users_in_bulk(node: Node, count: int) -> list[int]:
    """Plain accounts written straight to the database (registering a thousand through
    the API would only time password hashing)."""
    tag = secrets.token_hex(4)
    async with node.services.engine.begin() as conn:
        await conn.execute(
            insert(UserRow),
            [
                {"username": f"bulk{tag}{i}", "display_name": "Bulk", "password_hash": "x"}
                for i in range(count)
            ],
        )
        rows = await conn.execute(
            select(UserRow.id).where(UserRow.username.startswith(f"bulk{tag}"))
        )
        return sorted(rows.scalars())


async def test_adding_refusals_write_nothing(client: Client, node: Node) -> None:
    ann, bob, cat = await client.user(), await client.user(), await client.user()
    eve, fay, gus = await client.user(), await client.user(), await client.user()
    conv = (await client.conversation(ann, bob, cat, title="Closed"))["id"]
    direct = (await client.conversation(ann, bob))["id"]
    before = await state(client, ann, conv)

    error(await add(client, bob, conv, [gus]), 403, "not_allowed")
    error(await add(client, gus, conv, [gus]), 403, "not_a_participant")
    error(await add(client, ann, UNKNOWN, [gus]), 404, "conversation_not_found")
    error(await add(client, ann, conv, [gus, 10**9]), 422, "unknown_user")
    for bad in ({"user_ids": []}, {"user_ids": ["1"]}, {"user_ids": [0]}, {"user_ids": [2**40]},
                {"user_ids": gus.id}, {}):  # fmt: skip
        error(await add(client, ann, conv, bad), 422, "invalid_field")
    r = await client.http.post(f"{C}/{conv}/participants", content=b"[", headers=ann.headers)
    error(r, 400, "malformed_json")
    # Someone who blocked the adder, or whom the adder blocked: the whole call is refused.
    assert (await client.http.put(f"/api/v1/me/blocks/{ann.id}", headers=eve.headers)).is_success
    error(await add(client, ann, conv, [gus, eve]), 403, "blocked")
    assert (await client.http.put(f"/api/v1/me/blocks/{fay.id}", headers=ann.headers)).is_success
    error(await add(client, ann, conv, [fay, gus]), 403, "blocked")
    # A direct conversation has no members to manage.
    error(await add(client, ann, direct, [gus]), 409, "not_a_group")
    error(await rename(client, ann, direct, {"title": "x"}), 409, "not_a_group")
    error(await remove(client, ann, direct, bob.id), 409, "not_a_group")
    error(await set_role(client, ann, direct, bob.id, "admin"), 409, "not_a_group")
    assert await state(client, ann, conv) == before
    assert len((await get(client, ann, direct)).json()["participants"]) == 2

    # At most 1,000 members: 3 + 998 is one too many, 3 + 997 fits.
    bulk = await users_in_bulk(node, 998)
    error(await add(client, ann, conv, bulk), 422, "too_many_members")
    assert await state(client, ann, conv) == before
    r = await add(client, ann, conv, bulk[:997])
    assert r.status_code == 200 and len(r.json()["participants"]) == 1000
    error(await add(client, ann, conv, bulk[997:]), 422, "too_many_members")


async def test_removing_and_the_rules_of_who_removes_whom(client: Client, node: Node) -> None:
    ann, bob, cat = await client.user(), await client.user(), await client.user()
    dan, eve = await client.user(), await client.user()
    conv = (await client.conversation(ann, bob, cat, dan, eve, title="Crew"))["id"]
    for admin in (bob, dan):
        assert (await set_role(client, ann, conv, admin.id, "admin")).status_code == 200
    before = await state(client, ann, conv)

    error(await remove(client, bob, conv, ann.id), 403, "not_allowed")  # the owner
    error(await remove(client, bob, conv, dan.id), 403, "not_allowed")  # another admin
    error(await remove(client, cat, conv, eve.id), 403, "not_allowed")  # a member
    error(await remove(client, ann, conv, 10**9), 404, "participant_not_found")
    error(await remove(client, ann, UNKNOWN, bob.id), 404, "conversation_not_found")
    assert await state(client, ann, conv) == before

    sockets = {u.id: await Socket.connect(node, u) for u in (ann, cat)}
    try:
        r = await remove(client, bob, conv, cat.id)  # an admin removes a member
        assert r.status_code == 200, r.text
        assert cat.id not in r.json()["participant_ids"]
        # The removed member's sockets hear of it (their client drops the conversation)...
        assert cat.id not in (await updated(sockets[cat.id], conv))["participant_ids"]
        assert cat.id not in (await updated(sockets[ann.id], conv))["participant_ids"]
        # ... and nothing of the conversation after it: every route refuses them.
        await sent(client, ann, conv, "after cat left")
        await sockets[ann.id].expect("message.new")
        await sockets[cat.id].nothing("message.new")
        error(await get(client, cat, conv), 403, "not_a_participant")
        r = await client.http.get(f"{C}/{conv}/messages", headers=cat.headers)
        error(r, 403, "not_a_participant")
        error(await client.send(cat, conv, "still here?"), 403, "not_a_participant")
        error(await remove(client, cat, conv, eve.id), 403, "not_a_participant")
        assert await search(client, cat, "after") == []

        # The owner removes an admin.
        assert (await remove(client, ann, conv, dan.id)).status_code == 200
        error(await remove(client, ann, conv, dan.id), 404, "participant_not_found")
        assert (await state(client, ann, conv))[1] == {
            ann.id: "owner",
            bob.id: "admin",
            eve.id: "member",
        }
        # Leaving: a member removes themselves.
        r = await remove(client, eve, conv, eve.id)
        assert r.status_code == 200 and eve.id not in r.json()["participant_ids"]
        assert "unread_count" not in r.json()  # no longer theirs to read
    finally:
        for socket in sockets.values():
            await socket.close()


async def test_the_owner_leaving_hands_ownership_on(client: Client) -> None:
    users = [await client.user() for _ in range(4)]
    ann, bob, cat, dan = users
    conv = (await client.conversation(ann, bob, cat, title="Relay"))["id"]
    await sent(client, ann, conv, "before dan")
    assert (await add(client, ann, conv, [dan])).status_code == 200
    # dan became an admin first, but cat has been here longer.
    for admin in (dan, cat):
        assert (await set_role(client, ann, conv, admin.id, "admin")).status_code == 200

    assert (await remove(client, ann, conv, ann.id)).status_code == 200
    assert (await state(client, bob, conv))[1] == {bob.id: "member", cat.id: "owner",
                                                   dan.id: "admin"}  # fmt: skip
    assert (await remove(client, cat, conv, cat.id)).status_code == 200
    assert (await state(client, bob, conv))[1] == {bob.id: "member", dan.id: "owner"}
    assert (await remove(client, dan, conv, dan.id)).status_code == 200
    assert (await state(client, bob, conv))[1] == {bob.id: "owner"}
    # The last member leaves: the group stays, empty, nobody's to read.
    r = await remove(client, bob, conv, bob.id)
    assert r.status_code == 200 and r.json()["participants"] == []
    error(await get(client, bob, conv), 404, "conversation_not_found")


async def test_mention_all_and_deleting_follow_roles(client: Client) -> None:
    ann, bob, cat = await client.user(), await client.user(), await client.user()
    conv = (await client.conversation(ann, bob, cat, title="Ping"))["id"]
    assert not (await sent(client, bob, conv, "@all hello"))["mentions"]
    theirs = await sent(client, cat, conv, "oops")
    path = f"{C}/{conv}/messages/{theirs['id']}"
    error(await client.http.delete(path, headers=bob.headers), 403, "not_allowed")
    assert (await set_role(client, ann, conv, bob.id, "admin")).status_code == 200
    assert (await sent(client, bob, conv, "@all hello"))["mentions"] == sorted(
        [ann.id, bob.id, cat.id]
    )
    assert (await client.http.delete(path, headers=bob.headers)).status_code == 200


# -- across nodes -----------------------------------------------------------------------


async def test_a_removed_member_gets_nothing_more_on_any_node(cluster: Cluster) -> None:
    """bob's socket is on node 2, which has the group's participants cached; node 1
    removes him. He hears of it, then no frame and no push of the group, whichever node
    the next messages go through."""
    n1, n2 = await cluster.node(), await cluster.node()
    api1, api2 = Client(n1), Client(n2)
    ann, bob, cat = await api1.user(), await api1.user(), await api1.user()
    conv = (await api1.conversation(ann, bob, cat, title="Two nodes"))["id"]
    direct = (await api1.conversation(ann, bob))["id"]
    a1, b2 = await connect(n1, ann), await connect(n2, bob)
    try:
        await sent(api2, cat, conv, "through node 2")  # node 2 caches the participants
        await b2.expect("message.new")
        await sent(api1, cat, conv, "through node 1")
        await b2.expect("message.new")

        assert (await remove(api1, ann, conv, bob.id)).status_code == 200
        assert bob.id not in (await updated(b2, conv))["participant_ids"]

        via2 = await sent(api2, cat, conv, "after bob, through node 2")
        via1 = await sent(api1, cat, conv, "after bob, through node 1")
        await a1.expect("message.new")
        await a1.expect("message.new")
        # A marker from node 1 to bob, after its message: nothing of the group before it.
        await a1.send({"type": "typing", "conversation_id": direct})
        await b2.first("typing", unwanted="message.new", conversation_id=direct)
        await b2.nothing("message.new")

        # No push decision for bob about what came after (ann's shows they were made).
        async def decided(user_id: int) -> int:
            async with n1.services.engine.connect() as conn:
                return int(
                    await conn.scalar(
                        select(func.count())
                        .select_from(PushDecision)
                        .where(
                            PushDecision.conversation_id == conv,
                            PushDecision.user_id == user_id,
                            PushDecision.last_seq >= via2["seq"],
                        )
                    )
                    or 0
                )

        async def ann_decided() -> bool:
            async with n1.services.engine.connect() as conn:
                top = await conn.scalar(
                    select(func.max(PushDecision.last_seq)).where(
                        PushDecision.conversation_id == conv, PushDecision.user_id == ann.id
                    )
                )
            return top is not None and top >= via1["seq"]

        await eventually(ann_decided, what="the push decisions for the last message")
        assert await decided(bob.id) == 0
    finally:
        await a1.close()
        await b2.close()
        await api1.close()
        await api2.close()


async def test_a_deployment_decides_who_beyond_admins_may_rename_add_and_delete(
    db_url: str,
) -> None:
    """GROUP_MEMBERS_MAY_RENAME / _ADD let members do it; with
    GROUP_ADMINS_MAY_DELETE_MESSAGES off, admins delete only their own messages."""
    node = await start_node(
        make_settings(
            db_url,
            group_members_may_rename=True,
            group_members_may_add=True,
            group_admins_may_delete_messages=False,
        )
    )
    client = Client(node)
    try:
        ann, bob, cal = await client.user(), await client.user(), await client.user()
        conv = (await client.conversation(ann, bob, title="Open"))["id"]
        assert (await rename(client, bob, conv, {"title": "Renamed by Bob"})).status_code == 200
        assert (await add(client, bob, conv, [cal])).status_code == 200
        title, roles = await state(client, ann, conv)
        assert (title, roles) == (
            "Renamed by Bob",
            {ann.id: "owner", bob.id: "member", cal.id: "member"},
        )
        # The owner may not delete Bob's message here; Bob may delete his own.
        message = await sent(client, bob, conv, "mine")
        url = f"{C}/{conv}/messages/{message['id']}"
        error(await client.http.delete(url, headers=ann.headers), 403, "not_allowed")
        assert (await client.http.delete(url, headers=bob.headers)).status_code == 200
    finally:
        await client.close()
        await node.stop()


async def test_by_default_members_may_not_rename_or_add_and_admins_delete(db_url: str) -> None:
    node = await start_node(make_settings(db_url))
    client = Client(node)
    try:
        ann, bob, cal = await client.user(), await client.user(), await client.user()
        conv = (await client.conversation(ann, bob, title="Closed"))["id"]
        error(await rename(client, bob, conv, {"title": "No"}), 403, "not_allowed")
        error(await add(client, bob, conv, [cal]), 403, "not_allowed")
        message = await sent(client, bob, conv, "his")
        url = f"{C}/{conv}/messages/{message['id']}"
        assert (await client.http.delete(url, headers=ann.headers)).status_code == 200
        assert (await state(client, ann, conv)) == ("Closed", {ann.id: "owner", bob.id: "member"})
    finally:
        await client.close()
        await node.stop()


async def test_a_removed_member_is_refused_by_the_database_whatever_the_cache_says(
    client: Client, node: Node, monkeypatch: Any
) -> None:
    """A node that missed the invalidation (Redis down) still has bob as a member: the
    database refuses him his history, the conversation and any change anyway, and the
    cache's entries do not outlive their time."""
    ann, bob, cat = await client.user(), await client.user(), await client.user()
    conv = (await client.conversation(ann, bob, cat, title="Stale"))["id"]
    his = await sent(client, bob, conv, "bob's, before he goes")
    assert len(await client.messages(bob, conv)) == 1  # the node caches the participants
    cache = node.services.participants
    monkeypatch.setattr(cache, "invalidate", lambda conversation_id: None)
    assert (await remove(client, ann, conv, bob.id)).status_code == 200
    assert bob.id in await cache.get(conv)  # stale, as on a node that was not told

    messages = f"{C}/{conv}/messages"
    error(await client.http.get(messages, headers=bob.headers), 403, "not_a_participant")
    r = await client.http.get(messages, params={"changed_after": 0}, headers=bob.headers)
    error(r, 403, "not_a_participant")
    error(await get(client, bob, conv), 403, "not_a_participant")
    url = f"{messages}/{his['id']}"
    r = await client.http.patch(url, json={"content": "sneaky"}, headers=bob.headers)
    error(r, 403, "not_a_participant")
    r = await client.http.put(url + "/reactions/👍", headers=bob.headers)
    error(r, 403, "not_a_participant")
    error(await client.http.delete(url, headers=bob.headers), 403, "not_a_participant")
    [kept] = await client.messages(ann, conv)
    assert (kept["content"], kept["reactions"], kept["deleted_at"]) == (his["content"], {}, None)

    # A missed invalidation lasts no longer than an entry's time.
    monkeypatch.undo()
    short = ParticipantCache(node.services.engine, ttl=0.2)
    assert await short.get(conv) == {ann.id, cat.id}
    async with node.services.engine.begin() as conn:
        await conn.execute(
            insert(Participant).values(
                conversation_id=conv, user_id=bob.id, joined_at=utcnow(), joined_seq=1
            )
        )
    assert await short.get(conv) == {ann.id, cat.id}  # not told: still what it read
    await eventually(lambda: _has(short, conv, bob.id), what="the stale entry to end", within=5)


async def _has(cache: ParticipantCache, conv: str, user_id: int) -> bool:
    return user_id in (await cache.get(conv) or ())


async def test_adding_checks_the_users_who_would_join(client: Client) -> None:
    """The block and existence checks look at who would join, read under the lock: a
    member already in whom the adder blocked refuses nothing."""
    ann, bob, gus, hal = [await client.user() for _ in range(4)]
    conv = (await client.conversation(ann, bob, title="Checked"))["id"]
    assert (await client.http.put(f"/api/v1/me/blocks/{bob.id}", headers=ann.headers)).is_success
    r = await add(client, ann, conv, [bob, gus])
    assert r.status_code == 200, r.text
    assert set(roles_of(r.json())) == {ann.id, bob.id, gus.id}
    assert (await client.http.put(f"/api/v1/me/blocks/{ann.id}", headers=hal.headers)).is_success
    error(await add(client, ann, conv, [gus, hal]), 403, "blocked")
    error(await add(client, ann, conv, [bob, 10**9]), 422, "unknown_user")
    assert set((await state(client, ann, conv))[1]) == {ann.id, bob.id, gus.id}
