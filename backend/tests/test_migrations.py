"""The schema changes only through Alembic: migrations go up and down on both
databases, and the models agree with them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import column, func, insert, inspect, select, table, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import Base, UTCDateTime
from app.messenger.models import PushJob
from app.messenger.search import is_search_object, search_messages
from app.migrations import SchemaOutOfDate, check_schema_current, downgrade, upgrade
from tests.conftest import create_pg_database, drop_pg_database

TABLES = {
    "users",
    "sessions",
    "blocks",
    "conversations",
    "participants",
    "messages",
    "push_jobs",
    "device_tokens",
    "push_attempts",
    "push_decisions",
    "notification_settings",
    "message_reactions",
    "uploads",
    "notifications",
    "push_stats_daily",
    "push_stats_days",
    "scheduled_messages",
    "reminders",
    "announcements",
    "bot_tokens",
    "incoming_webhooks",
}


def columns(*names: str) -> list:
    return [column(n) for n in names]


# push_jobs as 0001 made it: a row per message.
PushJob0001 = table(
    "push_jobs",
    column("message_id"),
    column("created_at", UTCDateTime()),
    column("claimed_by"),
    column("lease_until", UTCDateTime()),
)


def _tables(conn) -> set[str]:  # type: ignore[no-untyped-def]
    names = set(inspect(conn).get_table_names()) - {"alembic_version"}
    return {name for name in names if not is_search_object(name, "table")}


def _not_search(_object, name, type_, _reflected, _compare_to) -> bool:  # type: ignore[no-untyped-def]
    return not is_search_object(name, type_)


def _diff(conn) -> list:  # type: ignore[no-untyped-def]
    opts = {"compare_type": True, "include_object": _not_search}
    return compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_url(request: pytest.FixtureRequest, tmp_path) -> object:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    name, url = await create_pg_database()
    yield url
    await drop_pg_database(name)


async def test_upgrade_downgrade_and_models_agree(empty_url: str) -> None:
    engine = create_async_engine(empty_url)
    try:
        with pytest.raises(SchemaOutOfDate):
            await check_schema_current(engine)
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == TABLES
            assert await conn.run_sync(_diff) == []
        await check_schema_current(engine)
        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == TABLES
    finally:
        await engine.dispose()


async def test_pending_push_work_survives_the_change_to_jobs_per_commit(empty_url: str) -> None:
    """0002 turns each message's job into a job per commit, and back, keeping leases."""
    engine = create_async_engine(empty_url)
    lease = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    old_job = {"message_id": "m-1", "created_at": lease, "claimed_by": "n1", "lease_until": lease}
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade, "0001")
            now = {"created_at": lease}
            await conn.execute(
                insert(
                    table(
                        "users",
                        *columns("id", "username", "display_name", "password_hash", "created_at"),
                    )
                ),
                {"id": 1, "username": "ann", "display_name": "Ann", "password_hash": "x", **now},
            )
            await conn.execute(
                insert(
                    table(
                        "conversations",
                        *columns("id", "type", "created_by", "created_at", "last_seq"),
                    )
                ),
                {"id": "c-1", "type": "direct", "created_by": 1, "last_seq": 1, **now},
            )
            await conn.execute(
                insert(
                    table(
                        "messages",
                        *columns(
                            "id", "conversation_id", "seq", "sender_id", "content", "created_at"
                        ),
                    )
                ),
                {
                    "id": "m-1",
                    "conversation_id": "c-1",
                    "seq": 1,
                    "sender_id": 1,
                    "content": "hi",
                    **now,
                },
            )
            await conn.execute(insert(PushJob0001), old_job)
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
        async with engine.connect() as conn:
            [job] = (await conn.execute(select(PushJob))).all()
        assert job.message_ids == ["m-1"]
        assert (job.claimed_by, job.lease_until, job.created_at) == ("n1", lease, lease)
        async with engine.begin() as conn:
            await conn.run_sync(downgrade, "0001")
        async with engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(select(PushJob0001))]
        assert rows == [old_job]
    finally:
        await engine.dispose()


