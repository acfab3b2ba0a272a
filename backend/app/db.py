"""The database engine, the declarative base and the types shared by every table."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import ARRAY, ColumnElement, DateTime, MetaData, Table, any_, bindparam, event
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    # Every model is mapped to a plain Table (Core statements are built on it).
    __table__: ClassVar[Table]


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# How much longer than the statement timeout the client waits for an answer.
CLIENT_TIMEOUT_MARGIN = 2.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def one_of(
    column: ColumnElement[Any], values: Collection[Any], dialect: str
) -> ColumnElement[bool]:
    """`column IN values`; on PostgreSQL one array parameter (`= ANY(...)`) instead, so the
    statement is the same whatever the count: prepared once, no bind per value."""
    if dialect == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


def upsert(table: Table, dialect: str) -> PgInsert | SqliteInsert:
    """An INSERT into `table` that takes an ON CONFLICT clause (`on_conflict_do_nothing`,
    `on_conflict_do_update`), in the form of the dialect in use."""
    if dialect == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


def make_engine(
    url: str,
    statement_timeout: float | None = None,
    connect_timeout: float | None = None,
    pool_timeout: float = 30.0,
    pool_size: int = 20,
    max_overflow: int = 20,
) -> AsyncEngine:
    """The engine; on PostgreSQL with these timeouts (seconds; None: the driver's own)."""
    # A database error never quotes its statement's parameters (message text, hashes).
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers go on while the writer commits; foreign keys are off by default.
            # synchronous=FULL syncs the WAL at every commit: an acknowledged message
            # survives a power cut (NORMAL could lose the last commits).
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    connect_args: dict[str, Any] = {}
    if connect_timeout is not None:
        connect_args["timeout"] = connect_timeout
    if statement_timeout is not None:
        # PostgreSQL cancels a statement that runs longer (waiting on a lock included); the
        # client gives up a little later, for a server that stopped answering altogether.
        timeout_ms = str(round(statement_timeout * 1000))
        connect_args["server_settings"] = {"statement_timeout": timeout_ms}
        connect_args["command_timeout"] = statement_timeout + CLIENT_TIMEOUT_MARGIN
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        connect_args=connect_args,
        hide_parameters=True,
    )

    @event.listens_for(engine.sync_engine, "checkout")
    def _drop_closed(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        # A connection the server closed (restart, failover) is replaced before use.
        # asyncpg notices the close by itself, so this costs no round trip; pool_pre_ping
        # would cost three (BEGIN, a ping, ROLLBACK) on every checkout.
        if record.driver_connection.is_closed():
            raise DisconnectionError("the server closed this connection")

    return engine


# Classes of SQLSTATE that say "not now" rather than "wrong": the connection (08), resources
# (53), the operator or a timeout (57: statement_timeout is 57014), and a lock or a
# conflict a retry may not meet again (55P03, 40001, 40P01).
_TRANSIENT_SQLSTATES = ("08", "53", "57", "55P03", "40001", "40P01")


def database_unavailable(exc: BaseException) -> bool:
    """Whether an error means the database could not answer in time (down, unreachable,
    a statement timed out, a pool exhausted), which a retry may get past, rather than a
    bug or bad input."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (OSError, TimeoutError, PoolTimeout)):
            return True
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(state, str) and state.startswith(_TRANSIENT_SQLSTATES):
            return True
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            return True
        error = getattr(error, "orig", None) or error.__cause__
    return False


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
