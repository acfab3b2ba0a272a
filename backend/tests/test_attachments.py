"""Files sent with messages: sending them over WebSocket and REST, who may download
them, and the cleanup that removes those nobody can be shown any more, on both
databases and both stores (a local folder, and moto's S3 server)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

import tests.test_uploads as uploads_tests
from app.db import utcnow
from app.messenger.cleanup import run_cleanup
from app.messenger.models import Message, Upload
from app.messenger.upload_cleanup import LOCK_KEY as UPLOAD_LOCK_KEY
from app.messenger.upload_cleanup import remove_stale_uploads
from app.messenger.uploads import describe
from tests.helpers import Socket, User
from tests.test_uploads import World, moto, png, start_world, uploaded

__all__ = ["moto"]  # the S3 server fixture, shared with test_uploads

C = "/api/v1/messenger/conversations"
UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
async def world(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """A node on each database, keeping its files in a local folder."""
    w = await start_world(db_url, "local", tmp_path_factory.mktemp("attachments"), None)
    yield w
    await w.client.close()
    await w.node.stop()


async def send(w: World, user: User, conversation_id: str, content: str = "", **extra: Any) -> Any:
    return await w.client.http.post(
        f"{C}/{conversation_id}/messages",
        json={"content": content, **extra},
        headers=user.headers,
    )


async def sent(w: World, user: User, conversation_id: str, content: str = "", **extra: Any) -> dict:
    r = await send(w, user, conversation_id, content, **extra)
    assert r.status_code == 201, r.text
    message: dict = r.json()
    return message


def refused(r: Any, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body: dict = r.json()
    assert body["error"]["code"] == code, body
    return body


async def upload_row(w: World, upload_id: str) -> Any:
    async with w.node.services.engine.connect() as conn:
        return (await conn.execute(select(Upload).where(Upload.id == upload_id))).first()


async def test_sent_over_rest_and_websocket_every_answer_carries_them(world: World) -> None:
    w = world
    ann, bob = await w.client.user(), await w.client.user()
    conv = (await w.client.conversation(ann, bob))["id"]
    photo = await uploaded(w, ann, png(40, 30), filename="cat.png")
    report = await uploaded(w, ann, b"quarterly numbers", filename="report.txt")
    notes = await uploaded(w, ann, b"notes", filename="notes.txt")

    # REST: content may be empty when files come along; they keep the order named.
    message = await sent(w, ann, conv, attachments=[report["id"], photo["id"]])
    assert message["content"] == ""
    assert message["attachments"] == [report, photo]
    assert photo["width"] == 40 and photo["height"] == 30
    assert set(report) >= {"id", "name", "content_type", "size", "url"}

    # WebSocket: the sender's ack and the other side's frame carry them.
    ann_ws, bob_ws = await Socket.connect(w.node, ann), await Socket.connect(w.node, bob)
    try:
        frame = {
            "type": "message.send",
            "conversation_id": conv,
            "content": "lighthouse minutes",
            "client_msg_id": "ws-1",
            "attachments": [notes["id"]],
        }
        await ann_ws.send(frame)
        ack = await ann_ws.expect("message.ack", client_msg_id="ws-1")
        assert ack["message"]["attachments"] == [notes]
        new = await bob_ws.expect("message.new")
        assert new["message"]["id"] == ack["message"]["id"]
        assert new["message"]["attachments"] == [notes]
        # A plain message carries an empty list.
        await ann_ws.send({**frame, "content": "plain", "client_msg_id": "ws-2", "attachments": []})
        plain = (await ann_ws.expect("message.ack", client_msg_id="ws-2"))["message"]
        assert plain["attachments"] == []
    finally:
        await ann_ws.close()
        await bob_ws.close()

    # History pages, the conversation's last message, search, changed_after.
    history = await w.client.messages(bob, conv)
    assert [m["attachments"] for m in history] == [[report, photo], [notes], []]
    r = await w.client.http.get(f"{C}/{conv}", headers=bob.headers)
    assert r.json()["last_message"]["attachments"] == []
    r = await w.client.http.get(
        "/api/v1/messenger/search", params={"q": "lighthouse"}, headers=bob.headers
    )
    assert [m["attachments"] for m in r.json()["messages"]] == [[notes]]
    r = await w.client.http.put(
        f"{C}/{conv}/messages/{message['id']}/reactions/👍", headers=bob.headers
    )
    assert r.status_code == 200, r.text
    r = await w.client.http.get(
        f"{C}/{conv}/messages", params={"changed_after": 0}, headers=bob.headers
    )
    assert [m["attachments"] for m in r.json()["messages"]] == [[report, photo]]

    # The uploads know the message they went with.
    row = await upload_row(w, photo["id"])
    assert (row.message_id, row.conversation_id) == (message["id"], conv)


async def test_bad_attachments_are_422_and_write_nothing(world: World) -> None:
    w = world
    ann, bob = await w.client.user(), await w.client.user()
    conv = (await w.client.conversation(ann, bob))["id"]
    files = [(await uploaded(w, ann, f"file {i}".encode()))["id"] for i in range(11)]
    bobs = (await uploaded(w, bob, b"bob's"))["id"]

    refused(await send(w, ann, conv, "", attachments=[]), 422, "empty_content")
    refused(await send(w, ann, conv, "x", attachments=files), 422, "too_many_attachments")
    refused(await send(w, ann, conv, "x", attachments=files[:1] * 2), 422, "invalid_attachment")
    refused(await send(w, ann, conv, "x", attachments=["../etc"]), 422, "invalid_attachment")
    refused(await send(w, ann, conv, "x", attachments=[1]), 422, "invalid_field")
    # Someone else's upload and one that never was: the same answer, so ids cannot be probed.
    theirs = refused(await send(w, ann, conv, "x", attachments=[bobs]), 422, "invalid_attachment")
    unknown = refused(
        await send(w, ann, conv, "x", attachments=[UNKNOWN]), 422, "invalid_attachment"
    )
    assert theirs == unknown
    # Nothing was written: no message, no upload claimed.
    assert await w.client.messages(ann, conv) == []
    assert [(await upload_row(w, f)).message_id for f in files] == [None] * len(files)

    # Ten is the most; then each of them is sent, and cannot be sent again.
    ten = await sent(w, ann, conv, attachments=files[:10])
    assert [a["id"] for a in ten["attachments"]] == files[:10]
    again = await send(w, ann, conv, "again", attachments=[files[0]])
    refused(again, 422, "invalid_attachment")
    assert (await upload_row(w, files[0])).message_id == ten["id"]

    # Over WebSocket too: an error frame that names the send.
    socket = await Socket.connect(w.node, ann)
    try:
        await socket.send(
            {
                "type": "message.send",
                "conversation_id": conv,
                "content": "",
                "client_msg_id": "ws-bad",
                "attachments": [bobs],
            }
        )
        error = await socket.expect("error", ref="ws-bad")
        assert error["code"] == "invalid_attachment"
    finally:
        await socket.close()

    # An upload past its time can no longer be sent (the cleanup may take it any moment).
    stale = (await uploaded(w, ann, b"stale"))["id"]
    async with w.node.services.engine.begin() as conn:
        await conn.execute(
            update(Upload)
            .where(Upload.id == stale)
            .values(created_at=utcnow() - timedelta(hours=24, minutes=1))
        )
    refused(await send(w, ann, conv, "late", attachments=[stale]), 422, "invalid_attachment")
    assert [m["id"] for m in await w.client.messages(ann, conv)] == [ten["id"]]


async def test_a_repeated_send_answers_its_original(world: World) -> None:
    w = world
    ann, bob = await w.client.user(), await w.client.user()
    conv = (await w.client.conversation(ann, bob))["id"]
    file = (await uploaded(w, ann, b"once"))["id"]
    first = await send(w, ann, conv, "here", client_msg_id="c-1", attachments=[file])
    assert first.status_code == 201
    repeat = await send(w, ann, conv, "here", client_msg_id="c-1", attachments=[file])
    assert repeat.status_code == 200, repeat.text
    assert repeat.json() == first.json()
    # The same file under a new client_msg_id is a new send: refused.
    other = await send(w, ann, conv, "here", client_msg_id="c-2", attachments=[file])
    refused(other, 422, "invalid_attachment")


async def test_two_sends_claiming_one_upload_one_wins(world: World) -> None:
    w = world
    ann, bob = await w.client.user(), await w.client.user()
    conv = (await w.client.conversation(ann, bob))["id"]
    other_conv = (await w.client.conversation(ann, bob, title="other"))["id"]

    # Over the API, at once: whichever way the writer batches them.
    for round_ in range(3):
        file = (await uploaded(w, ann, b"contested"))["id"]
        answers = await asyncio.gather(
            send(w, ann, conv, f"a{round_}", attachments=[file]),
            send(w, ann, other_conv, f"b{round_}", attachments=[file]),
        )
        assert sorted(r.status_code for r in answers) == [201, 422], [r.text for r in answers]
        winner = next(r.json() for r in answers if r.status_code == 201)
        row = await upload_row(w, file)
        assert (row.message_id, row.conversation_id) == (winner["id"], winner["conversation_id"])

    # Straight to the writer, both in one batch past the pre-check: the transaction that
    # claimed twice is void, and the send that lost is refused whole.
    file = (await uploaded(w, ann, b"one batch"))["id"]
    described = [describe(await upload_row(w, file))]
    members = frozenset({ann.id, bob.id})
    writer = w.node.services.writer
    first = writer.submit(conv, ann.id, "first", None, members, attachments=described)
    second = writer.submit(conv, ann.id, "second", None, members, attachments=described)
    message, created = await first
    assert created and message["attachments"][0]["id"] == file
    with pytest.raises(Exception) as lost:
        await second
    assert getattr(lost.value, "code", None) == "invalid_attachment"
    contents = [m["content"] for m in await w.client.messages(ann, conv)]
    assert "first" in contents and "second" not in contents
    seqs = [m["seq"] for m in await w.client.messages(ann, conv)]
    assert seqs == list(range(1, len(seqs) + 1))  # no seq was spent on the loser
    assert (await upload_row(w, file)).message_id == message["id"]


async def test_who_may_download(world: World) -> None:
    w = world
    ann, bob, cat, dan = [await w.client.user() for _ in range(4)]
    conv = (await w.client.conversation(ann, bob, cat, title="crew"))["id"]
    data = bytes(range(256)) * 40
    file = await uploaded(w, ann, data, filename="plan final.bin")
    message = await sent(w, ann, conv, "the plan", attachments=[file["id"]])
    url = file["url"]

    # A participant: the bytes, as an attachment, never sniffed, in ranges.
    r = await w.client.http.get(url, headers=bob.headers)
    assert (r.status_code, r.content) == (200, data)
    assert r.headers["content-disposition"].startswith('attachment; filename="plan final.bin"')
    assert r.headers["x-content-type-options"] == "nosniff"
    r = await w.client.http.get(url, headers={**bob.headers, "Range": "bytes=100-199"})
    assert (r.status_code, r.content) == (206, data[100:200])
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"

    # Someone in no conversation that holds it: 403; an id that never was: 404.
    outsider = await w.client.user()
    refused(await w.client.http.get(url, headers=outsider.headers), 403, "forbidden")
    missing = url.replace(file["id"], UNKNOWN)
    refused(await w.client.http.get(missing, headers=outsider.headers), 404, "upload_not_found")
    # Not yet sent: only its uploader.
    unsent = await uploaded(w, ann, b"draft")
    refused(await w.client.http.get(unsent["url"], headers=bob.headers), 403, "forbidden")
    assert (await w.client.http.get(unsent["url"], headers=ann.headers)).status_code == 200

    # An image's thumbnail follows the same rule as its bytes.
    photo = await uploaded(w, ann, png(300, 200), filename="view.png")
    await sent(w, ann, conv, attachments=[photo["id"]])
    assert photo["thumbnail_url"].endswith("/thumbnail")
    r = await w.client.http.get(photo["thumbnail_url"], headers=bob.headers)
    assert r.status_code == 200 and r.content
    refused(
        await w.client.http.get(photo["thumbnail_url"], headers=outsider.headers), 403, "forbidden"
    )

    # A member added later sees what came after they joined, as the history shows.
    r = await w.client.http.post(
        f"{C}/{conv}/participants", json={"user_ids": [dan.id]}, headers=ann.headers
    )
    assert r.status_code == 200, r.text
    refused(await w.client.http.get(url, headers=dan.headers), 403, "forbidden")
    later_file = await uploaded(w, bob, b"for dan too")
    await sent(w, bob, conv, attachments=[later_file["id"]])
    assert (await w.client.http.get(later_file["url"], headers=dan.headers)).status_code == 200
    # Someone who left is no participant any more.
    r = await w.client.http.delete(f"{C}/{conv}/participants/{cat.id}", headers=cat.headers)
    assert r.status_code == 200, r.text
    refused(await w.client.http.get(url, headers=cat.headers), 403, "forbidden")

    # A deleted message shows no files, and they are no one's to fetch but the uploader's.
    r = await w.client.http.delete(f"{C}/{conv}/messages/{message['id']}", headers=ann.headers)
    assert r.status_code == 200, r.text
    assert r.json()["attachments"] == []
    shown = {m["id"]: m for m in await w.client.messages(bob, conv)}
    assert shown[message["id"]]["attachments"] == []
    refused(await w.client.http.get(url, headers=bob.headers), 403, "forbidden")
    assert (await w.client.http.get(url, headers=ann.headers)).status_code == 200


async def test_a_plain_send_costs_no_query_more(world: World) -> None:
    """The plain-text path is benchmarked: a send without files never looks at uploads,
    and on PostgreSQL still goes the one-statement way (the batch statement runs on the
    writer's own asyncpg connection, where SQLAlchemy sees none of it)."""
    w = world
    ann, bob = await w.client.user(), await w.client.user()
    conv = (await w.client.conversation(ann, bob))["id"]
    file = (await uploaded(w, ann, b"counted"))["id"]
    await sent(w, ann, conv, "warm the caches")
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split()).lower())

    engine = w.node.services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        await sent(w, ann, conv, "plain")
        plain = list(statements)
        statements.clear()
        await sent(w, ann, conv, "with a file", attachments=[file])
        with_file = list(statements)
    finally:
        event.remove(engine, "before_cursor_execute", record)

    def count(seen: list[str], prefix: str, table: str) -> int:
        return sum(1 for s in seen if s.startswith(prefix) and table in s)

    assert not [s for s in plain if "uploads" in s]
    assert count(with_file, "select", "from uploads") == 1
    assert count(with_file, "update uploads", "") == 1
    inserts = count(plain, "insert into messages", "")
    if w.node.services.engine.dialect.name == "postgresql":
        assert (inserts, count(with_file, "insert into messages", "")) == (0, 1)
    else:
        assert (inserts, count(with_file, "insert into messages", "")) == (1, 1)