async def test_search_index_covers_messages_from_before_and_after_0007(empty_url: str) -> None:
    """0007 indexes the messages already there, follows inserts and edits, and leaves
    nothing of itself after a downgrade (the messages stay)."""
    engine = create_async_engine(empty_url)
    now = {"created_at": datetime(2030, 1, 2, tzinfo=UTC)}
    messages = table(
        "messages", *columns("id", "conversation_id", "seq", "sender_id", "content", "created_at")
    )

    def message(seq: int, content: str) -> dict:
        return {"id": f"m-{seq}", "conversation_id": "c-1", "seq": seq, "sender_id": 1,
                "content": content, **now}  # fmt: skip

    async def found(q: str) -> list[str]:
        page, _ = await search_messages(engine, 1, q, language="english")
        return sorted(m["id"] for m in page)

    def search_objects(conn) -> set[str]:  # type: ignore[no-untyped-def]
        found = inspect(conn)
        names = {t for t in found.get_table_names() if is_search_object(t, "table")}
        names |= {c["name"] for c in found.get_columns("messages")} & {"search_vector"}
        return names | {
            i["name"] for i in found.get_indexes("messages") if is_search_object(i["name"], "index")
        }

    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade, "0006")
            await conn.execute(
                insert(
                    table(
                        "users",
                        *columns("id", "username", "display_name", "password_hash", "created_at"),
                    )
                ),
                {"id": 1, "username": "ann", "display_name": "Ann", "password_hash": "x", **now},
            )
            await conn.execute(
                insert(table("conversations", *columns("id", "type", "created_by", "created_at"))),
                {"id": "c-1", "type": "group", "created_by": 1, **now},
            )
            await conn.execute(
                insert(table("participants", *columns("conversation_id", "user_id", "joined_at"))),
                {"conversation_id": "c-1", "user_id": 1, "joined_at": now["created_at"]},
            )
            await conn.execute(
                insert(messages), [message(1, "old harbour news"), message(2, "old lighthouse")]
            )
        for _ in range(2):  # up, down, and up again
            async with engine.begin() as conn:
                await conn.run_sync(upgrade)
            assert await found("harbour") == ["m-1"]
            assert await found("lighthouses") == ["m-2"]
            async with engine.begin() as conn:
                await conn.execute(insert(messages), message(3, "new harbour"))
                await conn.execute(
                    messages.update().where(messages.c.id == "m-2").values(content="old windmill")
                )
            assert await found("harbour") == ["m-1", "m-3"]
            assert await found("lighthouse") == [] and await found("windmill") == ["m-2"]
            async with engine.connect() as conn:
                assert await conn.run_sync(search_objects)
            async with engine.begin() as conn:
                await conn.run_sync(downgrade, "0006")
                assert await conn.run_sync(search_objects) == set()
                rows = (await conn.execute(select(messages.c.id, messages.c.content))).all()
                assert sorted(rows) == [
                    ("m-1", "old harbour news"),
                    ("m-2", "old windmill"),
                    ("m-3", "new harbour"),
                ]
                await conn.execute(messages.delete().where(messages.c.id == "m-3"))
                await conn.execute(
                    messages.update().where(messages.c.id == "m-2").values(content="old lighthouse")
                )
    finally:
        await engine.dispose()


