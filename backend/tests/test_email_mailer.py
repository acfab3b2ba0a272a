"""Speaking SMTP to a real server on loopback: which refusals blame the address and
which the relay, a 5xx to the message itself, a connection cut after DATA (never sent
again), a server without STARTTLS (no password sent), a password over plaintext refused
at start, and the password never logged."""

from __future__ import annotations

import logging
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, Settings
from app.email.address import normalise_email, same_address
from app.email.compose import DigestEntry, digest_email
from app.email.mailer import Mailer, recipient_verdict
from tests.email_smtp import PASSWORD, SmtpServer, start_smtp_server
from tests.helpers import make_settings

pytest_plugins = ["tests.email_fixtures"]

MESSAGE = b"Subject: hi\r\nFrom: noreply@messenger.test\r\n\r\nhello\r\n"


def mailer(server: SmtpServer, **overrides: Any) -> Mailer:
    return Mailer(
        make_settings("sqlite+aiosqlite:///:memory:", **{**server.settings(), **overrides})
    )


def test_addresses_with_line_breaks_or_controls_are_refused() -> None:
    for bad in ["a\n@example.com", "a@example.com\n", "a@example.com\r", "a\t@example.com"]:
        assert normalise_email(bad) is None, repr(bad)
    assert normalise_email("Ana@Example.COM") == "Ana@example.com"
    assert same_address("Ana@example.com", "ana@example.com")
    assert not same_address("ana@example.com", "ana2@example.com")
    assert not same_address(None, "ana@example.com") and same_address(None, None)


def test_which_rcpt_refusals_blame_the_address() -> None:
    assert recipient_verdict(550, "mailbox unavailable") == "bounced"
    assert recipient_verdict(551, "user not local") == "bounced"
    assert recipient_verdict(553, "mailbox name not allowed") == "bounced"
    assert recipient_verdict(550, "5.1.1 user unknown") == "bounced"
    assert recipient_verdict(554, "5.2.1 mailbox disabled") == "bounced"
    assert recipient_verdict(550, "5.7.1 relaying denied") == "relay"
    assert recipient_verdict(554, "transaction failed") == "relay"
    assert recipient_verdict(530, "5.7.0 authentication required") == "relay"
    assert recipient_verdict(552, "5.2.2 mailbox full") == "failed"


async def test_relay_refusal_is_not_a_bounce(smtp: SmtpServer) -> None:
    address = "relay-denied@example.com"
    smtp.sink.fail[address] = [550]
    smtp.sink.fail_text[address] = "5.7.1 relaying denied"
    result = await mailer(smtp).send_one(address, MESSAGE)
    assert (result.outcome, result.code) == ("relay", 550)
    smtp.sink.fail[address] = [554]
    smtp.sink.fail_text[address] = "no such thing"
    assert (await mailer(smtp).send_one(address, MESSAGE)).outcome == "relay"


async def test_rcpt_4xx_then_accepted(smtp: SmtpServer) -> None:
    address = "busy@example.com"
    smtp.sink.fail[address] = [451]
    result = await mailer(smtp).send_one(address, MESSAGE)
    assert (result.outcome, result.attempts) == ("sent", 2)
    assert smtp.sink.rcpt_attempts[address] == 2 and len(smtp.sink.to(address)) == 1


async def test_5xx_to_the_message_fails_without_retry(smtp: SmtpServer) -> None:
    address = "content-refused@example.com"
    smtp.sink.fail_data[address] = 554
    result = await mailer(smtp).send_one(address, MESSAGE)
    assert (result.outcome, result.code, result.attempts) == ("failed", 554, 1)


async def test_cut_after_data_is_unknown_and_not_retried(smtp: SmtpServer) -> None:
    address = "lost-answer@example.com"
    smtp.sink.drop_data.add(address)
    result = await mailer(smtp).send_one(address, MESSAGE)
    assert (result.outcome, result.attempts) == ("unknown", 1)
    assert smtp.sink.rcpt_attempts[address] == 1 and len(smtp.sink.to(address)) == 1


async def test_no_starttls_no_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain = start_smtp_server(tmp_path, starttls=False)
    try:
        result = await mailer(plain).send_one("x@example.com", MESSAGE)
    finally:
        plain.stop()
    assert result.outcome == "relay" and "STARTTLS" in result.detail
    assert result.attempts == 1 and plain.sink.auth_attempts == 0
    assert plain.sink.received == []
    assert PASSWORD not in caplog.text


async def test_password_never_logged(
    smtp: SmtpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A refused password too: whatever the server answers, neither password is logged.
    wrong = mailer(
        smtp, smtp_password="wrong-secret-1234", smtp_timeout_seconds=1, email_max_attempts=1
    )
    result = await wrong.send_one("x@example.com", MESSAGE)
    assert result.outcome != "sent" and smtp.sink.to("x@example.com") == []
    assert (await mailer(smtp).send_one("fine@example.com", MESSAGE)).outcome == "sent"
    assert "wrong-secret-1234" not in caplog.text and PASSWORD not in caplog.text
    assert "wrong-secret-1234" not in repr(wrong.settings)


def test_password_over_plaintext_refused_at_start() -> None:
    base = {"smtp_host": "mail.test", "smtp_username": "u", "smtp_password": "p"}
    with pytest.raises(ConfigError, match="SMTP_ALLOW_PLAINTEXT_AUTH"):
        Settings(_env_file=None, **base, smtp_starttls=False)
    assert Settings(_env_file=None, **base, smtp_starttls=False, smtp_tls=True).smtp_tls
    assert Settings(
        _env_file=None, **base, smtp_starttls=False, smtp_allow_plaintext_auth=True
    ).smtp_allow_plaintext_auth
    assert Settings(_env_file=None, smtp_host="mail.test", smtp_starttls=False).smtp_host


def plain(raw: bytes) -> str:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def test_attachment_only_and_sender_preview() -> None:
    common: dict[str, Any] = {
        "sender": "noreply@messenger.test",
        "to": "ana@example.com",
        "user_id": 1,
        "period": "p",
        "locale": "en",
        "base_url": "http://h",
        "unsubscribe_url": "http://h/u",
    }
    photo = [{"name": "a.jpg", "content_type": "image/jpeg", "thumbnail_url": "/t/1"}]
    pdf = [{"name": "report.pdf", "content_type": "application/pdf"}]
    entries = [
        DigestEntry("c1", None, "Bea", "", 1, photo),
        DigestEntry("c2", "Team", "Cid", "", 1, pdf),
    ]
    text = plain(digest_email(**common, entries=entries, preview_mode="full"))
    assert "Photo" in text and "File: report.pdf" in text
    long_name = "N" * 300
    sender = plain(
        digest_email(
            **common,
            entries=[DigestEntry("c3", "T", long_name, "secret words", 2)],
            preview_mode="sender",
        )
    )
    assert "secret words" not in sender and "2 new messages" in sender
    assert "N" * 119 in sender and "N" * 121 not in sender
