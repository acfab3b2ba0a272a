"""bots: bot accounts, their tokens, and incoming webhooks

Revision ID: 0018
Revises: 0017

`users.is_bot` marks a bot, `users.bot_owner_id` the user who runs it (a deleted bot
keeps its row with no owner, so its messages still name it); a bot has no password, so
`users.password_hash` may be null. `bot_tokens` holds each bot token's SHA-256 (the
secret is 32 random bytes: a fast hash is enough, nothing to guess), revoked rather than
deleted so every node's sockets can learn of the revocation. `incoming_webhooks` holds
each webhook's conversation, the bot it posts as, and the SHA-256 of its URL's secret.

Deleting a user who runs bots sets their bots' `bot_owner_id` to null (not a cascade:
the bots' rows, and so their messages, stay), which is what a deleted bot looks like:
its tokens no longer verify (app/bot_tokens.py).

The downgrade is lossy: `bot_tokens` and `incoming_webhooks` are dropped (every bot
token and webhook URL stops working for good, an upgrade does not bring them back), and
bots stay as ordinary accounts with no owner that nobody can log into.
"""

from collections.abc import Sequence

import sqlalchemy as sa

import app.db
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("is_bot", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("bot_owner_id", sa.Integer(), nullable=True))
        batch_op.alter_column("password_hash", existing_type=sa.String(length=255), nullable=True)
        batch_op.create_index(batch_op.f("ix_users_bot_owner_id"), ["bot_owner_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_users_bot_owner_id_users"),
            "users",
            ["bot_owner_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_table(
        "bot_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("bot_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["bot_id"], ["users.id"], name=op.f("fk_bot_tokens_bot_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bot_tokens")),
    )
    with op.batch_alter_table("bot_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bot_tokens_bot_id"), ["bot_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_bot_tokens_revoked_at"), ["revoked_at"], unique=False)
    op.create_table(
        "incoming_webhooks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("bot_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["bot_id"],
            ["users.id"],
            name=op.f("fk_incoming_webhooks_bot_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_incoming_webhooks_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_incoming_webhooks_created_by_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incoming_webhooks")),
    )
    with op.batch_alter_table("incoming_webhooks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_incoming_webhooks_conversation_id"), ["conversation_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("incoming_webhooks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_incoming_webhooks_conversation_id"))
    op.drop_table("incoming_webhooks")
    with op.batch_alter_table("bot_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bot_tokens_revoked_at"))
        batch_op.drop_index(batch_op.f("ix_bot_tokens_bot_id"))
    op.drop_table("bot_tokens")
    # Bots stay (their messages name them) as accounts nobody can log into: "!" is no
    # argon2 hash, so every password fails against it.
    op.execute("UPDATE users SET password_hash = '!' WHERE password_hash IS NULL")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_users_bot_owner_id_users"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_users_bot_owner_id"))
        batch_op.alter_column("password_hash", existing_type=sa.String(length=255), nullable=False)
        batch_op.drop_column("bot_owner_id")
        batch_op.drop_column("is_bot")
