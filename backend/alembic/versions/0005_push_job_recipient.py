"""push jobs: a re-check job names its one recipient

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("push_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recipient_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("push_jobs", schema=None) as batch_op:
        batch_op.drop_column("recipient_id")