async def test_message_changes_go_up_and_down_with_messages_in_place(empty_url: str) -> None:
    """0009 adds edits, deletions, replies, reactions and the change counter to the
    messages already there (unchanged, searchable), and takes them away again keeping
    the messages and their search index."""
    engine = create_async_engine(empty_url)
    now = {"created_at": datetime(2030, 1, 2, tzinfo=UTC)}
    messages = table(
        "messages", *columns("id", "conversation_id", "seq", "sender_id", "content", "created_at")
    )
    changed = table(
        "messages",
        *columns("id", "content", "reply_to", "change_seq"),
        column("edited_at", UTCDateTime()),
        column("deleted_at", UTCDateTime()),
    )
    reactions = table("message_reactions", *columns("message_id", "emoji", "user_id", "created_at"))

    async def found(q: str) -> list[str]:
        page, _ = await search_messages(engine, 1, q, language="english")
        return sorted(m["id"] for m in page)

    async def indexed(word: str) -> list[str]:
        """The messages the search index finds for a word, read without the models."""
        if engine.dialect.name == "postgresql":
            sql = "SELECT id FROM messages WHERE search_vector @@ to_tsquery('english', :w)"
        else:
            sql = (
                "SELECT m.id FROM messages_fts JOIN messages AS m ON m.rowid = messages_fts.rowid"
                " WHERE messages_fts MATCH :w"
            )
        async with engine.connect() as conn:
            return sorted((await conn.execute(text(sql), {"w": word})).scalars())

    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade, "0008")
            await conn.execute(
                insert(
                    table(
                        "users",
                        *columns("id", "username", "display_name", "password_hash", "created_at"),
                    )
                ),
                {"id": 1, "username": "ann", "display_name": "Ann", "password_hash": "x", **now},
            )
            await conn.execute(
                insert(table("conversations", *columns("id", "type", "created_by", "created_at"))),
                {"id": "c-1", "type": "group", "created_by": 1, **now},
            )
            await conn.execute(
                insert(table("participants", *columns("conversation_id", "user_id", "joined_at"))),
                {"conversation_id": "c-1", "user_id": 1, "joined_at": now["created_at"]},
            )
            await conn.execute(
                insert(messages),
                [
                    {
                        "id": f"m-{seq}",
                        "conversation_id": "c-1",
                        "seq": seq,
                        "sender_id": 1,
                        "content": text,
                        **now,
                    }
                    for seq, text in ((1, "harbour at noon"), (2, "lighthouse keeper"))
                ],
            )
        for _ in range(2):  # up, down, and up again
            async with engine.begin() as conn:
                await conn.run_sync(upgrade)
                rows = (await conn.execute(select(changed).order_by(changed.c.id))).all()
                assert [tuple(r) for r in rows] == [
                    ("m-1", "harbour at noon", None, None, None, None),
                    ("m-2", "lighthouse keeper", None, None, None, None),
                ]
                counter = table("conversations", column("id"), column("change_seq"))
                assert (await conn.execute(select(counter.c.change_seq))).scalar_one() == 0
                # A reply, an edit, a deletion and a reaction, as the app writes them.
                await conn.execute(
                    counter.update().where(counter.c.id == "c-1").values(change_seq=3)
                )
                await conn.execute(
                    insert(
                        table(
                            "messages",
                            *columns(
                                "id", "conversation_id", "seq", "sender_id", "content", "reply_to"
                            ),
                            column("created_at", UTCDateTime()),
                        )
                    ),
                    {
                        "id": "m-3",
                        "conversation_id": "c-1",
                        "seq": 3,
                        "sender_id": 1,
                        "content": "windmill",
                        "reply_to": "m-1",
                        **now,
                    },
                )
                await conn.execute(
                    changed.update()
                    .where(changed.c.id == "m-1")
                    .values(content="harbour at one", edited_at=now["created_at"], change_seq=1)
                )
                await conn.execute(
                    changed.update()
                    .where(changed.c.id == "m-2")
                    .values(content="", deleted_at=now["created_at"], change_seq=2)
                )
                await conn.execute(
                    insert(reactions),
                    {"message_id": "m-3", "emoji": "👍", "user_id": 1, **now},
                )
                await conn.execute(
                    changed.update().where(changed.c.id == "m-3").values(change_seq=3)
                )
            assert await found("harbour") == ["m-1"]
            assert await found("lighthouse") == []
            assert await found("windmill") == ["m-3"]
            async with engine.connect() as conn:
                assert await conn.run_sync(_tables) == TABLES
            async with engine.begin() as conn:
                await conn.run_sync(downgrade, "0008")
                assert "message_reactions" not in await conn.run_sync(_tables)
                rows = (
                    await conn.execute(select(messages.c.id, messages.c.content).order_by("id"))
                ).all()
                assert [tuple(r) for r in rows] == [
                    ("m-1", "harbour at one"),
                    ("m-2", ""),
                    ("m-3", "windmill"),
                ]
            # The search index still follows the messages (rowids kept on SQLite).
            assert await indexed("windmill") == ["m-3"]
            async with engine.begin() as conn:
                await conn.execute(messages.delete().where(messages.c.id == "m-3"))
                await conn.execute(
                    messages.update()
                    .where(messages.c.id.in_(["m-1", "m-2"]))
                    .values(content=func.replace(messages.c.content, "one", "noon"))
                )
                await conn.execute(
                    messages.update()
                    .where(messages.c.id == "m-2")
                    .values(content="lighthouse keeper")
                )
            assert await indexed("lighthouse") == ["m-2"]
            assert await indexed("noon") == ["m-1"]
    finally:
        await engine.dispose()