# -- the cleanup ---------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
async def store_world(
    request: pytest.FixtureRequest, db_url: str, moto: str | None, tmp_path: Path
) -> AsyncIterator[World]:
    if request.param == "s3" and moto is None:
        pytest.skip(f"no S3 server: {uploads_tests.MOTO_PROBLEM}")
    w = await start_world(db_url, request.param, tmp_path, moto)
    yield w
    await w.client.close()
    await w.node.stop()


async def age(w: World, upload_id: str, hours: float) -> None:
    async with w.node.services.engine.begin() as conn:
        await conn.execute(
            update(Upload)
            .where(Upload.id == upload_id)
            .values(created_at=utcnow() - timedelta(hours=hours))
        )


async def leftovers_removed(w: World) -> None:
    """The database is the whole run's: what earlier tests left for the cleanup goes
    first, so that the counts below are this test's alone."""
    services = w.node.services
    await remove_stale_uploads(services.engine, services.storage, services.settings)


async def key_of(w: World, upload_id: str) -> str:
    return str((await upload_row(w, upload_id)).storage_key)


async def test_the_cleanup_removes_files_nobody_can_be_shown(store_world: World) -> None:
    w = store_world
    services = w.node.services
    await leftovers_removed(w)
    ann, bob = await w.client.user(), await w.client.user()
    conv = (await w.client.conversation(ann, bob))["id"]
    ids = {
        name: (await uploaded(w, ann, name.encode()))["id"]
        for name in ("forgotten", "recent", "in_grace", "kept", "deleted")
    }
    await age(w, ids["forgotten"], 26)
    await age(w, ids["in_grace"], 24.5)
    kept = await sent(w, ann, conv, attachments=[ids["kept"]])
    doomed = await sent(w, ann, conv, attachments=[ids["deleted"]])
    await age(w, ids["kept"], 30)  # sent: its age no longer matters
    # The deleted message's file has a thumbnail too: it goes with it.
    thumb_key = f"th/{secrets.token_hex(8)}"

    async def one_chunk() -> AsyncIterator[bytes]:
        yield b"thumbnail"

    await services.storage.put(thumb_key, one_chunk())
    async with services.engine.begin() as conn:
        await conn.execute(
            update(Upload).where(Upload.id == ids["deleted"]).values(thumbnail_key=thumb_key)
        )
    r = await w.client.http.delete(f"{C}/{conv}/messages/{doomed['id']}", headers=ann.headers)
    assert r.status_code == 200, r.text
    keys = {name: await key_of(w, upload_id) for name, upload_id in ids.items()}
    assert set(keys.values()) | {thumb_key} <= await w.keys()

    report = await run_cleanup(services.engine, services.settings, services.storage)
    assert report.ran and report.uploads_removed == 2

    left = await w.keys()
    assert keys["forgotten"] not in left and keys["deleted"] not in left
    assert thumb_key not in left
    assert {keys["recent"], keys["in_grace"], keys["kept"]} <= left
    for name in ("forgotten", "deleted"):
        assert await upload_row(w, ids[name]) is None
    for name in ("recent", "in_grace", "kept"):
        assert await upload_row(w, ids[name]) is not None
    async with services.engine.connect() as conn:
        stored = await conn.scalar(select(Message.attachments).where(Message.id == doomed["id"]))
        assert stored is None  # the deleted message keeps no file names either
    history = {m["id"]: m for m in await w.client.messages(bob, conv)}
    assert [a["id"] for a in history[kept["id"]]["attachments"]] == [ids["kept"]]
    r = await w.client.http.get(history[kept["id"]]["attachments"][0]["url"], headers=bob.headers)
    assert (r.status_code, r.content) == (200, b"kept")

    # A second run finds nothing more to do.
    again = await run_cleanup(services.engine, services.settings, services.storage)
    assert again.uploads_removed == 0


