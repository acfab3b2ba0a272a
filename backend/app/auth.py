"""Passwords (argon2) and access tokens (JWT signed with SECRET_KEY)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import jwt
from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError

from app.db import utcnow
from app.errors import ApiError
from app.models import MAX_ID

ALGORITHM = "HS256"
T = TypeVar("T")


class InvalidToken(Exception):
    pass


class PasswordPool:
    """argon2, deliberately slow, off the event loop on a bounded pool.

    At most `threads` hashes run at once and `queue` more wait; a caller beyond that is
    answered 503 `busy` at once. A flood of logins then holds a fixed amount of memory
    (each hash takes the profile's 64 MiB) instead of a growing queue of threads.
    """

    def __init__(self, profile: str, threads: int, queue: int) -> None:
        # The profile by its argon2-cffi name: RFC_9106_LOW_MEMORY, or CHEAPEST in tests.
        self._hasher = PasswordHasher.from_parameters(getattr(profiles, profile))
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        self._capacity = threads + queue
        self._taken = 0
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        return await self.run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether the password matches; False (as slowly) when there is no hash."""
        return await self.run(self._check, password_hash, password)

    def _check(self, password_hash: str | None, password: str) -> bool:
        if password_hash is None:
            # A login for an unknown user takes as long as a wrong password.
            if self._dummy_hash is None:
                self._dummy_hash = self._hasher.hash("not a real password")
            self._matches(self._dummy_hash, password)
            return False
        return self._matches(password_hash, password)

    def _matches(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on the pool; 503 busy when every thread and queue place is taken."""
        if self._taken >= self._capacity:
            raise ApiError(
                503, "busy", "the server is busy; try again shortly", headers={"Retry-After": "1"}
            )
        self._taken += 1
        loop = asyncio.get_running_loop()
        future = self._executor.submit(fn, *args)

        def release(_: Future[T]) -> None:
            # A place is free once the thread is done, even if the caller went away sooner.
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._release)

        future.add_done_callback(release)
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        self._taken -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a valid access token says: whose it is, of which session, and until when."""

    user_id: int
    session_id: str
    expires_at: float  # seconds since the epoch


def create_access_token(user_id: int, key: str, ttl_seconds: int, *, session_id: str) -> str:
    now = utcnow()
    claims = {
        "sub": str(user_id),
        "sid": session_id,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_seconds),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def decode_access_token(token: str, key: str) -> AccessClaims:
    """What the token says; InvalidToken if it is bad, expired or names no session.

    The signature and expiry only: whether its session still stands is the session
    store's question (app.sessions)."""
    try:
        claims = jwt.decode(
            token, key, algorithms=[ALGORITHM], options={"require": ["exp", "sub", "sid"]}
        )
        user_id, session_id, expires_at = int(claims["sub"]), claims["sid"], claims["exp"]
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidToken(str(exc)) from exc
    if not isinstance(session_id, str) or not 0 < len(session_id) <= 64:
        raise InvalidToken("bad session id")
    if not isinstance(expires_at, (int, float)) or not 0 < user_id <= MAX_ID:
        raise InvalidToken("bad claims")
    return AccessClaims(user_id, session_id, float(expires_at))
