"""Sending the verification link of a newly set address, and the operator's test email.

A link is sent in the background (the settings PUT never waits on the mail server).
Setting an address is the one way a user makes the node email someone, so it is
bounded three ways: per user (EMAIL_VERIFICATION_RATE_PER_HOUR), per target address
whoever asks (EMAIL_VERIFICATION_PER_ADDRESS_PER_DAY, keyed on a hash of it: many
accounts cannot flood one mailbox), and for the whole node
(EMAIL_VERIFICATION_GLOBAL_PER_HOUR). A send the mail server refused is recorded
(`email_verification_error`), so the app can say so and offer to send it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.email import texts
from app.email.compose import domain_of, notice_email
from app.email.links import verify_url
from app.email.mailer import Mailer, SendResult
from app.models import NotificationSettings
from app.ratelimit import RateLimiter, too_many_requests

log = logging.getLogger(__name__)
_s = NotificationSettings.__table__
_DAY = 24 * 3600


def address_bucket(email: str) -> str:
    """The rate limiter's key of a target address: a hash, so no address is kept there."""
    digest = hashlib.sha256(email.lower().encode()).hexdigest()[:32]
    return f"email-verify-to:{digest}"


class Verifications:
    def __init__(
        self, settings: Settings, mailer: Mailer, limiter: RateLimiter, engine: AsyncEngine
    ) -> None:
        self._settings = settings
        self._mailer = mailer
        self._limiter = limiter
        self._engine = engine
        self._tasks: set[asyncio.Task[None]] = set()

    async def check_rate(self, user_id: int, email: str | None) -> None:
        """Take one verification email of the user's, the address's and the node's
        buckets; ApiError 429 (with Retry-After) when one of them is empty."""
        s = self._settings
        buckets = (
            (f"email-verify:{user_id}", s.email_verification_rate_per_hour / 3600, None),
            (
                address_bucket(email or ""),
                s.email_verification_per_address_per_day / _DAY,
                s.email_verification_per_address_per_day,
            ),
            (
                "email-verify-all",
                s.email_verification_global_per_hour / 3600,
                max(1, int(s.email_verification_global_per_hour)),
            ),
        )
        for key, rate, burst in buckets:
            retry_after = await self._limiter.hit(
                key, rate, s.email_verification_burst if burst is None else burst
            )
            if retry_after > 0:
                log.info("verification email refused user=%d bucket=%s", user_id, key[:20])
                raise too_many_requests(retry_after, "too many verification emails; try later")

    def send_link(self, user_id: int, email: str, locale: str) -> None:
        """Email the verification link, in the background."""
        if not self._mailer.configured:
            log.warning("email is off: verification link not sent user=%d", user_id)
            return
        task = asyncio.create_task(self._send(user_id, email, locale), name="email-verify")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, user_id: int, email: str, locale: str) -> None:
        s = self._settings
        async with self._engine.connect() as conn:
            set_at = await conn.scalar(
                select(_s.c.email_set_at).where(_s.c.user_id == user_id, _s.c.email == email)
            )
        if set_at is None:
            log.info("verification email skipped: address changed since user=%d", user_id)
            return
        message = notice_email(
            sender=s.email_from,
            to=email,
            subject=texts.text(locale, "verify_subject"),
            body=texts.text(locale, "verify_body"),
            url=verify_url(s, user_id, email, set_at),
            footer=texts.text(locale, "verify_ignore"),
            message_id=f"<verify.{user_id}.{secrets.token_hex(8)}@{domain_of(s.email_from)}>",
            locale=locale,
        )
        try:
            result = await self._mailer.send_one(email, message)
        except Exception:
            log.exception("verification email failed user=%d", user_id)
            result = SendResult("failed", 0, None, "error")
        log.info(
            "verification email %s user=%d attempts=%d code=%s",
            result.outcome,
            user_id,
            result.attempts,
            result.code,
        )
        if result.outcome != "sent":
            await self._record_failure(user_id, email, set_at, result)

    async def _record_failure(
        self, user_id: int, email: str, set_at: object, result: SendResult
    ) -> None:
        """Say why in the user's settings, for this very setting of the address only."""
        if result.outcome == "bounced":
            reason = f"{result.code or ''} {result.detail}".strip()
        elif result.outcome == "unknown":
            reason = "the mail server did not confirm it"
        else:
            reason = "the mail server could not be reached or refused it; try again later"
        async with self._engine.begin() as conn:
            await conn.execute(
                update(_s)
                .where(
                    _s.c.user_id == user_id,
                    _s.c.email == email,
                    _s.c.email_set_at == set_at,
                    _s.c.email_verified_at.is_(None),
                )
                .values(email_verification_error=reason[:200])
            )

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def send_test_email(settings: Settings, to: str, locale: str) -> SendResult:
    """The operator's check that mail leaves the node and arrives (make test-email)."""
    message = notice_email(
        sender=settings.email_from,
        to=to,
        subject=texts.text(locale, "test_subject"),
        body=texts.text(locale, "test_body"),
        url=settings.public_base_url,
        footer=None,
        message_id=f"<test.{secrets.token_hex(8)}@{domain_of(settings.email_from)}>",
        locale=locale,
    )
    return await Mailer(settings).send_one(to, message)
