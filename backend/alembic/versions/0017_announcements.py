"""announcements: admin broadcasts and their delivery jobs

Revision ID: 0017
Revises: 0016

One row per announcement, which is also its durable delivery job: the node working it
holds a lease (claimed_by, lease_until) and advances `cursor` (the last user id done)
with the counters in each chunk's transaction, so a node taking over resumes after the
last committed chunk. Each recipient's "Announcements" conversation is an ordinary
conversations row of type `announcement` (direct_key "announcement:<user id>" keeps
it one per user), so no column changes there.

Push jobs gain `announcement_id`: an announcement's pushes stay in the low-priority lane
whichever node takes their job up, and the announcement waits for them before its counts
are final. Messages gain a partial index on the announcements' client_msg_id, so the
pushed count finds an announcement's messages without scanning the table.
"""

from collections.abc import Sequence

import sqlalchemy as sa

import app.db
from alembic import op

# Written out here (not imported from the models): a migration stays as it was written.
ANNOUNCEMENT_MESSAGES = "client_msg_id LIKE 'announcement:%'"

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "announcements",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("audience", sa.String(length=8), nullable=False),
        sa.Column("user_ids", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="sending", nullable=False),
        sa.Column("recipients", sa.Integer(), server_default="0", nullable=False),
        sa.Column("delivered_live", sa.Integer(), server_default="0", nullable=False),
        sa.Column("pushed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cursor", sa.Integer(), server_default="0", nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_announcements_created_by_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_announcements")),
    )
    with op.batch_alter_table("announcements", schema=None) as batch_op:
        batch_op.create_index("ix_announcements_status", ["status", "lease_until"], unique=False)
        batch_op.create_index(
            "ix_announcements_created_by", ["created_by", "created_at"], unique=False
        )
    with op.batch_alter_table("push_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("announcement_id", sa.String(length=36), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_push_jobs_announcement_id"), ["announcement_id"], unique=False
        )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messages_announcement",
            ["client_msg_id"],
            unique=False,
            postgresql_where=sa.text(ANNOUNCEMENT_MESSAGES),
            sqlite_where=sa.text(ANNOUNCEMENT_MESSAGES),
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_announcement")
    with op.batch_alter_table("push_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_push_jobs_announcement_id"))
        batch_op.drop_column("announcement_id")
    with op.batch_alter_table("announcements", schema=None) as batch_op:
        batch_op.drop_index("ix_announcements_created_by")
        batch_op.drop_index("ix_announcements_status")
    op.drop_table("announcements")
