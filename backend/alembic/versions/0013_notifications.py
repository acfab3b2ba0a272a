"""notification history: one notification per user and message, and its opens

Revision ID: 0013
Revises: 0012

`notifications` is what a user was notified of: one row per (user, message) however
many devices were pushed (their deliveries are the push_attempts that carry its id),
and one per test push. `opened_at` and `opened_how` say when and how the user opened
it; `dismissed_at` that they cleared it from the notification centre.
"""

from collections.abc import Sequence

import sqlalchemy as sa

import app.db
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=True),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("opened_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("opened_how", sa.String(length=16), nullable=True),
        sa.Column("dismissed_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_notifications_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint(
            "user_id", "message_id", name=op.f("uq_notifications_user_id_message_id")
        ),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index("ix_notifications_user_created", ["user_id", "created_at"])
        batch_op.create_index(batch_op.f("ix_notifications_created_at"), ["created_at"])
    op.add_column(
        "push_attempts", sa.Column("notification_id", sa.String(length=36), nullable=True)
    )
    op.create_index(
        "ix_push_attempts_notification", "push_attempts", ["notification_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_push_attempts_notification", table_name="push_attempts")
    op.execute("ALTER TABLE push_attempts DROP COLUMN notification_id")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_created_at"))
        batch_op.drop_index("ix_notifications_user_created")
    op.drop_table("notifications")
