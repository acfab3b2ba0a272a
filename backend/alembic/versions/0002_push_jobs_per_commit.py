"""push work: one job per commit, holding its messages' ids

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa

import app.db
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOB_COLUMNS = ("created_at", "claimed_by", "lease_until")


def _lease_columns() -> list[sa.Column]:
    return [
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", app.db.UTCDateTime(timezone=True), nullable=False),
    ]


def _lease_values() -> list[sa.sql.expression.ColumnClause]:
    """The same columns, typed, to read rows with (times come back as datetimes)."""
    return [sa.column(c.name, c.type) for c in _lease_columns()]


def _replace_table(*columns: sa.schema.SchemaItem) -> sa.Table:
    """Drop push_jobs and make it again with these columns (and its lease index)."""
    with op.batch_alter_table("push_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_push_jobs_lease_until"))
    op.drop_table("push_jobs")
    table = op.create_table("push_jobs", *columns)
    with op.batch_alter_table("push_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_push_jobs_lease_until"), ["lease_until"], unique=False)
    return table


def upgrade() -> None:
    # Work still pending (a node that stopped mid-push) carries over: a job per message.
    bind = op.get_bind()
    old = sa.table("push_jobs", sa.column("message_id"), *_lease_values())
    pending = [dict(r._mapping) for r in bind.execute(sa.select(old))]
    table = _replace_table(
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("message_ids", sa.JSON(), nullable=False),
        *_lease_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_push_jobs")),
    )
    if pending:
        op.bulk_insert(
            table,
            [
                {"id": r["message_id"], "message_ids": [r["message_id"]]}
                | {c: r[c] for c in _JOB_COLUMNS}
                for r in pending
            ],
        )


def downgrade() -> None:
    bind = op.get_bind()
    new = sa.table("push_jobs", sa.column("message_ids", sa.JSON()), *_lease_values())
    pending = [dict(r._mapping) for r in bind.execute(sa.select(new))]
    table = _replace_table(
        sa.Column("message_id", sa.String(length=36), nullable=False),
        *_lease_columns(),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_push_jobs_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_push_jobs")),
    )
    rows = [
        {"message_id": m} | {c: r[c] for c in _JOB_COLUMNS}
        for r in pending
        for m in r["message_ids"]
    ]
    if rows:
        op.bulk_insert(table, rows)
