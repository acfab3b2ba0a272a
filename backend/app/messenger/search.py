"""Message search: GET /api/v1/messenger/search over the caller's conversations.

PostgreSQL matches `messages.search_vector` (a stored generated column,
to_tsvector(SEARCH_LANGUAGE, content), GIN-indexed; migration 0007) and ranks with
ts_rank, normalised by the log of the length (ts_rank_cd's proximity tells little in
messages this short, and costs twice as much per match). SQLite matches the FTS5 table
`messages_fts` (English stemming: porter) and ranks by each message's own matches (see
sqlite_search). Both read the query the same way: each whitespace-separated term is one
quoted phrase (stemmed; never query syntax, so no input can make a syntax error), and a
message matching any of them is found, those matching more of them first.

Only messages of conversations the caller is a participant of are searched: the
participants row is joined in the query itself, so nothing else can leak whatever
the ranking does. The highlighted snippet is made for the rows of the page only.

A page ends with `next_cursor`, opaque to clients: the (rank, created_at, id) of its
last message, from which the next page goes on (keyset, so a message arriving
between two pages causes no duplicate).

A search has SEARCH_TIMEOUT_SECONDS: a common word over many busy conversations, or many
words at once, may rank for longer, holding a connection meanwhile. PostgreSQL cancels
it (statement_timeout, for its transaction only); SQLite's progress handler interrupts
it. Either way it answers 503 `search_timeout` with Retry-After.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import logging
import math
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    String,
    and_,
    bindparam,
    column,
    func,
    literal_column,
    select,
    table,
    text,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import REGCONFIG, TSVECTOR
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import ConfigError, Settings
from app.db import UTCDateTime, make_engine
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.messenger.message_store import message_dict
from app.messenger.models import Message, Participant
from app.messenger.participants import ParticipantCache
from app.openapi import schemas
from app.openapi.api import documented
from app.ratelimit import RateLimiter, too_many_requests
from app.web import RequestReader, query_int

log = logging.getLogger(__name__)

_messages = Message.__table__
_participants = Participant.__table__

MAX_QUERY_CHARS = 200
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR_CHARS = 300
# What a search that ran out of time tells the client to wait.
TIMEOUT_RETRY_AFTER = "5"
# SQLite calls the progress handler every this many virtual machine steps (well under a
# millisecond each time).
PROGRESS_STEPS = 1000

# Where the database marks a match in a snippet: private-use characters, split on here
# (see snippet_parts), so a client gets plain strings and never markup.
OPEN, CLOSE = "\ue000", "\ue001"
SNIPPET_WORDS = 16
# ts_headline's options: fixed here, never from a request.
HEADLINE_OPTIONS = (
    f"StartSel={OPEN}, StopSel={CLOSE}, MaxWords={SNIPPET_WORDS}, MinWords=6, "
    'MaxFragments=2, FragmentDelimiter=" … "'
)

# What migration 0007 makes that the models do not describe: the FTS5 table and its
# shadow tables (SQLite), the generated column and its index (PostgreSQL).
FTS_TABLE = "messages_fts"
SEARCH_COLUMN = "search_vector"
SEARCH_INDEX = "ix_messages_search_vector"
SEARCH_INDEXES = (SEARCH_INDEX, "ix_messages_search_short", "ix_messages_search_long")
# The bound of the partial indexes' predicates, length(content) <= 200 (migration 0007).
SHORT_MESSAGE = 200


def is_search_object(name: str | None, type_: str) -> bool:
    """Whether a schema object is the search index's, which the models leave out (the
    migrations' autogenerate and the models-versus-migrations test skip these)."""
    if name is None:
        return False
    if type_ == "table":
        return name == FTS_TABLE or name.startswith(FTS_TABLE + "_")
    if type_ == "column":
        return name == SEARCH_COLUMN
    if type_ == "index":
        return name in SEARCH_INDEXES
    return False


# -- the query ------------------------------------------------------------------------


def query_terms(q: str) -> list[str]:
    """The distinct whitespace-separated terms of a query, in order."""
    return list(dict.fromkeys(q.split()))


def fts5_query(terms: list[str]) -> str:
    """An FTS5 MATCH expression: each term one string (a phrase of its tokens), any of
    them. Inside "..." only a doubled quote means anything, so nothing a user types
    (AND, NEAR(, col:, *, ^) is read as syntax."""
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def tsquery_text(terms: list[str]) -> str:
    """to_tsquery's input: each term quoted (a phrase of its lexemes once the
    configuration has parsed it), any of them. Inside '...' a quote is doubled and a
    backslash escaped; the weights and prefix marks that could follow a quote are ours
    to write, and we write none."""
    return " | ".join("'" + term.replace("\\", "\\\\").replace("'", "''") + "'" for term in terms)


