"""Passwords (argon2) and access tokens (JWT signed with SECRET_KEY)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import jwt
from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError

from app.db import utcnow

ALGORITHM = "HS256"
_hasher = PasswordHasher.from_parameters(profiles.RFC_9106_LOW_MEMORY)
# Verifying against this keeps a login for an unknown user as slow as a wrong password.
_dummy_hash = _hasher.hash("not a real password")


def use_password_profile(name: str) -> None:
    """Pick argon2's cost by its profile name (tests use CHEAPEST)."""
    global _hasher, _dummy_hash
    _hasher = PasswordHasher.from_parameters(getattr(profiles, name))
    _dummy_hash = _hasher.hash("not a real password")


class InvalidToken(Exception):
    pass


async def hash_password(password: str) -> str:
    # argon2 is deliberately slow: keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash or _dummy_hash, password) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def create_access_token(user_id: int, key: str, ttl_seconds: int) -> str:
    now = utcnow()
    claims = {"sub": str(user_id), "iat": now, "exp": now + timedelta(seconds=ttl_seconds)}
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def decode_access_token(token: str, key: str) -> int:
    """The user id the token was issued to; InvalidToken if it is bad or expired."""
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]})
        return int(claims["sub"])
    except (jwt.PyJWTError, ValueError) as exc:
        raise InvalidToken(str(exc)) from exc
