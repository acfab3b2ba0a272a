"""VAPID Authorization headers, signed once per push service and reused.

A VAPID JWT (RFC 8292) names the push service's origin (`aud`) and an expiry, nothing
about the subscription, so one token serves every push to that service until it nears
expiry. Signing (ES256) costs about as much as encrypting the payload; per push it was
a third of Web Push's CPU.

Audiences are origins of allowed push services, but a host pattern such as
`*.notify.windows.com` lets clients name many of them: the cache is bounded and drops
its oldest entry when full.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from py_vapid import Vapid

# Push services accept tokens up to 24 h ahead; 12 h leaves room for clock skew.
EXPIRY_SECONDS = 12 * 3600
# A token is renewed this long before it expires, so none is sent about to run out
# (a push may wait out retries and a slow network before the service checks it).
RENEW_BEFORE_SECONDS = 3600
MAX_AUDIENCES = 1024


class VapidCache:
    """`headers(audience)`: the Authorization header for pushes to that origin."""

    def __init__(
        self,
        vapid: Vapid,
        subject: str,
        expiry_seconds: int = EXPIRY_SECONDS,
        renew_before_seconds: int = RENEW_BEFORE_SECONDS,
        max_audiences: int = MAX_AUDIENCES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= renew_before_seconds < expiry_seconds:
            raise ValueError("renew_before_seconds must be below expiry_seconds")
        self._vapid = vapid
        self._subject = subject
        self._expiry = expiry_seconds
        self._renew_before = renew_before_seconds
        self._max = max(1, max_audiences)
        self._clock = clock
        # audience -> (headers, when the token expires)
        self._tokens: OrderedDict[str, tuple[dict[str, str], int]] = OrderedDict()
        self.signed = 0  # tokens signed so far (what the cache saves shows in it)

    def headers(self, audience: str) -> dict[str, str]:
        now = self._clock()
        found = self._tokens.get(audience)
        if found is not None and now < found[1] - self._renew_before:
            return found[0]
        expires = int(now) + self._expiry
        signed: dict[str, str] = self._vapid.sign(
            {"sub": self._subject, "aud": audience, "exp": expires}
        )
        self._tokens[audience] = (signed, expires)
        self._tokens.move_to_end(audience)
        while len(self._tokens) > self._max:
            self._tokens.popitem(last=False)
        self.signed += 1
        return signed

    def __len__(self) -> int:
        return len(self._tokens)
