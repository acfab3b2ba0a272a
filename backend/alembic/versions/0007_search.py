"""message search: a tsvector column with a GIN index on PostgreSQL, an FTS5 index kept
by triggers on SQLite

Revision ID: 0007
Revises: 0006

PostgreSQL: `messages.search_vector` is a stored generated column,
to_tsvector(<SEARCH_LANGUAGE>, content), with a GIN index (and two indexes for a walk
through one user's conversations, below). A generated column rather than an expression
index: ranking and the filter over one conversation's messages read the stored vector
instead of parsing every message again, and PostgreSQL recomputes it on any UPDATE of
content (an edit, or a deletion that empties it). Its text search configuration is
fixed here, from SEARCH_LANGUAGE as it is when this runs; a node checks at start that
its own SEARCH_LANGUAGE is the same (app/messenger/search.py, which can also build it
again for another). Adding the column rewrites the table once, which fills it for the
messages there.

SQLite: `messages_fts`, an FTS5 table over messages.content (external content: it
stores only the index, and reads the text from messages by rowid), filled from the
messages there ('rebuild') and kept in step by triggers on INSERT, UPDATE of content
and DELETE. The rowid ties the two, and messages has no INTEGER PRIMARY KEY to keep
it: a later migration that makes SQLite copy the table (batch mode's recreate) must
drop the triggers first, create them again after and rebuild, as upgrade() does here,
and a VACUUM of the file, which may renumber rowids, must be followed by a rebuild.

None of this is in the models: app.messenger.search.is_search_object names it, for
autogenerate (alembic/env.py) and the models-versus-migrations test.
"""

import re
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from app.config import Settings

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_UPGRADE = (
    "CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', "
    "content_rowid='rowid', tokenize='porter unicode61 remove_diacritics 2')",
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content); END",
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, content) "
    "VALUES ('delete', old.rowid, old.content); END",
    "CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, content) "
    "VALUES ('delete', old.rowid, old.content); "
    "INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content); END",
)
SQLITE_DOWNGRADE = (
    "DROP TRIGGER IF EXISTS messages_fts_update",
    "DROP TRIGGER IF EXISTS messages_fts_delete",
    "DROP TRIGGER IF EXISTS messages_fts_insert",
    "DROP TABLE IF EXISTS messages_fts",
)

# A search for a common word goes through the caller's conversations rather than the GIN
# index (which would hand back every message in the database that holds the word). The
# vectors of short messages (nearly all of them) are copied into an index kept in
# conversation order, so that walk reads a few index pages per conversation instead of
# one heap page per message; a longer message's vector could pass a btree entry's size
# limit (about 2.7 kB), so those few are found through an index of their own and read
# from the table. The vector of 200 characters stays under 1.8 kB (the worst found:
# hyphenated 4-byte characters, indexed as each part and as the whole word), with room
# left. The queries repeat `length(content) <= 200` as written here.
POSTGRES_CONVERSATION_INDEXES = (
    "CREATE INDEX ix_messages_search_short ON messages (conversation_id, seq) "
    "INCLUDE (created_at, id, search_vector) WHERE length(content) <= 200",
    "CREATE INDEX ix_messages_search_long ON messages (conversation_id) "
    "WHERE length(content) > 200",
)


def _language(conn: sa.Connection) -> str:
    """SEARCH_LANGUAGE, checked to be a configuration of this database before it goes
    into the column's definition (DDL takes no bind parameters)."""
    language = Settings().search_language
    found = conn.scalar(
        sa.text("SELECT cfgname FROM pg_ts_config WHERE cfgname = :name"), {"name": language}
    )
    if found is None or not re.fullmatch(r"[a-z_][a-z0-9_]*", language):
        raise RuntimeError(
            f"SEARCH_LANGUAGE={language!r} is not a text search configuration of this "
            "database (SELECT cfgname FROM pg_ts_config lists them)"
        )
    return language


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        for statement in SQLITE_UPGRADE:
            op.execute(statement)
        return
    language = _language(conn)
    op.execute(
        "ALTER TABLE messages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS "
        f"(to_tsvector('{language}'::regconfig, content)) STORED"
    )
    op.execute("CREATE INDEX ix_messages_search_vector ON messages USING gin (search_vector)")
    for statement in POSTGRES_CONVERSATION_INDEXES:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_DOWNGRADE:
            op.execute(statement)
        return
    op.execute("DROP INDEX IF EXISTS ix_messages_search_long")
    op.execute("DROP INDEX IF EXISTS ix_messages_search_short")
    op.execute("DROP INDEX IF EXISTS ix_messages_search_vector")
    op.execute("ALTER TABLE messages DROP COLUMN IF EXISTS search_vector")
