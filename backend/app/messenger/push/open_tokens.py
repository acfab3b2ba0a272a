"""Tokens that let a service worker record the open of one notification.

A message push carries an action token (app.messenger.action_tokens) good for its
conversation, which also records its opens. A test push or a reminder is about no
conversation a token could act on, so its Web Push payload carries an open token
instead (`open_token`): good for one user, one device, one notification, and only for
recording that notification's open. Like an action token it ends with its device (and
the sign-in session the device was registered from) and after a while.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from app import signed_tokens
from app.signed_tokens import InvalidSignedToken

AUDIENCE = "notification-open"
TTL = timedelta(days=7)


class InvalidOpenToken(InvalidSignedToken):
    pass


@dataclass(frozen=True, slots=True)
class OpenClaims:
    user_id: int
    device_id: str
    notification_id: str
    session_id: str | None  # the device's session when the token was issued


def issue_open_token(
    key: str, user_id: int, device_id: str, notification_id: str, session_id: str | None = None
) -> str:
    claims = {"dev": device_id, "nid": notification_id, "sid": session_id}
    return signed_tokens.issue(key, AUDIENCE, TTL, user_id, claims)


def decode_open_token(token: str, key: str) -> OpenClaims:
    """What the token says; InvalidOpenToken if it is bad, expired or not an open token
    (an action token, too, is refused here: its audience is another)."""
    try:
        user_id, claims = signed_tokens.decode(token, key, AUDIENCE, ("dev", "nid"))
        return OpenClaims(
            user_id,
            signed_tokens.text_claim(claims, "dev", 36),
            signed_tokens.text_claim(claims, "nid", 36),
            signed_tokens.optional_text_claim(claims, "sid", 36),
        )
    except InvalidSignedToken as exc:
        raise InvalidOpenToken(str(exc)) from exc
