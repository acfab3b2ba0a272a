"""attachments: uploads sent with messages, and their thumbnails

Revision ID: 0012
Revises: 0011

`messages.attachments` is what clients are shown of a message's files (a list of
upload descriptions, in the order sent; NULL: none), kept on the message so that a
history page needs no join. `uploads.message_id` and `uploads.conversation_id` say
which message an upload was sent with (once only): who may download it, and what
the cleanup removes when the message is deleted. An upload never sent keeps NULL and
goes after a day. `thumbnail_key` names a stored thumbnail of an image.

The columns are added and dropped in place (ALTER TABLE ... DROP COLUMN on SQLite too),
as in 0009.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("attachments", sa.JSON(), nullable=True))
    op.add_column("uploads", sa.Column("message_id", sa.String(length=36), nullable=True))
    op.add_column("uploads", sa.Column("conversation_id", sa.String(length=36), nullable=True))
    op.add_column("uploads", sa.Column("thumbnail_key", sa.String(length=255), nullable=True))
    op.add_column("uploads", sa.Column("thumbnail_width", sa.Integer(), nullable=True))
    op.add_column("uploads", sa.Column("thumbnail_height", sa.Integer(), nullable=True))
    op.add_column(
        "uploads",
        sa.Column("animated", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.create_index(op.f("ix_uploads_message_id"), "uploads", ["message_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_uploads_message_id"), table_name="uploads")
    for column in (
        "animated",
        "thumbnail_height",
        "thumbnail_width",
        "thumbnail_key",
        "conversation_id",
        "message_id",
    ):
        op.execute(f"ALTER TABLE uploads DROP COLUMN {column}")
    op.execute("ALTER TABLE messages DROP COLUMN attachments")
