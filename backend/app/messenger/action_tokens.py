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

import jwt

from app.db import utcnow
from app.models import MAX_ID

ALGORITHM = "HS256"
AUDIENCE = "notification-action"
TTL = timedelta(days=7)


class InvalidActionToken(Exception):
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
    now = utcnow()
    claims: dict[str, object] = {
        "aud": AUDIENCE,
        "sub": str(user_id),
        "dev": device_id,
        "cid": conversation_id,
        "iat": now,
        "exp": now + TTL,
    }
    if session_id is not None:
        claims["sid"] = session_id
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def decode_action_token(token: str, key: str) -> ActionClaims:
    """What the token says; InvalidActionToken if it is bad, expired or not one of ours.
    Whether its device is still active is the caller's question."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["exp", "sub", "dev", "cid", "aud"]},
        )
        user_id, device_id, conversation_id = int(claims["sub"]), claims["dev"], claims["cid"]
        session_id = claims.get("sid")
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidActionToken(str(exc)) from exc
    if not (isinstance(device_id, str) and isinstance(conversation_id, str)):
        raise InvalidActionToken("bad claims")
    if (
        not 0 < user_id <= MAX_ID
        or not 0 < len(device_id) <= 36
        or not 0 < len(conversation_id) <= 36
        or not (session_id is None or (isinstance(session_id, str) and 0 < len(session_id) <= 36))
    ):
        raise InvalidActionToken("bad claims")
    return ActionClaims(user_id, device_id, conversation_id, session_id)
