"""Signed, expiring tokens (JWT, HS256) that name one user and are good for one use.

Each kind of token (notification action, notification open, email link) has its own
audience, so one kind is never taken for another; this module holds what they share:
signing with an expiry, and checking the signature, audience, expiry and claims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import lru_cache
from typing import Any

import jwt
import orjson
from jwt.algorithms import HMACAlgorithm
from jwt.utils import base64url_encode

from app.db import utcnow
from app.models import MAX_ID

ALGORITHM = "HS256"


class InvalidSignedToken(Exception):
    """Forged, expired, of another audience, or naming claims that cannot be."""


_HEADER = base64url_encode(orjson.dumps({"alg": ALGORITHM, "typ": "JWT"}))


def issue(
    key: str, audience: str, ttl: timedelta, user_id: int, claims: Mapping[str, object]
) -> str:
    """A token for `user_id` good for `ttl`; claims that are None are left out.

    The JWT is put together here, signed by PyJWT's HS256 with the key prepared once:
    a push carries one of these per device, and jwt.encode (its key checks and JSON
    done again for every token) cost four times as much. jwt.decode checks them."""
    now = int(utcnow().timestamp())
    body = {name: value for name, value in claims.items() if value is not None}
    # The registered claims last: a caller's claim never stands in for one of them.
    body.update(aud=audience, sub=str(user_id), iat=now, exp=now + int(ttl.total_seconds()))
    signing_input = _HEADER + b"." + base64url_encode(orjson.dumps(body))
    algorithm, prepared = _hs256(key)
    signature = base64url_encode(algorithm.sign(signing_input, prepared))
    return (signing_input + b"." + signature).decode()


@lru_cache(maxsize=8)
def _hs256(key: str) -> tuple[HMACAlgorithm, bytes]:
    algorithm = HMACAlgorithm(HMACAlgorithm.SHA256)
    return algorithm, algorithm.prepare_key(key)


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
