"""The links an email carries back to the node: verify an address, unsubscribe."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from app.config import Settings
from app.email.tokens import UNSUBSCRIBE, VERIFY, issue_email_token

VERIFY_PATH = "/email/verify"
UNSUBSCRIBE_PATH = "/email/unsubscribe"


def _link(
    settings: Settings,
    path: str,
    audience: str,
    user_id: int,
    email: str,
    set_at: datetime | None = None,
) -> str:
    token = issue_email_token(settings.signing_key, audience, user_id, email, set_at)
    return f"{settings.public_base_url}{path}?token={quote(token)}"


def verify_url(settings: Settings, user_id: int, email: str, set_at: datetime) -> str:
    """The link that verifies `email`, good only while it is the address set at `set_at`."""
    return _link(settings, VERIFY_PATH, VERIFY, user_id, email, set_at)


def unsubscribe_url(settings: Settings, user_id: int, email: str) -> str:
    return _link(settings, UNSUBSCRIBE_PATH, UNSUBSCRIBE, user_id, email)
