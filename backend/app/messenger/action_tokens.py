"""Tokens that let a service worker act on one notification without a session.

A Web Push notification offers Reply and Mark as read, and the service worker must do
either without opening a tab. It holds no access or refresh token (those live with the
page); instead each Web Push payload, end-to-end encrypted to that browser's
subscription, carries a token good only for the conversation it is about, only for
replying and marking read, only for the device it was sent to (unregistering or
deactivating the device ends it), only while the sign-in session that registered that
device stands (`sid`; ending the session ends it), and only for a while.

A device registered before devices had sessions has none: its tokens carry no `sid` and
hold as long as the device does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from app import signed_tokens
from app.signed_tokens import InvalidSignedToken

AUDIENCE = "notification-action"
TTL = timedelta(days=7)


class InvalidActionToken(InvalidSignedToken):
    pass


@dataclass(frozen=True, slots=True)
class ActionClaims:
    user_id: int
    device_id: str
    conversation_id: str
    session_id: str | None  # the device's session when the token was issued


def issue_action_token(
    key: str, user_id: int, device_id: str, conversation_id: str, session_id: str | None = None
) -> str:
    claims = {"dev": device_id, "cid": conversation_id, "sid": session_id}
    return signed_tokens.issue(key, AUDIENCE, TTL, user_id, claims)


def decode_action_token(token: str, key: str) -> ActionClaims:
    """What the token says; InvalidActionToken if it is bad, expired or not one of ours.
    Whether its device is still active is the caller's question."""
    try:
        user_id, claims = signed_tokens.decode(token, key, AUDIENCE, ("dev", "cid"))
        return ActionClaims(
            user_id,
            signed_tokens.text_claim(claims, "dev", 36),
            signed_tokens.text_claim(claims, "cid", 36),
            signed_tokens.optional_text_claim(claims, "sid", 36),
        )
    except InvalidSignedToken as exc:
        raise InvalidActionToken(str(exc)) from exc
