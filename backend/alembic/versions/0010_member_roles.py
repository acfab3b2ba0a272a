"""members and roles: each participant's role, and the seq they joined at

Revision ID: 0010
Revises: 0009

`participants.role` is "owner", "admin" or "member". A group's creator becomes its
owner; everyone else, and both sides of a direct conversation, are members.

`participants.joined_seq` is the conversation's last_seq when the participant joined
(read under the conversation's row lock): they see only the messages after it. Those
there before this revision joined at 0 and see everything, as they did.

The columns are added and dropped in place (ALTER TABLE ... DROP COLUMN on SQLite too),
as in 0009.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "participants",
        sa.Column("role", sa.String(length=16), server_default="member", nullable=False),
    )
    op.add_column(
        "participants",
        sa.Column("joined_seq", sa.Integer(), server_default="0", nullable=False),
    )
    op.execute(
        "UPDATE participants SET role = 'owner' WHERE EXISTS (SELECT 1 FROM conversations AS c"
        " WHERE c.id = participants.conversation_id AND c.type = 'group'"
        " AND c.created_by = participants.user_id)"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE participants DROP COLUMN joined_seq")
    op.execute("ALTER TABLE participants DROP COLUMN role")
