"""Speaking SMTP: one connection reused for many emails, TLS (STARTTLS, or implicit on
port 465) and auth as set, transient failures retried with backoff, permanent ones
reported, never retried.

Outcomes of one email:
- "sent": accepted.
- "bounced": the server refused the recipient as an address (550/551/553, or enhanced
  5.1.x / 5.2.1): the address does not take mail, so digests to it stop.
- "relay": a refusal that says nothing of the address but of us (relay denied, auth,
  sender refused, no STARTTLS): every other email would meet it too, so a digest pass
  stops and no address is blamed.
- "unreachable": every attempt failed to connect (or to set the session up).
- "unknown": the connection broke after DATA was sent: the email may have been
  delivered. Never retried (that could deliver it twice), never given back.
- "failed": any other permanent refusal (a 5xx to the message itself), or the retries
  ran out; nothing was accepted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
from dataclasses import dataclass
from typing import Literal

import aiosmtplib

from app.config import Settings

log = logging.getLogger(__name__)

Outcome = Literal["sent", "bounced", "relay", "unreachable", "unknown", "failed"]
# Outcomes after which a digest pass stops: the next email would fare the same.
ABORTING: frozenset[str] = frozenset({"relay", "unreachable"})
_ENHANCED = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_ADDRESS_CODES = (550, 551, 553)


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    attempts: int
    code: int | None = None
    detail: str = ""
    # Attempts that failed before the session was up (connect, TLS, login).
    connect_failures: int = 0


class _Transient(Exception):
    def __init__(self, code: int | None, detail: str, reconnect: bool) -> None:
        super().__init__(detail)
        self.code, self.detail, self.reconnect = code, detail, reconnect


class _Permanent(Exception):
    def __init__(self, outcome: Outcome, code: int | None, detail: str) -> None:
        super().__init__(detail)
        self.outcome, self.code, self.detail = outcome, code, detail


class _DataSent(Exception):
    """The connection failed after DATA went out: delivery unknown."""


def _short(text: str) -> str:
    """The server's words, one line, without the address it may echo: they are logged
    and shown to the user."""
    words = ("<address>" if "@" in word else word for word in text.split())
    return " ".join(words)[:160]


def recipient_verdict(code: int, message: str) -> Outcome:
    """What a 5xx to RCPT says: the address is bad ("bounced"), the message or mailbox
    cannot take it now ("failed"), or the server will not relay for us ("relay")."""
    enhanced = _ENHANCED.match(message)
    if enhanced is not None:
        subject, detail = enhanced.group(2), enhanced.group(3)
        if subject == "1" or (subject, detail) == ("2", "1"):
            return "bounced"
        return "failed" if subject == "2" else "relay"
    if code in _ADDRESS_CODES:
        return "bounced"
    return "failed" if code == 552 else "relay"


def _classify(exc: Exception) -> _Transient | _Permanent:
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        if exc.code >= 500:
            verdict = recipient_verdict(exc.code, exc.message)
            return _Permanent(verdict, exc.code, _short(exc.message))
        return _Transient(exc.code, _short(exc.message), reconnect=False)
    if isinstance(exc, aiosmtplib.SMTPSenderRefused | aiosmtplib.SMTPAuthenticationError):
        if exc.code >= 500:
            return _Permanent("relay", exc.code, _short(exc.message))
        return _Transient(exc.code, _short(exc.message), reconnect=True)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(
        exc, aiosmtplib.SMTPServerDisconnected
    ):
        if exc.code >= 500:
            return _Permanent("failed", exc.code, _short(exc.message))
        return _Transient(exc.code, _short(exc.message), reconnect=True)
    # Disconnects, timeouts, refused connections, TLS trouble: try again on a new one.
    return _Transient(None, _short(f"{type(exc).__name__}: {exc}"), reconnect=True)


class Mailer:
    """Builds connections to the configured SMTP server; one per sending worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def configured(self) -> bool:
        return bool(self.settings.smtp_host and self.settings.email_from)

    def connection(self) -> MailConnection:
        return MailConnection(self.settings)

    async def send_one(self, to: str, message: bytes) -> SendResult:
        """One email on a connection of its own (verification and test emails)."""
        async with self.connection() as conn:
            return await conn.send(to, message)


