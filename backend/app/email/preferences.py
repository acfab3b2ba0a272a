"""A user's email settings as the settings PUT changes them: a new address starts
unverified (its link is sent after the commit), turning digests on starts the cursor
now (no backlog is mailed), and the schedule follows time zone and quiet hours."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.config import Settings
from app.email.address import same_address
from app.email.schedule import next_digest_at
from app.models import NotificationSettings

_s = NotificationSettings.__table__


async def apply_email_changes(
    conn: AsyncConnection,
    settings: Settings,
    user_id: int,
    given: set[str],
    email: str | None,
    digest: str | None,
    now: datetime,
) -> bool:
    """Write what the PUT names of `email` and `email_digest` (the row exists); True when
    the address is new and needs its verification link."""
    row = (await conn.execute(select(_s).where(_s.c.user_id == user_id))).one()
    values: dict[str, Any] = {}
    needs_link = False
    if "email" in given and not same_address(email, row.email):
        # Another address: old links stop working (they name the old one and when it
        # was set), the new one must be verified, and a bounce of the old one no longer
        # counts.
        values.update(
            email=email,
            email_set_at=now if email is not None else None,
            email_verified_at=None,
            email_disabled_at=None,
            email_disabled_reason=None,
            email_verification_error=None,
            digest_covered_until=None,
        )
        needs_link = email is not None
    elif "email" in given and email is not None and row.email_verified_at is None:
        # The same, still unverified address (only its case may differ, which is kept as
        # first given): send the link again, and forget why the last one failed.
        needs_link = True
        values["email_verification_error"] = None
        if row.email_set_at is None:
            values["email_set_at"] = now
    period = row.email_digest
    if digest is not None and digest != row.email_digest:
        period = values["email_digest"] = digest
        if row.email_digest == "off":
            values["digest_covered_until"] = now
        # Turned on again after a bounce: the user says the address works now.
        values.update(email_disabled_at=None, email_disabled_reason=None)
    values["next_digest_at"] = (
        None
        if period == "off"
        else next_digest_at(
            period,
            now,
            row.time_zone,
            row.quiet_start,
            row.quiet_end,
            settings.email_daily_digest_hour,
        )
    )
    await conn.execute(update(_s).where(_s.c.user_id == user_id).values(**values))
    return needs_link