async def test_devices_from_before_0008_keep_working_without_a_session(empty_url: str) -> None:
    """0008 gives devices a session: those already there get none and stay on; a
    downgrade keeps every device, without the column."""
    engine = create_async_engine(empty_url)
    now = datetime(2030, 1, 2, tzinfo=UTC)
    devices = table(
        "device_tokens",
        *columns("id", "user_id", "token", "token_key", "platform", "provider", "is_active"),
        column("created_at", UTCDateTime()),
        column("last_used_at", UTCDateTime()),
    )
    device = {"id": "d-1", "user_id": 1, "token": "t" * 64, "token_key": "t" * 64,
              "platform": "ios", "provider": "apns", "is_active": True,
              "created_at": now, "last_used_at": now}  # fmt: skip

    def device_columns(conn) -> set[str]:  # type: ignore[no-untyped-def]
        return {c["name"] for c in inspect(conn).get_columns("device_tokens")}

    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade, "0007")
            await conn.execute(
                insert(
                    table(
                        "users",
                        *columns("id", "username", "display_name", "password_hash", "created_at"),
                    )
                ),
                {"id": 1, "username": "ann", "display_name": "Ann", "password_hash": "x",
                 "created_at": now},
            )  # fmt: skip
            await conn.execute(insert(devices), device)
        for _ in range(2):  # up, down, and up again
            async with engine.begin() as conn:
                await conn.run_sync(upgrade, "0008")
            bound = table("device_tokens", *columns("id", "is_active", "session_id"))
            async with engine.begin() as conn:
                rows = (await conn.execute(select(bound))).all()
                assert [tuple(r) for r in rows] == [("d-1", True, None)]
                await conn.execute(bound.update().values(session_id="s-1"))
            async with engine.begin() as conn:
                await conn.run_sync(downgrade, "0007")
            async with engine.connect() as conn:
                assert "session_id" not in await conn.run_sync(device_columns)
                rows = [dict(r._mapping) for r in await conn.execute(select(devices))]
            assert rows == [device]
    finally:
        await engine.dispose()


async def test_member_roles_go_up_and_down_with_participants_in_place(empty_url: str) -> None:
    """0010 gives participants a role (a group's creator owns it; everyone else, and both
    sides of a direct conversation, are members) and the seq they joined at (0 for those
    already there: they keep seeing everything); a downgrade keeps every participant."""
    engine = create_async_engine(empty_url)
    now = datetime(2030, 1, 2, tzinfo=UTC)
    users = table("users", *columns("id", "username", "display_name", "password_hash"),
                  column("created_at", UTCDateTime()))  # fmt: skip
    conversations = table("conversations", *columns("id", "type", "created_by"),
                          column("created_at", UTCDateTime()))  # fmt: skip
    participants = table("participants", *columns("conversation_id", "user_id", "last_read_seq"),
                         column("joined_at", UTCDateTime()))  # fmt: skip
    roles = table("participants", *columns("conversation_id", "user_id", "role", "joined_seq"))
    before = [("c-direct", 1, 3), ("c-direct", 2, 0), ("c-group", 1, 0), ("c-group", 2, 7),
              ("c-group", 3, 0)]  # fmt: skip

    def participant_columns(conn) -> set[str]:  # type: ignore[no-untyped-def]
        return {c["name"] for c in inspect(conn).get_columns("participants")}

    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade, "0009")
            await conn.execute(
                insert(users),
                [{"id": i, "username": f"u{i}", "display_name": f"U{i}", "password_hash": "x",
                  "created_at": now} for i in (1, 2, 3)],
            )  # fmt: skip
            await conn.execute(
                insert(conversations),
                [{"id": "c-direct", "type": "direct", "created_by": 1, "created_at": now},
                 {"id": "c-group", "type": "group", "created_by": 2, "created_at": now}],
            )  # fmt: skip
            await conn.execute(
                insert(participants),
                [{"conversation_id": c, "user_id": u, "last_read_seq": s, "joined_at": now}
                 for c, u, s in before],
            )  # fmt: skip
        for _ in range(2):  # up, down, and up again
            async with engine.begin() as conn:
                await conn.run_sync(upgrade, "0010")
            async with engine.begin() as conn:
                rows = await conn.execute(select(roles).order_by("conversation_id", "user_id"))
                assert [tuple(r) for r in rows] == [
                    ("c-direct", 1, "member", 0),
                    ("c-direct", 2, "member", 0),
                    ("c-group", 1, "member", 0),
                    ("c-group", 2, "owner", 0),
                    ("c-group", 3, "member", 0),
                ]
                await conn.execute(roles.update().values(role="admin", joined_seq=4))
            async with engine.begin() as conn:
                await conn.run_sync(downgrade, "0009")
            async with engine.connect() as conn:
                assert {"role", "joined_seq"}.isdisjoint(await conn.run_sync(participant_columns))
                rows = await conn.execute(
                    select(*columns("conversation_id", "user_id", "last_read_seq"))
                    .select_from(participants)
                    .order_by("conversation_id", "user_id")
                )
                assert [tuple(r) for r in rows] == before
    finally:
        await engine.dispose()
