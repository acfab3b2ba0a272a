"""devices remember the session that registered them, so ending a session switches
its devices off

Revision ID: 0008
Revises: 0007

Devices already registered get no session (NULL): they stay active as they are, and
their action tokens are checked against the device alone, until the device is
registered again from a session. No foreign key: a session row is deleted by the
cleanup long after it ended, and its devices were switched off when it did.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("device_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_id", sa.String(length=36), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_device_tokens_session_id"), ["session_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("device_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_tokens_session_id"))
        batch_op.drop_column("session_id")
