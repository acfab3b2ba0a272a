"""Mentions: `@username` and `@all` parsed at send time, stored, and in every message a
client gets (REST answer, history, conversation list, message.ack, message.new), on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.messenger.mentions import MAX_NAMES, Mentions, mentioned_names
from app.messenger.models import Message
from tests.helpers import Client, Socket, User, make_settings, start_node

BASE = "/api/v1/messenger/conversations"


@pytest.mark.parametrize(
    ("content", "names"),
    [
        ("hi @ann", [("ann",)]),
        ("@ann, look", [("ann",)]),
        ("(@ann)", [("ann",)]),
        ("thanks @Ann.", [("ann.", "ann")]),
        ("@ann-- really", [("ann--", "ann")]),
        ("@ann's idea", [("ann",)]),
        ("@ann @ANN @Ann!", [("ann",)]),
        ("mail bob@ann.com or x.y@ann", []),
        ("a+@ann a-@ann a_@ann a.@ann", []),
        ("@@ann", []),
        ("@ nobody, @", []),
        ("@all: lunch", [("all",)]),
        ("@a.b_c-d and @x", [("a.b_c-d",), ("x",)]),
        ("«@ann» @jörg", [("ann",), ("j",)]),
    ],
)
def test_mentioned_names(content: str, names: list[tuple[str, ...]]) -> None:
    assert mentioned_names(content) == names


def test_mentioned_names_are_bounded() -> None:
    content = " ".join(f"@user{i}." for i in range(1000))
    names = mentioned_names(content)
    assert MAX_NAMES == 20
    assert names == [(f"user{i}.", f"user{i}") for i in range(20)]


@contextmanager
def name_lookups(engine: AsyncEngine) -> Iterator[list[Any]]:
    """The statements that look users up by name on this engine, as the driver gets them,
    with their parameters."""
    seen: list[Any] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM users" in statement and "users.username" in statement:
            seen.append(parameters)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def _users(client: Client, n: int) -> list[User]:
    tag = secrets.token_hex(3)
    return [await client.user(f"m{tag}_{i}") for i in range(n)]


async def _send(client: Client, user: User, conversation_id: str, content: str) -> dict:
    r = await client.send(user, conversation_id, content)
    assert r.status_code == 201, r.text
    return r.json()


async def test_usernames_of_participants_are_mentions(client: Client) -> None:
    a, b, c, outsider = await _users(client, 4)
    conv = await client.conversation(a, b, c, title="team")
    cid = conv["id"]

    message = await _send(
        client,
        a,
        cid,
        f"hi @{b.username.upper()}, and (@{c.username}) cc {b.username}@example.com "
        f"@{outsider.username} @nobody{secrets.token_hex(3)}",
    )
    assert message["mentions"] == sorted([b.id, c.id])
    # End of a sentence: the full stop is not part of the name.
    assert (await _send(client, b, cid, f"ask @{c.username}."))["mentions"] == [c.id]
    # Naming yourself is naming a participant.
    assert (await _send(client, c, cid, f"@{c.username} me"))["mentions"] == [c.id]
    plain = await _send(client, a, cid, "no one in particular")
    assert plain["mentions"] == []
    only_email = await _send(client, a, cid, f"write to {b.username}@{c.username}.org")
    assert only_email["mentions"] == []

    # History and the conversation list carry the same mentions.
    history = await client.messages(b, cid)
    assert [m["mentions"] for m in history] == [
        sorted([b.id, c.id]),
        [c.id],
        [c.id],
        [],
        [],
    ]
    r = await client.http.get(BASE, headers=b.headers)
    listed = next(x for x in r.json()["conversations"] if x["id"] == cid)
    assert listed["last_message"]["mentions"] == []

    # Nobody named: the column stays NULL (not JSON null, not an empty list).
    async with client.node.services.engine.connect() as conn:
        rows = await conn.execute(
            select(Message.mentions, Message.mentions.is_(None).label("is_null"))
            .where(Message.conversation_id == cid)
            .order_by(Message.seq)
        )
        stored = [(r.mentions, r.is_null) for r in rows]
    assert stored[0] == (sorted([b.id, c.id]), False)
    assert stored[3] == (None, True) and stored[4] == (None, True)


async def test_all_is_for_group_admins_only(client: Client) -> None:
    creator, b, c = await _users(client, 3)
    group = (await client.conversation(creator, b, c, title="all hands"))["id"]
    everyone = sorted([creator.id, b.id, c.id])

    assert (await _send(client, creator, group, "@all standup now"))["mentions"] == everyone
    assert (await _send(client, creator, group, "@ALL, again"))["mentions"] == everyone
    # Anyone else: sent, but @all names nobody; their other mentions still count.
    assert (await _send(client, b, group, "@all listen"))["mentions"] == []
    assert (await _send(client, b, group, f"@all @{c.username}"))["mentions"] == [c.id]

    direct = (await client.conversation(creator, b))["id"]
    assert (await _send(client, creator, direct, "@all hello"))["mentions"] == []
    assert (await _send(client, creator, direct, f"@{b.username} hello"))["mentions"] == [b.id]


async def test_many_mentions(client: Client) -> None:
    """The first MAX_NAMES names count, looked up in one query; the rest are plain text."""
    people = await _users(client, 25)
    owner, others = people[0], people[1:]
    cid = (await client.conversation(owner, *others, title="crowd"))["id"]
    content = " ".join(f"@{u.username}" for u in others)
    with name_lookups(client.node.services.engine) as lookups:
        message = await _send(client, owner, cid, content)
    assert message["mentions"] == sorted(u.id for u in others[:MAX_NAMES])
    assert len(lookups) == 1


async def test_a_refused_send_looks_up_no_name(db_url: str) -> None:
    """The flood check comes first: a send it refuses costs no mention query."""
    node = await start_node(make_settings(db_url, send_rate_per_second=0.001, send_burst=2))
    client = Client(node)
    try:
        a, b, c = await _users(client, 3)
        cid = (await client.conversation(a, b, c, title="flood"))["id"]
        with name_lookups(node.services.engine) as lookups:
            assert (await _send(client, a, cid, "no names"))["mentions"] == []
            assert lookups == []
            assert (await _send(client, a, cid, f"@{b.username} hi"))["mentions"] == [b.id]
            assert len(lookups) == 1
            # A name this node has never looked up, in a send past the burst.
            r = await client.send(a, cid, f"@{c.username} and @nobody{secrets.token_hex(3)}")
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert len(lookups) == 1
        # Another sender's mentions are still looked up.
        assert (await _send(client, b, cid, f"@{c.username}!"))["mentions"] == [c.id]
    finally:
        await client.close()
        await node.stop()


async def test_an_unknown_name_is_nobodys_for_a_few_seconds(client: Client) -> None:
    engine = client.node.services.engine
    now = [1000.0]
    mentions = Mentions(engine, unknown_seconds=5.0, max_unknown=2, clock=lambda: now[0])
    name = f"late{secrets.token_hex(4)}"
    a = await client.user()
    with name_lookups(engine) as lookups:
        assert await mentions.resolve(a.id, "c", f"@{name} hi", frozenset({a.id})) is None
        assert len(lookups) == 1
        # Known to be nobody's: no query.
        assert await mentions.resolve(a.id, "c", f"@{name} again", frozenset({a.id})) is None
        assert len(lookups) == 1
    late = await client.user(name)
    members = frozenset({a.id, late.id})
    with name_lookups(engine) as lookups:
        now[0] += 4.9
        assert await mentions.resolve(a.id, "c", f"@{name}", members) is None
        assert lookups == []
        # Once the few seconds are over the name is looked up again, and found.
        now[0] += 0.2
        assert await mentions.resolve(a.id, "c", f"@{name}", members) == [late.id]
        assert len(lookups) == 1
        # Found names stay known: no query.
        assert await mentions.resolve(a.id, "c", f"@{name}", members) == [late.id]
        assert len(lookups) == 1
        # At most max_unknown unknown names are remembered, the oldest forgotten first.
        ghosts = [f"ghost{secrets.token_hex(4)}" for _ in range(3)]
        for ghost in ghosts:
            await mentions.resolve(a.id, "c", f"@{ghost}", members)
        assert len(lookups) == 4
        await mentions.resolve(a.id, "c", f"@{ghosts[2]} @{ghosts[1]}", members)
        assert len(lookups) == 4
        await mentions.resolve(a.id, "c", f"@{ghosts[0]}", members)
        assert len(lookups) == 5


async def test_mentions_on_the_socket_and_on_retry(client: Client) -> None:
    a, b = await _users(client, 2)
    cid = (await client.conversation(a, b))["id"]
    a_sock, b_sock = await Socket.connect(client.node, a), await Socket.connect(client.node, b)
    try:
        await a_sock.send(
            {
                "type": "message.send",
                "conversation_id": cid,
                "content": f"@{b.username} ping",
                "client_msg_id": "ws-1",
            }
        )
        ack = await a_sock.expect("message.ack", client_msg_id="ws-1")
        assert ack["message"]["mentions"] == [b.id]
        new = await b_sock.expect("message.new")
        assert new["message"] == ack["message"]

        await a_sock.send(
            {"type": "message.send", "conversation_id": cid, "content": "x", "client_msg_id": "p"}
        )
        ack = await a_sock.expect("message.ack", client_msg_id="p")
        assert ack["message"]["mentions"] == []
        assert (await b_sock.expect("message.new"))["message"]["mentions"] == []

        # A retry answers the original, mentions and all, and nobody hears of it again.
        r = await client.send(a, cid, f"@{b.username} again", client_msg_id="rest-1")
        assert r.status_code == 201 and r.json()["mentions"] == [b.id]
        assert (await b_sock.expect("message.new"))["message"]["id"] == r.json()["id"]
        retry = await client.send(a, cid, f"@{b.username} again", client_msg_id="rest-1")
        assert retry.status_code == 200 and retry.json() == r.json()
        await a_sock.send(
            {
                "type": "message.send",
                "conversation_id": cid,
                "content": f"@{b.username} ping",
                "client_msg_id": "ws-1",
            }
        )
        again = await a_sock.expect("message.ack", client_msg_id="ws-1")
        assert again["message"]["mentions"] == [b.id] and again["message"]["seq"] == 1
        await b_sock.nothing("message.new")
    finally:
        await a_sock.close()
        await b_sock.close()


async def test_a_batch_of_named_plain_and_repeated_sends(client: Client) -> None:
    """One writer batch holding a repeat (so PostgreSQL too takes the careful way), a send
    with mentions and one without: each stored and answered as it should be."""
    a, b = await _users(client, 2)
    cid = (await client.conversation(a, b))["id"]
    first = await client.send(a, cid, f"@{b.username} one", client_msg_id="b-1")
    assert first.status_code == 201
    writer = client.node.services.writer
    members = frozenset({a.id, b.id})
    results = await asyncio.gather(
        writer.submit(cid, a.id, "repeat", "b-1", members),
        writer.submit(cid, a.id, "named", "b-2", members, mentions=[b.id]),
        writer.submit(cid, b.id, "plain", "b-3", members),
    )
    (repeat, created0), (named, created1), (plain, created2) = results
    assert not created0 and repeat["id"] == first.json()["id"] and repeat["mentions"] == [b.id]
    assert created1 and named["mentions"] == [b.id]
    assert created2 and plain["mentions"] == []
    history = await client.messages(a, cid)
    assert [(m["content"], m["mentions"]) for m in history] == [
        (f"@{b.username} one", [b.id]),
        ("named", [b.id]),
        ("plain", []),
    ]


async def test_bad_sends_with_mentions_are_still_refused(client: Client) -> None:
    a, b, outsider = await _users(client, 3)
    cid = (await client.conversation(a, b))["id"]
    r = await client.send(outsider, cid, f"@{a.username} let me in")
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_a_participant"
    r = await client.send(a, cid, "@" * 5000)
    assert r.status_code == 422 and r.json()["error"]["code"] == "message_too_long"
    # Many at-signs and lookalike names: sent, nobody named.
    r = await client.send(a, cid, "@@@ @. @- @_ @" + "x" * 100)
    assert r.status_code == 201 and r.json()["mentions"] == []
