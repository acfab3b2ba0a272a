"""FCM's HTTP v1 transport: async POSTs over kept-alive connections, one OAuth token.

The providers' HTTP/1.1 client (push.http_client, Web Push's too), with a pool of
kept-alive connections as large as the provider's in-flight limit: each push reuses
one, no new TCP or TLS handshake. HTTP/2 (httpx2 with h2) was measured at about seven
times the CPU per request of aiohttp's HTTP/1.1, itself four times this client's,
which would bound pushes per second long before the connection count matters.

The access token comes from google-auth's service-account credentials (the OAuth
flow pyfcm uses too): one token for every push until it nears expiry (google-auth
counts it expired a few minutes early), refreshed by one push while the others wait
for it. The refresh is a blocking HTTP call, rare (once an hour), so it runs in a
thread rather than on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.oauth2 import service_account
from yarl import URL

from app.messenger.push.http_client import Answer, HttpClient

log = logging.getLogger(__name__)

# What FCM's answer is read up to: its bodies are a name or an error of a few hundred
# bytes; anything longer is cut off (and its connection dropped).
MAX_ANSWER_BYTES = 16384


class FCMTransport:
    """POSTs a built message to messages:send with a valid bearer token."""

    def __init__(
        self,
        credentials: service_account.Credentials,
        url: str,
        timeout_seconds: float,
        max_connections: int,
    ) -> None:
        self._credentials = credentials
        self._url = URL(url)
        self._timeout = timeout_seconds
        self._max_connections = max(1, max_connections)
        self._client: HttpClient | None = None
        self._refreshing = asyncio.Lock()
        self._auth_session: requests.Session | None = None
        self.token_refreshes = 0

    async def start(self) -> None:
        # The provider bounds each send as a whole (asyncio.timeout).
        self._client = HttpClient(self._max_connections)
        self._auth_session = requests.Session()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._auth_session is not None:
            self._auth_session.close()
            self._auth_session = None

    async def post(self, payload: bytes) -> Answer:
        """One send; a token the server calls expired (revoked, clock skew) is dropped
        and the send made once more with a fresh one."""
        answer = await self._post(payload, await self._token())
        if _token_expired(answer):
            self._credentials.token = None
            answer = await self._post(payload, await self._token())
        return answer

    async def _post(self, payload: bytes, token: str) -> Answer:
        if self._client is None:
            raise RuntimeError("FCMTransport.post() before start()")
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json; UTF-8",
        }
        return await self._client.post(self._url, headers, payload, MAX_ANSWER_BYTES)

    async def _token(self) -> str:
        if not self._credentials.valid:
            async with self._refreshing:
                # Another push may have refreshed it while this one waited.
                if not self._credentials.valid:
                    await asyncio.to_thread(self._refresh)
        token = self._credentials.token
        if not isinstance(token, str):  # the refresh was cut off: the next send tries again
            raise google.auth.exceptions.TransportError("no access token")  # type: ignore[no-untyped-call]
        return token

    def _refresh(self) -> None:
        """In a worker thread: google-auth's token request, within our timeout (its own
        default is 120 s)."""
        if self._auth_session is None:
            raise RuntimeError("FCMTransport used before start()")
        request = partial(
            google.auth.transport.requests.Request(self._auth_session), timeout=self._timeout
        )
        self._credentials.refresh(request)  # type: ignore[no-untyped-call]
        self.token_refreshes += 1
        log.info("fcm access token refreshed expiry=%s", self._credentials.expiry)


def _token_expired(answer: Answer) -> bool:
    """Google's 401 for an expired access token (the reason pyfcm looks for too)."""
    if answer.status != 401:
        return False
    try:
        details = answer.json().get("error", {}).get("details", [])
    except (ValueError, AttributeError):
        return False
    return any(isinstance(d, dict) and d.get("reason") == "ACCESS_TOKEN_EXPIRED" for d in details)