class MailConnection:
    """One SMTP session, opened on first use and again after a failure broke it."""

    def __init__(self, settings: Settings) -> None:
        self._s = settings
        self._smtp: aiosmtplib.SMTP | None = None
        # Whether the current (or last) email's DATA command went out: from then on a
        # broken connection may still have delivered it.
        self.data_sent = False

    async def __aenter__(self) -> MailConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._drop(polite=True)

    async def _open(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        s = self._s
        context: ssl.SSLContext | None = None
        if s.smtp_starttls or s.smtp_tls:
            context = ssl.create_default_context(cafile=s.smtp_ca_file or None)
        smtp = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            timeout=s.smtp_timeout_seconds,
            use_tls=s.smtp_tls,
            # STARTTLS when set is required, not merely tried: a server (or someone in
            # between) that does not offer it gets no password and no mail.
            start_tls=s.smtp_starttls and not s.smtp_tls,
            tls_context=context,
        )
        try:
            await smtp.connect()
            if s.smtp_username:
                await smtp.login(s.smtp_username, s.smtp_password)
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        return smtp

    async def _drop(self, polite: bool = False) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if polite and smtp.is_connected:
                await smtp.quit()
            else:
                smtp.close()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()

    def _backoff(self, attempt: int) -> float:
        s = self._s
        delay = min(s.email_backoff_max_seconds, s.email_backoff_base_seconds * 2 ** (attempt - 1))
        return float(delay * random.uniform(0.5, 1.0))

    async def _transaction(self, smtp: aiosmtplib.SMTP, to: str, message: bytes) -> None:
        """MAIL, RCPT, DATA; _DataSent when the connection failed once DATA was sent."""
        await smtp.mail(self._s.email_from)
        try:
            await smtp.rcpt(to)
        except aiosmtplib.SMTPRecipientRefused:
            # The session stays usable for the next email once the transaction is reset.
            try:
                await smtp.rset()
            except (aiosmtplib.SMTPException, OSError):
                await self._drop()
            raise
        self.data_sent = True
        try:
            await smtp.data(message)
        except aiosmtplib.SMTPResponseException:
            raise  # a reply: the server refused the message, it was not delivered
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise _DataSent(f"{type(exc).__name__}: {exc}") from exc

    async def send(self, to: str, message: bytes) -> SendResult:
        attempts = connect_failures = 0
        last: _Transient | None = None
        self.data_sent = False
        while attempts < self._s.email_max_attempts:
            attempts += 1
            opened = False
            try:
                smtp = await self._open()
                opened = True
                await self._transaction(smtp, to, message)
                return SendResult("sent", attempts, connect_failures=connect_failures)
            except _DataSent as exc:
                await self._drop()
                return SendResult("unknown", attempts, None, _short(str(exc)))
            except aiosmtplib.SMTPException as exc:
                if not opened and not isinstance(exc, aiosmtplib.SMTPResponseException):
                    if not isinstance(exc, OSError | aiosmtplib.SMTPTimeoutError):
                        # The session could not be set up as required (no STARTTLS):
                        # the same on every try.
                        return SendResult("relay", attempts, None, _short(str(exc)))
                verdict = _classify(exc)
            except (OSError, TimeoutError) as exc:
                verdict = _classify(exc)
            if isinstance(verdict, _Permanent):
                # Refused before any email was offered (greeting, login): not the address.
                outcome = verdict.outcome if opened else "relay"
                return SendResult(outcome, attempts, verdict.code, verdict.detail)
            last = verdict
            if not opened:
                connect_failures += 1
            if verdict.reconnect:
                await self._drop()
            if attempts < self._s.email_max_attempts:
                delay = self._backoff(attempts)
                log.info(
                    "email retry attempt=%d code=%s delay=%.1f detail=%s",
                    attempts,
                    verdict.code,
                    delay,
                    verdict.detail,
                )
                await asyncio.sleep(delay)
        assert last is not None
        final: Outcome = "unreachable" if connect_failures == attempts else "failed"
        return SendResult(final, attempts, last.code, last.detail, connect_failures)