def snippet_parts(marked: str, content: str) -> list[str]:
    """A snippet as plain strings: even places outside a match, odd places a match
    (the first may be empty). A message whose own text holds the marker characters
    gets its snippet unhighlighted: its marks could not be told from ours."""
    if OPEN in content or CLOSE in content:
        return [marked.replace(OPEN, "").replace(CLOSE, "")]
    parts = [""]
    for piece in re.split(f"([{OPEN}{CLOSE}])", marked):
        if piece == OPEN:
            if len(parts) % 2:
                parts.append("")
        elif piece == CLOSE:
            if not len(parts) % 2:
                parts.append("")
        else:
            parts[-1] += piece
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    return parts


def encode_cursor(rank: float, created_at: datetime, message_id: str) -> str:
    raw = orjson.dumps([rank, created_at.isoformat(), message_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[float, datetime, str]:
    """(rank, created_at, id) of the message a page ended with; 422 for anything that is
    not a cursor this route gave."""
    bad = ApiError(422, "invalid_field", "cursor is not one a search answered")
    if len(cursor) > MAX_CURSOR_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        rank, when, message_id = orjson.loads(raw)
        if isinstance(rank, bool) or not isinstance(rank, (int, float)):
            raise ValueError
        created_at = datetime.fromisoformat(when)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise bad from None
    if (
        not math.isfinite(rank)
        or created_at.tzinfo is None
        or not isinstance(message_id, str)
        or not 0 < len(message_id) <= 36
    ):
        raise bad
    try:
        created_at = created_at.astimezone(UTC)
    except OverflowError:
        raise bad from None
    return float(rank), created_at, message_id


def _after_cursor(ranked: Any, cursor: tuple[float, datetime, str] | None) -> Any:
    """The rows that come after the cursor in the order (rank, created_at, id), all
    descending; everything without one."""
    if cursor is None:
        return true()
    rank, created_at, message_id = cursor
    return tuple_(ranked.c.rank, ranked.c.created_at, ranked.c.id) < tuple_(
        bindparam("c_rank", rank, type_=Float()),
        bindparam("c_created_at", created_at, type_=UTCDateTime()),
        bindparam("c_id", message_id, type_=String()),
    )


def _order(page: Any) -> list[Any]:
    return [page.c.rank.desc(), page.c.created_at.desc(), page.c.id.desc()]


def _mine(user_id: int, conversation_id: str | None) -> Any:
    """Messages of the caller's conversations (of that one, when given). Nothing else is
    filtered: a message nobody may read any more (deleted) must have no text left to
    match (the search indexes follow its content), or be left out here."""
    p = _participants
    where = and_(p.c.conversation_id == _messages.c.conversation_id, p.c.user_id == user_id)
    # Only what the caller can read: the messages from after they joined.
    where = and_(where, _messages.c.seq > p.c.joined_seq)
    # A deleted message is emptied as well (message_changes), so this costs no match.
    where = and_(where, _messages.c.deleted_at.is_(None))
    if conversation_id is not None:
        where = and_(where, _messages.c.conversation_id == conversation_id)
    return where


def postgres_search(
    user_id: int,
    conversation_id: str | None,
    terms: list[str],
    language: str,
    cursor: tuple[float, datetime, str] | None,
    limit: int,
) -> Any:
    """The page: ranked in a subquery with its LIMIT, then joined to its messages; the
    headline is made for those rows only. The configuration is a regconfig bind
    parameter, never text in the SQL.

    Short and long messages are ranked in two branches, each matching a partial index
    of migration 0007 (its predicate is repeated here word for word): a short message's
    vector is read from the index kept in conversation order, a long one's from the
    table. The planner picks, per query, the GIN index instead where a word is rare."""
    # A regconfig parameter (`$1::REGCONFIG`), not text cast to regconfig: that cast is
    # only stable, so the tsquery would be made again for every row, where from a
    # regconfig it is made once, while planning, whose estimates then know the words.
    config = bindparam("config", language, type_=REGCONFIG)
    query = func.to_tsquery(config, bindparam("tsquery", tsquery_text(terms), type_=String()))
    vector = literal_column(f"messages.{SEARCH_COLUMN}", TSVECTOR)
    length = func.length(_messages.c.content)
    bound: ColumnElement[int] = literal_column(str(SHORT_MESSAGE))

    def branch(size: ColumnElement[bool]) -> Any:
        return (
            select(
                _messages.c.id,
                _messages.c.created_at,
                func.ts_rank(vector, query, 1).label("rank"),
            )
            .select_from(_messages.join(_participants, _mine(user_id, conversation_id)))
            .where(vector.op("@@")(query), size)
        )

    ranked = union_all(branch(length <= bound), branch(length > bound)).subquery("ranked")
    page = (
        select(ranked)
        .where(_after_cursor(ranked, cursor))
        .order_by(*_order(ranked))
        .limit(limit)
        .subquery("page")
    )
    # translate() drops the marker characters from the text, so that only ours remain.
    headline = func.ts_headline(
        config,
        func.translate(_messages.c.content, OPEN + CLOSE, ""),
        query,
        bindparam("headline_options", HEADLINE_OPTIONS, type_=String()),
    )
    return (
        select(*_messages.c, page.c.rank, headline.label("snippet"))
        .select_from(page.join(_messages, _messages.c.id == page.c.id))
        .order_by(*_order(page))
    )


def sqlite_search(
    user_id: int,
    conversation_id: str | None,
    terms: list[str],
    cursor: tuple[float, datetime, str] | None,
    limit: int,
) -> Any:
    """The same on FTS5. The rank is not bm25: that weighs terms by how many of all
    messages hold them, which every message sent anywhere changes, so a page boundary
    would move between two requests. It is the message's own number of matches (what
    highlight() marks), shorter messages first among equals: it moves only when the
    message does. snippet() needs the MATCH of its own row, so the page's rows are
    matched again (by rowid) to make theirs."""
    fts = table(FTS_TABLE, column("rowid", Integer))
    fts_name: ColumnElement[Any] = literal_column(FTS_TABLE)
    match = fts_name.op("MATCH")(bindparam("match", fts5_query(terms), type_=String()))
    rowid = literal_column("messages.rowid", Integer)
    # Each match gains one marker character; the content's own length is known.
    content_length = func.length(_messages.c.content)
    matches = func.length(func.highlight(fts_name, 0, OPEN, "")) - content_length
    rank = matches + 1.0 / (2 + content_length)
    ranked = (
        select(*_messages.c, rowid.label("fts_rowid"), rank.label("rank"))
        .select_from(
            fts.join(_messages, rowid == fts.c.rowid).join(
                _participants, _mine(user_id, conversation_id)
            )
        )
        .where(match)
        .subquery("ranked")
    )
    page = (
        select(ranked)
        .where(_after_cursor(ranked, cursor))
        .order_by(*_order(ranked))
        .limit(limit)
        .subquery("page")
    )
    snippet = func.snippet(fts_name, 0, OPEN, CLOSE, "…", SNIPPET_WORDS)
    return (
        select(page, snippet.label("snippet"))
        .select_from(page.join(fts, fts.c.rowid == page.c.fts_rowid))
        .where(match)
        .order_by(*_order(page))
    )


# For this transaction only. A plan made for the words searched: the statement is
# prepared, and a generic plan (made once for any words) cannot tell a word in half
# of all messages from a rare one, so it reads the GIN index for both; for a common
# word that is every message holding it (seconds on a million), where reading the
# caller's conversations is milliseconds. And no parallel workers: starting them
# costs more than the few thousand rows of a search gain from them. And the search's own
# statement timeout, when it has one.
_PLAN_SETTINGS = (
    "SELECT set_config('plan_cache_mode', 'force_custom_plan', true), "
    "set_config('max_parallel_workers_per_gather', '0', true)"
)
_PLAN = text(_PLAN_SETTINGS)
_PLAN_AND_TIMEOUT = text(_PLAN_SETTINGS + ", set_config('statement_timeout', :timeout, true)")
# PostgreSQL's query_canceled: a statement timeout (or a cancel request).
_QUERY_CANCELED = "57014"


def search_timeout() -> ApiError:
    return ApiError(
        503,
        "search_timeout",
        "the search took too long; try again later, or with fewer or rarer words",
        headers={"Retry-After": TIMEOUT_RETRY_AFTER},
    )


def _timed_out(exc: BaseException) -> bool:
    """Whether a database error is the search's time running out."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if state == _QUERY_CANCELED:
            return True
        if isinstance(error, sqlite3.OperationalError) and str(error) == "interrupted":
            return True
        error = getattr(error, "orig", None) or error.__cause__
    return False


@asynccontextmanager
async def _sqlite_deadline(conn: AsyncConnection, seconds: float) -> AsyncIterator[None]:
    """Interrupts the connection's statements once `seconds` have passed (the progress
    handler runs in aiosqlite's thread, where the statement runs)."""
    driver: Any = (await conn.get_raw_connection()).driver_connection  # aiosqlite's
    deadline = time.monotonic() + seconds
    await driver.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
    try:
        yield
    finally:
        await driver.set_progress_handler(None, 0)


async def search_messages(
    engine: AsyncEngine,
    user_id: int,
    q: str,
    *,
    language: str,
    conversation_id: str | None = None,
    cursor: tuple[float, datetime, str] | None = None,
    limit: int = DEFAULT_LIMIT,
    time_limit: float | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the user's messages that match `q`, best first, each with `snippet`,
    and the cursor of the next page (None when this is the last). Past `time_limit`
    seconds (None: the connection's own limit) 503 `search_timeout` is raised."""
    terms = query_terms(q)
    postgres = engine.dialect.name == "postgresql"
    if postgres:
        stmt = postgres_search(user_id, conversation_id, terms, language, cursor, limit + 1)
    else:
        stmt = sqlite_search(user_id, conversation_id, terms, cursor, limit + 1)
    try:
        async with engine.connect() as conn:
            if postgres and time_limit is not None:
                # In milliseconds, at least 1 (0 would turn the limit off).
                milliseconds = str(max(1, round(time_limit * 1000)))
                await conn.execute(_PLAN_AND_TIMEOUT, {"timeout": milliseconds})
                rows = (await conn.execute(stmt)).all()
            elif postgres:
                await conn.execute(_PLAN)
                rows = (await conn.execute(stmt)).all()
            elif time_limit is not None:
                async with _sqlite_deadline(conn, time_limit):
                    rows = (await conn.execute(stmt)).all()
            else:
                rows = (await conn.execute(stmt)).all()
    except DBAPIError as exc:
        if _timed_out(exc):
            raise search_timeout() from None
        raise
    messages = []
    for row in rows[:limit]:
        message = message_dict(row)
        message["snippet"] = snippet_parts(row.snippet or "", row.content)
        messages.append(message)
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last.rank, last.created_at, last.id)
    return messages, next_cursor


# -- the route ------------------------------------------------------------------------


class SearchRoutes:
    """GET /api/v1/messenger/search?q=&conversation_id=&limit=&cursor="""

    def __init__(
        self,
        engine: AsyncEngine,
        reader: RequestReader,
        participants: ParticipantCache,
        limiter: RateLimiter,
        settings: Settings,
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._participants = participants
        self._limiter = limiter
        self._settings = settings

    @property
    def routes(self) -> list[Route]:
        return [Route("/api/v1/messenger/search", self.search, methods=["GET"])]

    @documented(
        "Search the caller's messages, best match first",
        query=schemas.SearchQuery,
        responses={
            200: schemas.SearchResults,
            403: "the caller is not in this conversation",
            404: "no such conversation",
            429: "too many searches",
            503: "the search took too long; retry after Retry-After",
        },
        tags=["search"],
    )
    async def search(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        params = request.query_params
        q = params.get("q", "")
        if len(q) > MAX_QUERY_CHARS:
            raise ApiError(422, "invalid_field", f"q is longer than {MAX_QUERY_CHARS} characters")
        if not q.strip():
            raise ApiError(422, "invalid_field", "q must hold something to search for")
        limit = query_int(request, "limit", minimum=1, maximum=MAX_LIMIT) or DEFAULT_LIMIT
        raw_cursor = params.get("cursor")
        cursor = decode_cursor(raw_cursor) if raw_cursor else None
        conversation_id = params.get("conversation_id") or None
        if conversation_id is not None:
            await self._participants.of_member(user_id, conversation_id)
        retry_after = await self._limiter.hit(
            f"search:{user_id}",
            self._settings.search_rate_per_minute / 60,
            self._settings.search_burst,
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many searches; try again later")
        messages, next_cursor = await search_messages(
            self._engine,
            user_id,
            q,
            language=self._settings.search_language,
            conversation_id=conversation_id,
            cursor=cursor,
            limit=limit,
            # A longer one would meet the connection's own statement timeout first.
            time_limit=min(
                self._settings.search_timeout_seconds,
                self._settings.database_statement_timeout_seconds,
            ),
        )
        return JSONResponse({"messages": messages, "next_cursor": next_cursor})


# -- the configuration ----------------------------------------------------------------

# The configuration the column was generated with: a regconfig constant in a column's
# expression is recorded as a dependency of the column's default (pg_attrdef).
_INDEXED_CONFIG = text(
    "SELECT dep.refobjid::regconfig::text FROM pg_attrdef AS d "
    "JOIN pg_attribute AS a ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
    "JOIN pg_depend AS dep ON dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid "
    "AND dep.refclassid = 'pg_ts_config'::regclass "
    "WHERE d.adrelid = 'messages'::regclass AND a.attname = :column"
)
_KNOWN_CONFIG = text("SELECT oid::regconfig::text FROM pg_ts_config WHERE cfgname = :name")


async def _known_config(conn: AsyncConnection, language: str) -> str:
    found: str | None = await conn.scalar(_KNOWN_CONFIG, {"name": language})
    if found is None:
        names = (await conn.execute(text("SELECT cfgname FROM pg_ts_config"))).scalars()
        raise ConfigError(
            f"SEARCH_LANGUAGE={language!r} is not a text search configuration of this "
            f"database; it has: {', '.join(sorted(names))}"
        )
    return found


async def check_search_language(engine: AsyncEngine, settings: Settings) -> None:
    """At start: SEARCH_LANGUAGE must be a configuration of the database, and the one
    the index was built with (queries parsed another way would miss what it holds)."""
    if engine.dialect.name != "postgresql":
        if settings.search_language != "english":
            log.warning(
                "SEARCH_LANGUAGE=%s is for PostgreSQL: SQLite's search stems English",
                settings.search_language,
            )
        return
    async with engine.connect() as conn:
        wanted = await _known_config(conn, settings.search_language)
        indexed = await conn.scalar(_INDEXED_CONFIG, {"column": SEARCH_COLUMN})
    if indexed != wanted:
        raise ConfigError(
            f"SEARCH_LANGUAGE is {wanted!r} but messages are indexed for {indexed!r}: set "
            f"SEARCH_LANGUAGE={indexed}, or index them again for the new language with "
            "`python -m app.messenger.search reindex` (it rewrites the messages table)"
        )


async def reindex(engine: AsyncEngine, language: str) -> None:
    """Build the search column and its index again for another configuration, in one
    transaction (the messages table is locked and rewritten meanwhile)."""
    async with engine.begin() as conn:
        config = await _known_config(conn, language)
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", config):
            raise ConfigError(f"{config!r} cannot be used for the search index")
        for index in SEARCH_INDEXES:
            await conn.execute(text(f"DROP INDEX IF EXISTS {index}"))
        await conn.execute(text(f"ALTER TABLE messages DROP COLUMN IF EXISTS {SEARCH_COLUMN}"))
        await conn.execute(
            text(
                f"ALTER TABLE messages ADD COLUMN {SEARCH_COLUMN} tsvector GENERATED ALWAYS AS "
                f"(to_tsvector('{config}'::regconfig, content)) STORED"
            )
        )
        await conn.execute(
            text(f"CREATE INDEX {SEARCH_INDEX} ON messages USING gin ({SEARCH_COLUMN})")
        )
        # As migration 0007 makes them (see there why).
        await conn.execute(
            text(
                "CREATE INDEX ix_messages_search_short ON messages (conversation_id, seq) "
                f"INCLUDE (created_at, id, {SEARCH_COLUMN}) "
                f"WHERE length(content) <= {SHORT_MESSAGE}"
            )
        )
        await conn.execute(
            text(
                "CREATE INDEX ix_messages_search_long ON messages (conversation_id) "
                f"WHERE length(content) > {SHORT_MESSAGE}"
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.messenger.search",
        description="reindex: build the PostgreSQL search index again for SEARCH_LANGUAGE",
    )
    parser.add_argument("command", choices=["reindex"])
    parser.parse_args()
    settings = Settings()
    engine = make_engine(settings.effective_database_url)
    if engine.dialect.name != "postgresql":
        raise SystemExit("SQLite's search index does not depend on SEARCH_LANGUAGE")

    async def run() -> None:
        try:
            await reindex(engine, settings.search_language)
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    print(f"messages indexed for {settings.search_language}")


if __name__ == "__main__":
    main()
