"""Message search, on SQLite (FTS5) and PostgreSQL (tsvector): ranked, highlighted,
paged, and only ever over the caller's own conversations."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, insert, text, update

from app.config import ConfigError
from app.db import make_engine
from app.messenger.models import Message
from app.messenger.search import check_search_language, reindex, search_messages
from app.migrations import upgrade
from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import Client, User, make_settings, start_node

SEARCH = "/api/v1/messenger/search"


async def search(client: Client, user: User, q: str, **params: Any) -> dict:
    r = await client.http.get(SEARCH, params={"q": q, **params}, headers=user.headers)
    assert r.status_code == 200, r.text
    return r.json()


async def contents(client: Client, user: User, q: str, **params: Any) -> list[str]:
    return [m["content"] for m in (await search(client, user, q, **params))["messages"]]


async def sent(client: Client, user: User, conversation_id: str, *texts: str) -> list[dict]:
    messages = []
    for content in texts:
        r = await client.send(user, conversation_id, content)
        assert r.status_code == 201, r.text
        messages.append(r.json())
    return messages


def highlighted(message: dict) -> list[str]:
    """The matched words of a result's snippet (its odd places)."""
    return message["snippet"][1::2]


async def test_more_terms_rank_first_with_a_highlighted_snippet(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    await sent(
        client,
        a,
        conv["id"],
        "the budget is on the shared drive",
        "quarterly budget review on Friday",
        "the review went fine",
        "nothing to see here",
    )
    answer = await search(client, b, "quarterly budget review")
    found = [m["content"] for m in answer["messages"]]
    assert found[0] == "quarterly budget review on Friday"
    assert set(found) == {
        "quarterly budget review on Friday",
        "the budget is on the shared drive",
        "the review went fine",
    }
    assert answer["next_cursor"] is None
    best = answer["messages"][0]
    # The message as history gives it, plus its snippet.
    history = await client.messages(b, conv["id"])
    assert {k: v for k, v in best.items() if k != "snippet"} == next(
        m for m in history if m["id"] == best["id"]
    )
    assert "".join(best["snippet"]) == best["content"]
    assert highlighted(best) == ["quarterly", "budget", "review"]
    assert highlighted(answer["messages"][-1]) in (["budget"], ["review"])


async def test_stemming_finds_other_forms_of_a_word(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    await sent(client, a, conv["id"], "I run every morning", "she runs a shop", "a walk")
    assert sorted(await contents(client, b, "running")) == [
        "I run every morning",
        "she runs a shop",
    ]
    [message] = (await search(client, b, "walking"))["messages"]
    assert highlighted(message) == ["walk"]


async def test_only_the_callers_conversations(client: Client) -> None:
    a, b, c, d = [await client.user() for _ in range(4)]
    mine = await client.conversation(a, b)
    theirs = await client.conversation(c, d)
    group = await client.conversation(c, d, b, title="without a")
    await sent(client, b, mine["id"], "lunch plans at noon")
    # Far better matches, where a is not a participant.
    await sent(client, c, theirs["id"], "secret lunch plans lunch plans lunch plans")
    await sent(client, c, group["id"], "group lunch plans lunch plans")
    assert await contents(client, a, "lunch plans") == ["lunch plans at noon"]
    assert len(await contents(client, b, "lunch plans")) == 2
    assert len(await contents(client, d, "lunch plans")) == 2
    # Even with a cursor made up to start anywhere.
    cursor = base64.urlsafe_b64encode(b'[1e9, "2999-01-01T00:00:00+00:00", "zzz"]').decode()
    assert await contents(client, a, "secret", cursor=cursor) == []


async def test_one_conversation(client: Client) -> None:
    a, b, c = await client.user(), await client.user(), await client.user()
    first = await client.conversation(a, b)
    second = await client.conversation(a, c)
    foreign = await client.conversation(b, c)
    await sent(client, a, first["id"], "release notes draft")
    await sent(client, a, second["id"], "release party")
    assert await contents(client, a, "release", conversation_id=first["id"]) == [
        "release notes draft"
    ]
    assert len(await contents(client, a, "release")) == 2
    r = await client.http.get(
        SEARCH, params={"q": "release", "conversation_id": foreign["id"]}, headers=a.headers
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_a_participant"
    for unknown in (str(uuid.uuid4()), "x" * 5000):
        r = await client.http.get(
            SEARCH, params={"q": "release", "conversation_id": unknown}, headers=a.headers
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "conversation_not_found"


async def test_pages_have_no_duplicates_or_gaps(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    # Many equal ranks (ties go by time, then id), and a few better ones.
    texts = [f"harbour {i}" for i in range(17)] + [f"harbour harbour {i}" for i in range(6)]
    await asyncio.gather(*(client.send(a, conv["id"], t) for t in texts))
    everything = await search(client, b, "harbour", limit=100)
    assert sorted(m["content"] for m in everything["messages"]) == sorted(texts)
    assert everything["next_cursor"] is None

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        page = await search(client, b, "harbour", **params)
        seen += [m["id"] for m in page["messages"]]
        pages += 1
        if pages == 2:
            # Matches arriving meanwhile rank before this point or after it: each is
            # served once at most, and nothing is skipped for them.
            late = await sent(
                client, a, conv["id"], "harbour harbour harbour harbour", "harbour at last"
            )
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["messages"]) == 5
    assert len(seen) == len(set(seen))
    late_ids = {m["id"] for m in late}
    assert [i for i in seen if i not in late_ids] == [m["id"] for m in everything["messages"]]


async def test_an_update_or_delete_of_content_is_reflected(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    [message, other] = await sent(client, a, conv["id"], "see you at the lighthouse", "lantern")
    assert await contents(client, b, "lighthouse") == ["see you at the lighthouse"]
    engine = client.node.services.engine
    async with engine.begin() as conn:
        await conn.execute(
            update(Message)
            .where(Message.id == message["id"])
            .values(content="see you at the windmill")
        )
    assert await contents(client, b, "lighthouse") == []
    [found] = (await search(client, b, "windmill"))["messages"]
    assert found["id"] == message["id"] and highlighted(found) == ["windmill"]
    async with engine.begin() as conn:
        await conn.execute(delete(Message).where(Message.id == other["id"]))
    assert await contents(client, b, "lantern") == []


NASTY = [
    '"',
    '""',
    "'",
    "''",
    "*",
    "**",
    "AND OR NOT",
    "NOT",
    "NEAR(",
    "NEAR(a b, 2)",
    "col:",
    "content:lunch",
    "^",
    "-",
    "+",
    "a:*",
    "!",
    "&|",
    "(",
    ")",
    "{a b}",
    "\\",
    "\\'",
    "a\\",
    "'a' & 'b'",
    "<->",
    ":*",
    "日本語",
    "🙂🙂",
    "مرحبا",
    "e\u0301",
    "\u0001\u0002",
    "\ue000 \ue001",
    "x" * 200,
    "lunch " * 33,
]


async def test_no_input_makes_an_error(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    await sent(
        client,
        a,
        conv["id"],
        'a "quoted" NEAR( col: * it\'s a\\b AND OR NOT 日本語 🙂🙂 lunch',
        "marked \ue000 lunch \ue001 text",
    )
    for q in NASTY:
        r = await client.http.get(SEARCH, params={"q": q}, headers=b.headers)
        assert r.status_code == 200, (q, r.text)
        for message in r.json()["messages"]:
            assert all(isinstance(part, str) for part in message["snippet"])
    # Marker characters in a message never pass for a highlight.
    found = await search(client, b, "marked")
    [message] = found["messages"]
    assert message["snippet"] == ["marked  lunch  text"]

    too_long = ["x" * 201, "lunch " * 2000, "y" * 10_000]
    empty = ["", " ", "\t\n"]
    for q in too_long + empty:
        r = await client.http.get(SEARCH, params={"q": q}, headers=b.headers)
        assert r.status_code == 422, (q[:20], r.text)
        assert r.json()["error"]["code"] == "invalid_field"
    r = await client.http.get(SEARCH, headers=b.headers)
    assert r.status_code == 422
    r = await client.http.get(SEARCH + "?q=a%00b", headers=b.headers)
    assert r.status_code == 422


async def test_limits_and_cursors_are_checked(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    await sent(client, a, conv["id"], *(f"pelican {i}" for i in range(3)))
    assert len((await search(client, b, "pelican", limit=100))["messages"]) == 3
    assert len((await search(client, b, "pelican", limit=1))["messages"]) == 1
    assert len((await search(client, b, "pelican"))["messages"]) == 3
    for limit in ("0", "101", "-1", "abc", "1.5", "99999999999999999999"):
        r = await client.http.get(
            SEARCH, params={"q": "pelican", "limit": limit}, headers=b.headers
        )
        assert r.status_code == 422, (limit, r.text)
    bad_cursors = [
        "!",
        "e30",  # {}
        base64.urlsafe_b64encode(b"[1, 2, 3]").decode(),
        base64.urlsafe_b64encode(b'["x", "2020-01-01T00:00:00+00:00", "a"]').decode(),
        base64.urlsafe_b64encode(b'[1, "2020-01-01T00:00:00", "a"]').decode(),
        base64.urlsafe_b64encode(b'[1, "2020-01-01T00:00:00+00:00", ""]').decode(),
        base64.urlsafe_b64encode(b'[true, "2020-01-01T00:00:00+00:00", "a"]').decode(),
        base64.urlsafe_b64encode(b'[1e999, "2020-01-01T00:00:00+00:00", "a"]').decode(),
        base64.urlsafe_b64encode(b'[1, "0001-01-01T00:00:00+01:00", "a"]').decode(),
        "A" * 400,
    ]
    for cursor in bad_cursors:
        r = await client.http.get(
            SEARCH, params={"q": "pelican", "cursor": cursor}, headers=b.headers
        )
        assert r.status_code == 422, (cursor, r.text)
        assert r.json()["error"]["code"] == "invalid_field"


async def test_needs_a_token(client: Client) -> None:
    r = await client.http.get(SEARCH, params={"q": "anything"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await client.http.get(
        SEARCH, params={"q": "anything"}, headers={"Authorization": "Bearer nope"}
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"


async def test_searches_are_rate_limited(db_url: str) -> None:
    node = await start_node(make_settings(db_url, search_rate_per_minute=1, search_burst=2))
    client = Client(node)
    try:
        a = await client.user()
        codes = [
            (await client.http.get(SEARCH, params={"q": "x"}, headers=a.headers)).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
    finally:
        await client.close()
        await node.stop()


async def test_a_search_past_its_time_answers_503(db_url: str, client: Client) -> None:
    """A search that runs longer than SEARCH_TIMEOUT_SECONDS is cancelled (PostgreSQL's
    statement_timeout, SQLite's progress handler) and answered 503 `search_timeout`,
    never a 500; the connection it used serves the next search as usual."""
    node = await start_node(make_settings(db_url, search_timeout_seconds=0.001))
    hurried = Client(node)
    try:
        a, b = await hurried.user(), await hurried.user()
        cid = (await hurried.conversation(a, b))["id"]
        # A few thousand matches to rank: far more than a millisecond's work.
        now = datetime.now(UTC)
        rows = [
            {
                "id": str(uuid.uuid4()),
                "conversation_id": cid,
                "seq": seq,
                "sender_id": a.id,
                "content": f"the quarterly budget review number {seq} is on the shared drive",
                "created_at": now,
            }
            for seq in range(1, 4001)
        ]
        async with node.services.engine.begin() as conn:
            await conn.execute(insert(Message), rows)
            await conn.execute(
                text("UPDATE conversations SET last_seq = 4000 WHERE id = :c"), {"c": cid}
            )
        for _ in range(3):
            r = await hurried.http.get(
                SEARCH, params={"q": "budget review drive"}, headers=b.headers
            )
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "search_timeout"
            assert int(r.headers["Retry-After"]) > 0
        # The same search on a node with the default time: found.
        assert await contents(client, b, "number 17", limit=1) == [rows[16]["content"]]
    finally:
        await hurried.close()
        await node.stop()


async def test_the_language_must_be_the_indexed_one(postgresql_url: str) -> None:
    engine = make_engine(postgresql_url)
    try:
        await check_search_language(engine, make_settings(postgresql_url))
        with pytest.raises(ConfigError, match="not a text search configuration"):
            await check_search_language(
                engine, make_settings(postgresql_url, search_language="klingon")
            )
        with pytest.raises(ConfigError, match="indexed for 'english'"):
            await check_search_language(
                engine, make_settings(postgresql_url, search_language="french")
            )
    finally:
        await engine.dispose()
    with pytest.raises(ValueError, match="pattern"):
        make_settings(postgresql_url, search_language="english'::regconfig); --")


async def test_reindex_for_another_language() -> None:
    """`python -m app.messenger.search reindex` builds the index again for
    SEARCH_LANGUAGE: French stemming then, and the node's check agrees."""
    name, url = await create_pg_database()
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
            await conn.execute(
                text(
                    "INSERT INTO users (id, username, display_name, password_hash, created_at) "
                    "VALUES (1, 'ann', 'Ann', 'x', now())"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO conversations (id, type, created_by, created_at, last_seq) "
                    "VALUES ('c', 'group', 1, now(), 1)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO participants (conversation_id, user_id, joined_at) "
                    "VALUES ('c', 1, now())"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO messages (id, conversation_id, seq, sender_id, content, "
                    "created_at) VALUES ('m', 'c', 1, 1, 'nous mangeons des pommes', now())"
                )
            )
        french = make_settings(url, search_language="french")
        with pytest.raises(ConfigError):
            await check_search_language(engine, french)
        await reindex(engine, "french")
        await check_search_language(engine, french)
        page, _ = await search_messages(engine, 1, "pomme", language="french")
        assert [m["id"] for m in page] == ["m"]
        assert page[0]["snippet"][1::2] == ["pommes"]
        # "des" is one of French's stop words: no longer indexed.
        assert (await search_messages(engine, 1, "des", language="french"))[0] == []
    finally:
        await engine.dispose()
        await drop_pg_database(name)
