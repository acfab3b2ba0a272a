"""scheduled messages and reminders

Revision ID: 0016
Revises: 0015

Both are durable timers: a row per timer, found by (status, due time) and claimed by
the node that sends it (claimed_by, lease_until: a node that dies holding one has it
taken over once its lease runs out). `scheduled_messages.client_msg_id` is the client's,
so scheduling again with it answers the first; the message sent is written with the
client_msg_id "scheduled:<id>", so sending it twice is a repeat, never a second message.
"""

from collections.abc import Sequence

import sqlalchemy as sa

import app.db
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scheduled_messages",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("sender_id", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("client_msg_id", sa.String(length=128), nullable=True),
        sa.Column("reply_to", sa.String(length=36), nullable=True),
        sa.Column("send_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("error", sa.String(length=200), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_scheduled_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sender_id"],
            ["users.id"],
            name=op.f("fk_scheduled_messages_sender_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduled_messages")),
        sa.UniqueConstraint(
            "conversation_id",
            "sender_id",
            "client_msg_id",
            name=op.f("uq_scheduled_messages_conversation_id_sender_id_client_msg_id"),
        ),
    )
    with op.batch_alter_table("scheduled_messages", schema=None) as batch_op:
        batch_op.create_index("ix_scheduled_messages_due", ["status", "send_at"], unique=False)
        batch_op.create_index("ix_scheduled_messages_sender", ["sender_id", "status"], unique=False)
    op.create_table(
        "reminders",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("remind_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("fired_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_reminders_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_reminders_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_reminders_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reminders")),
    )
    with op.batch_alter_table("reminders", schema=None) as batch_op:
        batch_op.create_index("ix_reminders_due", ["status", "remind_at"], unique=False)
        batch_op.create_index("ix_reminders_user", ["user_id", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_reminders_message_id"), ["message_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reminders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reminders_message_id"))
        batch_op.drop_index("ix_reminders_user")
        batch_op.drop_index("ix_reminders_due")
    op.drop_table("reminders")
    with op.batch_alter_table("scheduled_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_scheduled_messages_sender")
        batch_op.drop_index("ix_scheduled_messages_due")
    op.drop_table("scheduled_messages")
