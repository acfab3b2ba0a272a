"""messages that change: edits, deletions, replies, reactions, and a change counter per
conversation for catching up on them

Revision ID: 0009
Revises: 0008

`conversations.change_seq` counts the changes to a conversation's messages (an edit, a
deletion, a reaction added or taken back); each change bumps it under the
conversation's row lock in its own transaction and stamps the message with the new
value (`messages.change_seq`, NULL for a message never changed), so a client's cursor is
that counter and `changed_after` reads the index on (conversation_id, change_seq).

`messages.reply_to` holds the id of a message of the same conversation (checked by the
send path) without a foreign key: SQLite cannot add one to an existing table without
copying it, which would renumber the rowids the search index of 0007 relies on. The
columns are added (and on SQLite dropped) in place for the same reason.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from app.db import UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGE_COLUMNS = ("change_seq", "reply_to", "deleted_at", "edited_at")


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column("change_seq", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("messages", sa.Column("edited_at", UTCDateTime(), nullable=True))
    op.add_column("messages", sa.Column("deleted_at", UTCDateTime(), nullable=True))
    op.add_column("messages", sa.Column("reply_to", sa.String(length=36), nullable=True))
    op.add_column("messages", sa.Column("change_seq", sa.Integer(), nullable=True))
    op.create_index(
        "ix_messages_changes", "messages", ["conversation_id", "change_seq"], unique=False
    )
    op.create_table(
        "message_reactions",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("emoji", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("message_id", "emoji", "user_id"),
    )


def downgrade() -> None:
    op.drop_table("message_reactions")
    op.drop_index("ix_messages_changes", table_name="messages")
    # In place on SQLite too (ALTER TABLE ... DROP COLUMN keeps rowids; see above).
    for name in MESSAGE_COLUMNS:
        op.execute(f"ALTER TABLE messages DROP COLUMN {name}")
    op.execute("ALTER TABLE conversations DROP COLUMN change_seq")
