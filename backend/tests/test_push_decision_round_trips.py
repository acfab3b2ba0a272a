"""What deciding a push costs PostgreSQL: one statement for an offline recipient, no
transaction around it, and the same statement text whatever the batch's size (prepared
once per connection). The decisions themselves are tested in test_push_decision*.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.messenger.models import Participant
from app.messenger.push import decision_log as reasons
from app.messenger.push.decision import Candidate, Decided, decide
from app.messenger.push.read_connection import read_connection
from tests.helpers import Client, User

D = "/api/v1/messenger/devices/register"
BASE_URL = "https://chat.example"


async def register(client: Client, user: User) -> None:
    r = await client.http.post(
        D,
        json={"device_token": f"{user.id:04d}" * 16, "platform": "ios", "provider": "apns"},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text


@asynccontextmanager
async def statements_of(conn: AsyncConnection) -> AsyncIterator[list[str]]:
    """The statements this one connection sends while inside, through SQLAlchemy or on
    asyncpg itself (the node's own work on other connections is left out). asyncpg's
    query loggers see its own execute and fetch, not the prepared statements SQLAlchemy
    runs: each is counted once."""
    sent: list[str] = []
    mine = conn.sync_connection
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None

    def through_sqlalchemy(c: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if c is mine:
            sent.append(statement)

    def on_asyncpg(query: Any) -> None:
        sent.append(query.query)

    engine = conn.sync_engine
    event.listen(engine, "before_cursor_execute", through_sqlalchemy)
    driver.add_query_logger(on_asyncpg)
    try:
        yield sent
    finally:
        await asyncio.sleep(0)  # asyncpg tells its loggers in the next loop round
        driver.remove_query_logger(on_asyncpg)
        event.remove(engine, "before_cursor_execute", through_sqlalchemy)


async def decided_with_count(
    conn: AsyncConnection, candidates: list[Candidate]
) -> tuple[Decided, list[str]]:
    async with statements_of(conn) as sent:
        decided = await decide(conn, candidates, BASE_URL)
    return decided, sent


async def test_one_offline_recipient_costs_one_statement(pg_client: Client) -> None:
    sender, away, muted, plain = [await pg_client.user() for _ in range(4)]
    for user in (away, muted, plain):
        await register(pg_client, user)
    conv = await pg_client.conversation(sender, away, muted, plain, title="Ops")
    async with pg_client.node.services.engine.begin() as conn:
        await conn.execute(
            update(Participant)
            .where(Participant.conversation_id == conv["id"], Participant.user_id == muted.id)
            .values(muted=True)
        )
    message = (await pg_client.send(sender, conv["id"], "deploy done")).json()

    # As the push service decides: on a reading connection.
    async with read_connection(pg_client.node.services.engine) as conn:
        await decide(conn, [Candidate(message, plain.id)], BASE_URL)  # prepares it
        decided, sent = await decided_with_count(conn, [Candidate(message, away.id)])
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        # No BEGIN went out before it, so no ROLLBACK follows.
        assert not driver.is_in_transaction()

        assert len(sent) == 1, sent
        assert [d.reason for d in decided.decisions] == [reasons.SENT]
        [(_, push)] = decided.pushes
        assert push.device.user_id == away.id
        assert push.notification.title == f"{sender.display_name} • Ops"

        # Three recipients, decided three ways, in the same one statement.
        batch = [Candidate(message, u.id) for u in (away, muted, plain)]
        decided, sent_for_three = await decided_with_count(conn, batch)
        assert sent_for_three == sent
        assert {(d.user_id, d.reason) for d in decided.decisions} == {
            (away.id, reasons.SENT),
            (muted.id, reasons.MUTED),
            (plain.id, reasons.SENT),
        }
        assert {p.device.user_id for _, p in decided.pushes} == {away.id, plain.id}
