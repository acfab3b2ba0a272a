"""admins and push statistics rollups

Revision ID: 0014
Revises: 0013

`users.is_admin` marks the operators who may read /api/v1/admin. `push_stats_daily`
holds one count per (day, kind, key, detail): pushes by provider and outcome, push
decisions by reason, commit-to-accepted and time-to-open histogram buckets,
notifications and opens, devices registered by provider (device_tokens.created_at is
indexed for it). `push_stats_days` says which days are rolled up (app/admin_stats.py
fills both). `push_attempts.accepted_at` is when the provider accepted a delivery (the
end of commit-to-accepted); (user_id, created_at, id) on push_attempts and
push_decisions serve one user's push log, newest first.
"""

from collections.abc import Sequence

import sqlalchemy as sa

import app.db
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("device_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_tokens_created_at"), ["created_at"])
    with op.batch_alter_table("push_attempts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("accepted_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            "ix_push_attempts_user_created", ["user_id", "created_at", "id"], unique=False
        )
    with op.batch_alter_table("push_decisions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_push_decisions_user_created", ["user_id", "created_at", "id"], unique=False
        )
    op.create_table(
        "push_stats_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=24), nullable=False),
        sa.Column("detail", sa.String(length=24), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "kind", "key", "detail", name=op.f("pk_push_stats_daily")),
    )
    op.create_table(
        "push_stats_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("rolled_up_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_push_stats_days")),
    )


def downgrade() -> None:
    op.drop_table("push_stats_days")
    op.drop_table("push_stats_daily")
    with op.batch_alter_table("push_decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_push_decisions_user_created")
    with op.batch_alter_table("push_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_push_attempts_user_created")
        batch_op.drop_column("accepted_at")
    with op.batch_alter_table("device_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_tokens_created_at"))
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("is_admin")
