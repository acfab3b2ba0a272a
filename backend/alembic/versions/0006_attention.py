"""notifications that follow attention: mentions, notify levels, user notification
settings, delayed pushes, clearing, and the push decision log

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from app.db import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("notify", sa.String(length=16), server_default="all", nullable=False)
        )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mentions", sa.JSON(), nullable=True))
    with op.batch_alter_table("push_jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("after_delay", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("push_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("conversation_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cleared_at", UTCDateTime(), nullable=True))
        batch_op.create_index(
            "ix_push_attempts_user_conversation", ["user_id", "conversation_id"], unique=False
        )
    op.create_table(
        "notification_settings",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("time_zone", sa.String(length=64), server_default="UTC", nullable=False),
        sa.Column("quiet_start", sa.String(length=5), nullable=True),
        sa.Column("quiet_end", sa.String(length=5), nullable=True),
        sa.Column("quiet_allow_mentions", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("push_delay_seconds", sa.Integer(), server_default="0", nullable=False),
        sa.Column("preview", sa.String(length=8), server_default="full", nullable=False),
        sa.Column("locale", sa.String(length=16), server_default="en", nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "push_decisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=24), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_push_decisions_user", "push_decisions", ["user_id", "id"], unique=False)
    op.create_index(
        op.f("ix_push_decisions_created_at"), "push_decisions", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_push_decisions_created_at"), table_name="push_decisions")
    op.drop_index("ix_push_decisions_user", table_name="push_decisions")
    op.drop_table("push_decisions")
    op.drop_table("notification_settings")
    with op.batch_alter_table("push_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_push_attempts_user_conversation")
        batch_op.drop_column("cleared_at")
        batch_op.drop_column("seq")
        batch_op.drop_column("conversation_id")
    with op.batch_alter_table("push_jobs", schema=None) as batch_op:
        batch_op.drop_column("after_delay")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("mentions")
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.drop_column("notify")
