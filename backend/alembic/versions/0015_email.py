"""email addresses, verification and missed-message digests

Revision ID: 0015
Revises: 0014

A user's email address lives with their notification settings: the address, when a
link sent to it was followed (digests go only to verified addresses), the digest
period, and why digests were turned off by the mail server (a permanent bounce).
`email_set_at` is when the address was set (its verification link names it, so a link
to an earlier setting of the same address stops working), `email_verification_error`
why the last verification email did not get through.
`next_digest_at` is the schedule (the node that claims a due row sends that period's
email) and `digest_covered_until` the cursor: messages created up to it were covered by
an earlier digest (or predate digests being turned on) and are never mailed again.
"""

from collections.abc import Sequence

import sqlalchemy as sa

import app.db
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notification_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email", sa.String(length=254), nullable=True))
        batch_op.add_column(
            sa.Column("email_verified_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("email_digest", sa.String(length=8), server_default="off", nullable=False)
        )
        batch_op.add_column(
            sa.Column("email_disabled_reason", sa.String(length=200), nullable=True)
        )
        batch_op.add_column(
            sa.Column("email_disabled_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("email_set_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("email_verification_error", sa.String(length=200), nullable=True)
        )
        batch_op.add_column(
            sa.Column("next_digest_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("digest_covered_until", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            batch_op.f("ix_notification_settings_next_digest_at"), ["next_digest_at"]
        )


def downgrade() -> None:
    with op.batch_alter_table("notification_settings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notification_settings_next_digest_at"))
        batch_op.drop_column("digest_covered_until")
        batch_op.drop_column("next_digest_at")
        batch_op.drop_column("email_verification_error")
        batch_op.drop_column("email_set_at")
        batch_op.drop_column("email_disabled_at")
        batch_op.drop_column("email_disabled_reason")
        batch_op.drop_column("email_digest")
        batch_op.drop_column("email_verified_at")
        batch_op.drop_column("email")
