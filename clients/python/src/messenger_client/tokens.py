"""A session's tokens and when to renew them.

The access token is renewed a quarter of its life before it ends (at most a minute
before), as the web client does, so neither a request nor the socket meets it expired.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# Renew this share of an access token's life before it ends, but at most this long before.
RENEW_SHARE = 0.25
RENEW_AT_MOST_SECONDS = 60.0
# A token's expiry is a whole second (JWT `exp`): it may end up to this much before
# `expires_in` says.
EXPIRY_GRANULARITY = 1.0


@dataclass(frozen=True, slots=True)
class Tokens:
    """The credentials of one session. A bot's token has no refresh token and no known
    expiry: it is used as it is."""

    access_token: str
    refresh_token: str | None = None
    session_id: str | None = None
    expires_at: float | None = None  # time.time() at which the access token ends
    lifetime: float | None = None  # its whole life, in seconds

    @classmethod
    def from_json(cls, data: dict[str, Any], now: float | None = None) -> Tokens:
        """From a login or refresh answer: `{access_token, refresh_token, expires_in, ...}`;
        `now` is when the request was sent (the token cannot be older than that)."""
        now = time.time() if now is None else now
        expires_in = data.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, (int, float)) else None
        return cls(
            access_token=str(data["access_token"]),
            refresh_token=data.get("refresh_token"),
            session_id=data.get("session_id"),
            expires_at=now + lifetime - EXPIRY_GRANULARITY if lifetime is not None else None,
            lifetime=lifetime,
        )

    @property
    def refreshable(self) -> bool:
        return bool(self.refresh_token)

    @property
    def renew_at(self) -> float | None:
        """When to renew the access token; None: never (no expiry known or no refresh)."""
        if self.expires_at is None or self.lifetime is None or not self.refreshable:
            return None
        return self.expires_at - min(self.lifetime * RENEW_SHARE, RENEW_AT_MOST_SECONDS)

    def due(self, now: float | None = None) -> bool:
        renew_at = self.renew_at
        return renew_at is not None and (time.time() if now is None else now) >= renew_at
