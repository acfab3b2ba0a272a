"""Signed, expiring tokens (JWT, HS256) that name one user and are good for one use.

Each kind of token (notification action, notification open, email link) has its own
audience, so one kind is never taken for another; this module holds what they share:
signing with an expiry, and checking the signature, audience, expiry and claims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import jwt

from app.db import utcnow
from app.models import MAX_ID

ALGORITHM = "HS256"


class InvalidSignedToken(Exception):
    """Forged, expired, of another audience, or naming claims that cannot be."""


def issue(
    key: str, audience: str, ttl: timedelta, user_id: int, claims: Mapping[str, object]
) -> str:
    """A token for `user_id` good for `ttl`; claims that are None are left out."""
    now = utcnow()
    body: dict[str, object] = {"aud": audience, "sub": str(user_id)}
    body.update((name, value) for name, value in claims.items() if value is not None)
    body.update(iat=now, exp=now + ttl)
    return jwt.encode(body, key, algorithm=ALGORITHM)


def decode(
    token: str, key: str, audience: str, required: Sequence[str]
) -> tuple[int, dict[str, Any]]:
    """The user the token names and all its claims, once its signature, audience and
    expiry hold and it carries every one of `required`."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            options={"require": ["exp", "sub", *required, "aud"]},
        )
        user_id = int(claims["sub"])
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidSignedToken(str(exc)) from exc
    if not 0 < user_id <= MAX_ID:
        raise InvalidSignedToken("bad claims")
    return user_id, claims


def text_claim(claims: Mapping[str, Any], name: str, max_length: int) -> str:
    """A claim that must be a string of 1 to `max_length` characters."""
    value = claims.get(name)
    if not (isinstance(value, str) and 0 < len(value) <= max_length):
        raise InvalidSignedToken("bad claims")
    return value


def optional_text_claim(claims: Mapping[str, Any], name: str, max_length: int) -> str | None:
    """As text_claim, for a claim a token may leave out."""
    return None if claims.get(name) is None else text_claim(claims, name, max_length)
