"""The push log admins read: every push decision and every delivery, newest first.

Two tables, one list: push_decisions (why a recipient was or was not pushed, for a run
of messages) and push_attempts (each device's outcome). Rows written by one flush share
their created_at, so the order is (created_at, table, id), newest first, and the page
cursor (`before`) names a row by all three: "<table>.<id>.<created_at in µs>", with
table "d" (decision) or "a" (delivery). A decision comes before the deliveries written
with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, Table, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import ApiError
from app.messenger.models import PushAttempt, PushDecision
from app.models import MAX_ID

_attempts = PushAttempt.__table__
_decisions = PushDecision.__table__
MAX_LIMIT = 500
MAX_MICROS = 253402300799999999  # 9999-12-31 23:59:59.999999 UTC
# push_attempts' outcomes as the log's reasons: a delivery either reached the provider
# (sent), found the token dead, or failed (refused, or every retry used up).
OUTCOME_REASON = {"delivered": "sent", "dead_token": "dead_token"}
_CURSOR = re.compile(r"([ad])\.([0-9]{1,18})\.([0-9]{1,18})")


@dataclass(frozen=True, order=True)
class Cursor:
    created_us: int
    table: str  # "d" sorts after "a": the decision first, newest first
    id: int

    def __str__(self) -> str:
        return f"{self.table}.{self.id}.{self.created_us}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise ApiError(422, "invalid_field", "before is not a cursor this log gave")
        table, row_id, created_us = match.groups()
        # Ids are 32-bit columns: a larger one would overflow in the query (a 500 on
        # PostgreSQL). No row is older than the epoch or newer than year 9999.
        if not 0 < int(row_id) <= MAX_ID or int(created_us) > MAX_MICROS:
            raise ApiError(422, "invalid_field", "before is not a cursor this log gave")
        return cls(int(created_us), table, int(row_id))

    @property
    def created_at(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.created_us)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)  # exact, unlike a float


def _page(table: Table, name: str, user_id: int | None, before: Cursor | None) -> Select[Any]:
    c = table.c
    query = select(table)
    if user_id is not None:
        query = query.where(c.user_id == user_id)
    if before is not None:
        t = before.created_at
        if name > before.table:  # this table's rows at t came before the cursor's
            query = query.where(c.created_at < t)
        elif name < before.table:  # ... or after it
            query = query.where(c.created_at <= t)
        else:
            query = query.where(or_(c.created_at < t, and_(c.created_at == t, c.id < before.id)))
    return query


async def push_log(
    conn: AsyncConnection, user_id: int | None, before: Cursor | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the log (one user's, or everyone's) and the cursor of the next, if any."""
    entries: list[tuple[Cursor, dict[str, Any]]] = []
    for table, name in ((_decisions, "d"), (_attempts, "a")):
        query = (
            _page(table, name, user_id, before)
            .order_by(table.c.created_at.desc(), table.c.id.desc())
            .limit(limit + 1)
        )
        for row in (await conn.execute(query)).mappings():
            entry = _decision(row) if name == "d" else _delivery(row)
            key = Cursor(_micros(row["created_at"]), name, row["id"])
            entries.append((key, {"id": str(key), **entry}))
    entries.sort(key=lambda e: e[0], reverse=True)
    page = entries[:limit]
    more = len(entries) > limit
    return [entry for _, entry in page], str(page[-1][0]) if more and page else None


def _decision(row: Any) -> dict[str, Any]:
    return {
        "type": "decision",
        "reason": row["reason"],
        "user_id": row["user_id"],
        "conversation_id": row["conversation_id"],
        "message_id": row["message_id"],
        "first_seq": row["first_seq"],
        "last_seq": row["last_seq"],
        "created_at": row["created_at"],
    }


def _delivery(row: Any) -> dict[str, Any]:
    return {
        "type": "delivery",
        "reason": OUTCOME_REASON.get(row["outcome"], "failed"),
        "outcome": row["outcome"],
        "user_id": row["user_id"],
        "conversation_id": row["conversation_id"],
        "message_id": row["message_id"],
        "seq": row["seq"],
        "device_id": row["device_id"],
        "provider": row["provider"],
        "attempts": row["attempts"],
        "latency_ms": row["latency_ms"],
        "error": row["error"],
        "created_at": row["created_at"],
    }
