"""Signed, expiring links sent by email: one to verify an address, one to unsubscribe.

Each kind has its own audience, so one can never be used as the other (nor as an
access or notification-action token), and each names the address it was sent to: a
link stops working once the user's address is another one. A verification link also
names when the address was set (`st`): setting the same address again later (A, then B,
then A) makes the earlier link useless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from app import signed_tokens
from app.signed_tokens import InvalidSignedToken

VERIFY = "email-verify"
UNSUBSCRIBE = "email-unsubscribe"
TTLS = {VERIFY: timedelta(days=2), UNSUBSCRIBE: timedelta(days=60)}


class InvalidEmailToken(InvalidSignedToken):
    pass


@dataclass(frozen=True, slots=True)
class EmailClaims:
    user_id: int
    email: str
    set_at: int | None = None  # microseconds since the epoch; None: not named


def set_stamp(at: datetime) -> int:
    """When an address was set, as a token names it (exact, unlike a float)."""
    return int(at.timestamp() * 1_000_000)


def issue_email_token(
    key: str, audience: str, user_id: int, email: str, set_at: datetime | None = None
) -> str:
    claims = {"em": email, "st": None if set_at is None else set_stamp(set_at)}
    return signed_tokens.issue(key, audience, TTLS[audience], user_id, claims)


def decode_email_token(token: str, key: str, audience: str) -> EmailClaims:
    """What the token says; InvalidEmailToken if forged, expired or of another kind."""
    try:
        user_id, claims = signed_tokens.decode(token, key, audience, ("em",))
        email = signed_tokens.text_claim(claims, "em", 254)
    except InvalidSignedToken as exc:
        raise InvalidEmailToken(str(exc)) from exc
    set_at = claims.get("st")
    if set_at is not None and (not isinstance(set_at, int) or isinstance(set_at, bool)):
        raise InvalidEmailToken("bad claims")
    return EmailClaims(user_id, email, set_at)
