"""Emails as bytes ready for SMTP: multipart/alternative text and HTML rendered from
Jinja2 templates (HTML escaped), with the headers list mail needs: a stable Message-ID,
List-Unsubscribe and List-Unsubscribe-Post (RFC 8058) on digests.

Built with the standard library's compat32 MIME classes: the modern EmailMessage API
takes about ten times as long per email (its header registry parses every header it
is given), which a digest run of ten thousand emails would feel on the node's loop.
Every header value is ours or a checked address, never free text of a user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import format_datetime, parseaddr
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.db import utcnow
from app.email import texts
from app.messenger.push.notification import (
    TITLE_LENGTH,
    attachments_line,
    conversation_url,
    preview,
)
from app.messenger.push.texts import locale_of

# Headers on one line each: the unsubscribe URL (about 300 characters) is not folded
# onto a line of its own, which some clients read with the fold's space in it. Every
# header stays far below SMTP's 998.
_UNFOLDED = compat32.clone(max_line_length=0)
TEMPLATES = Path(__file__).resolve().parent / "templates"
# Conversations listed in one digest; the rest are counted.
MAX_ITEMS = 20


@cache
def _env() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        keep_trailing_newline=True,
    )


@dataclass(frozen=True, slots=True)
class DigestEntry:
    """One conversation with unread messages, as the digest query finds it."""

    conversation_id: str
    title: str | None  # a group's title; None for a direct conversation
    sender_name: str  # of its newest unread message
    content: str
    count: int
    # Its files as clients are shown them: a message of files alone says "Photo".
    attachments: list[dict[str, object]] | None = None


@dataclass(frozen=True, slots=True)
class _Item:
    heading: str
    line: str
    url: str


def domain_of(sender: str) -> str:
    return parseaddr(sender)[1].rpartition("@")[2] or "localhost"


def _message(
    sender: str,
    to: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    extra: dict[str, str] | None = None,
) -> bytes:
    msg = MIMEMultipart("alternative")
    # Encoded words only where needed (German umlauts), plain ASCII otherwise.
    msg["Subject"] = subject if subject.isascii() else Header(subject, "utf-8").encode()
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = message_id
    # Tells well-behaved servers not to auto-reply to it.
    msg["Auto-Submitted"] = "auto-generated"
    for name, value in (extra or {}).items():
        msg[name] = value
    msg.attach(MIMEText(text, "plain", "utf-8"))
    msg.attach(MIMEText(html, "html", "utf-8"))
    return msg.as_bytes(policy=_UNFOLDED)


def digest_email(
    *,
    sender: str,
    to: str,
    user_id: int,
    period: str,
    entries: list[DigestEntry],
    preview_mode: str,
    locale: str,
    base_url: str,
    unsubscribe_url: str,
) -> bytes:
    """One user's digest of one period. `preview_mode` cuts content as pushes do:
    "full" shows each newest message, "sender" only who wrote it, "none" neither
    the sender nor the conversation's name."""
    total = sum(e.count for e in entries)
    items = []
    for entry in entries[:MAX_ITEMS]:
        url = conversation_url(base_url, entry.conversation_id)
        if preview_mode == "full":
            name = entry.title or entry.sender_name
            heading = preview(f"{entry.sender_name} • {name}", TITLE_LENGTH)
            line = preview(entry.content) or attachments_line(locale, entry.attachments)
            if entry.count > 1:
                line = f"{texts.count_text(locale, 'new_messages', entry.count)}: {line}"
        elif preview_mode == "sender":
            heading = preview(
                f"{entry.sender_name} • {entry.title or entry.sender_name}", TITLE_LENGTH
            )
            line = texts.count_text(locale, "new_messages", entry.count)
        else:
            heading = texts.count_text(locale, "hidden_title", entry.count)
            line = texts.count_text(locale, "hidden_body", entry.count)
        items.append(_Item(heading, line, url))
    rest = len(entries) - len(items)
    subject = texts.count_text(locale, "new_messages", total)
    values = {
        "locale": locale_of(locale),
        "subject": subject,
        "intro": texts.text(locale, "digest_intro"),
        "items": items,
        "more": texts.text(locale, "more", n=rest) if rest else "",
        "open_label": texts.text(locale, "open"),
        "why": texts.text(locale, "why"),
        "unsubscribe_label": texts.text(locale, "unsubscribe"),
        "unsubscribe_url": unsubscribe_url,
    }
    env = _env()
    return _message(
        sender,
        to,
        subject,
        env.get_template("digest.txt").render(values),
        env.get_template("digest.html").render(values),
        # The same for a period however often it is built: a resend is recognisable.
        f"<digest.{user_id}.{period}@{domain_of(sender)}>",
        {
            "List-Unsubscribe": f"<{unsubscribe_url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )


def notice_email(
    *,
    sender: str,
    to: str,
    subject: str,
    body: str,
    url: str | None,
    footer: str | None,
    message_id: str,
    locale: str,
) -> bytes:
    """A short email of one paragraph and a link (verification, test)."""
    values = {
        "locale": locale_of(locale),
        "subject": subject,
        "body": body,
        "url": url,
        "footer": footer,
    }
    env = _env()
    return _message(
        sender,
        to,
        subject,
        env.get_template("notice.txt").render(values),
        env.get_template("notice.html").render(values),
        message_id,
    )
