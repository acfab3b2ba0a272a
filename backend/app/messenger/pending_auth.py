"""Sockets opened without a token, until their first frame `auth` signs them in.

Until then nobody is known to be behind one, yet it holds a connection and a task for up
to WEBSOCKET_AUTH_TIMEOUT_SECONDS: their number is capped per client address (an IPv6
address by its /64, as the rate limits count) and on the node, and one more is closed at
once. Sockets opened with a token are signed in before they are accepted: not counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from app.errors import CLOSE_TRY_AGAIN
from app.ratelimit import address_key

log = logging.getLogger(__name__)

CLOSE_POLICY_VIOLATION = 1008


@dataclass(frozen=True, slots=True)
class Refusal:
    """How to close a socket that may not wait."""

    code: int
    reason: str


TOO_MANY_FROM_ADDRESS = Refusal(
    CLOSE_POLICY_VIOLATION, "too many sockets waiting to sign in from this address"
)
TOO_MANY_ON_NODE = Refusal(CLOSE_TRY_AGAIN, "too many sockets waiting to sign in")


class PendingSockets:
    """The sockets of this node waiting for their first frame, by client address."""

    def __init__(self, per_address: int, total: int) -> None:
        self._per_address = per_address
        self._total = total
        self._count = 0
        self._by_address: dict[str, int] = {}

    @contextmanager
    def waiting(self, host: str | None) -> Iterator[Refusal | None]:
        """Counts the socket while the block runs; yields the refusal instead when its
        address or the node is at the cap (the socket is then not counted)."""
        key = address_key(host)
        held = self._by_address.get(key, 0)
        refusal = None
        if held >= self._per_address:
            refusal = TOO_MANY_FROM_ADDRESS
        elif self._count >= self._total:
            refusal = TOO_MANY_ON_NODE
        if refusal is not None:
            log.debug("socket refused, pending sign-ins address=%s code=%s", key, refusal.code)
            yield refusal
            return
        self._by_address[key] = held + 1
        self._count += 1
        try:
            yield None
        finally:
            self._count -= 1
            left = self._by_address[key] - 1
            if left:
                self._by_address[key] = left
            else:
                del self._by_address[key]