async def test_a_storage_failure_keeps_the_row_for_the_next_run(store_world: World) -> None:
    w = store_world
    services = w.node.services
    await leftovers_removed(w)
    ann = await w.client.user()
    first, second = [(await uploaded(w, ann, b"old"))["id"] for _ in range(2)]
    for upload_id in (first, second):
        await age(w, upload_id, 48)
    broken_key = await key_of(w, first)
    storage = services.storage
    real_delete = storage.delete

    async def failing_delete(key: str) -> None:
        if key == broken_key:
            raise ConnectionError("the store is unreachable")
        await real_delete(key)

    storage.delete = failing_delete
    try:
        report = await remove_stale_uploads(services.engine, storage, services.settings)
    finally:
        del storage.delete
    assert (report.removed, report.failed) == (1, 1)
    assert await upload_row(w, first) is not None
    assert broken_key in await w.keys()
    assert await upload_row(w, second) is None

    report = await remove_stale_uploads(services.engine, storage, services.settings)
    assert (report.removed, report.failed) == (1, 0)
    assert await upload_row(w, first) is None
    assert broken_key not in await w.keys()
    async with services.engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(Upload).where(Upload.uploader_id == ann.id)
        )
    assert count == 0


async def test_one_node_sweeps_uploads_at_a_time(world: World) -> None:
    """On PostgreSQL the sweep holds a lock of its own: a node that finds it taken (one
    sweeping now) removes nothing, and the next run, once it is free, does."""
    w = world
    services = w.node.services
    if services.engine.dialect.name != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's; SQLite runs one node")
    await leftovers_removed(w)
    ann = await w.client.user()
    forgotten = (await uploaded(w, ann, b"forgotten"))["id"]
    await age(w, forgotten, 48)
    async with services.engine.connect() as other_node:
        assert await other_node.scalar(select(func.pg_try_advisory_lock(UPLOAD_LOCK_KEY)))
        report = await remove_stale_uploads(services.engine, services.storage, services.settings)
        assert (report.ran, report.removed) == (False, 0)
        assert await upload_row(w, forgotten) is not None
        await other_node.scalar(select(func.pg_advisory_unlock(UPLOAD_LOCK_KEY)))
    report = await remove_stale_uploads(services.engine, services.storage, services.settings)
    assert (report.ran, report.removed) == (True, 1)
    assert await upload_row(w, forgotten) is None
    # It gave its lock back: another node may take it now.
    async with services.engine.connect() as other_node:
        assert await other_node.scalar(select(func.pg_try_advisory_lock(UPLOAD_LOCK_KEY)))
        await other_node.scalar(select(func.pg_advisory_unlock(UPLOAD_LOCK_KEY)))
