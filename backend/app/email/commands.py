"""The operator's email commands (app.cli): a digest pass now, and a test email."""

from __future__ import annotations

import sys

from sqlalchemy import select

from app.config import Settings
from app.db import make_engine
from app.email.digests import run_digests
from app.email.mailer import Mailer
from app.email.verification import send_test_email
from app.models import NotificationSettings, User


async def email_digests_now(settings: Settings) -> int:
    """One digest pass treating every period as due (`make email-digests`)."""
    mailer = Mailer(settings)
    if not mailer.configured:
        print("email is off: set SMTP_HOST and EMAIL_FROM", file=sys.stderr)
        return 1
    engine = make_engine(settings.effective_database_url)
    try:
        report = await run_digests(engine, settings, mailer, force=True)
    finally:
        await engine.dispose()
    if not report.ran:
        print("another node is running the digests; nothing done")
        return 0
    print(
        f"{report.sent} digests sent, {report.empty} with nothing new, {report.quiet} in quiet "
        f"hours, {report.bounced} bounced, {report.failed} failed, {report.unknown} unknown"
    )
    if report.aborted:
        print(f"stopped early: {report.aborted}", file=sys.stderr)
    return 1 if report.failed or report.aborted else 0


async def send_test_email_to_user(settings: Settings, to: str) -> int:
    """Send a test email to a user's address (`make test-email TO=alice`)."""
    if not Mailer(settings).configured:
        print("email is off: set SMTP_HOST and EMAIL_FROM", file=sys.stderr)
        return 1
    engine = make_engine(settings.effective_database_url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(NotificationSettings.email, NotificationSettings.locale)
                    .join(User, User.id == NotificationSettings.user_id)
                    .where(User.username == to.strip().lower())
                )
            ).one_or_none()
    finally:
        await engine.dispose()
    if row is None or row.email is None:
        print(f"user {to!r} has no email address", file=sys.stderr)
        return 1
    result = await send_test_email(settings, row.email, row.locale)
    print(f"{result.outcome} after {result.attempts} attempt(s) {result.code or ''}".rstrip())
    return 0 if result.outcome == "sent" else 1
