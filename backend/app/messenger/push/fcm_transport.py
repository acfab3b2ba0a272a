"""FCM's HTTP v1 transport: async POSTs over kept-alive connections, one OAuth token.

aiohttp, the node's other push client (Web Push), with a pool of kept-alive
connections as large as the provider's in-flight limit: each push reuses one, no new
TCP or TLS handshake. HTTP/2 (httpx2 with h2) was measured at about seven times the
CPU per request of this, which would bound pushes per second long before the
connection count matters.

The access token comes from google-auth's service-account credentials (the OAuth
flow pyfcm uses too): one token for every push until it nears expiry (google-auth
counts it expired a few minutes early), refreshed by one push while the others wait
for it. The refresh is a blocking HTTP call, rare (once an hour), so it runs in a
thread rather than on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.oauth2 import service_account

log = logging.getLogger(__name__)

# What FCM's answer is read up to: its bodies are a name or an error of a few hundred
# bytes; anything longer is cut off (and its connection dropped).
MAX_ANSWER_BYTES = 16384


@dataclass(frozen=True, slots=True)
class Answer:
    """FCM's answer to one send: status, headers and (up to a bound) the body."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


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
        self._url = url
        self._timeout = timeout_seconds
        self._max_connections = max(1, max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._refreshing = asyncio.Lock()
        self._auth_session: requests.Session | None = None
        self.token_refreshes = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._auth_session = requests.Session()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
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
        if self._session is None:
            raise RuntimeError("FCMTransport.post() before start()")
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json; UTF-8",
        }
        async with self._session.post(
            self._url, data=payload, headers=headers, allow_redirects=False
        ) as response:
            body = await _read_some(response)
            return Answer(response.status, response.reason or "", dict(response.headers), body)

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


async def _read_some(response: aiohttp.ClientResponse) -> bytes:
    """The answer up to MAX_ANSWER_BYTES; read to its end, the connection goes back to
    the pool, a longer one is cut off and its connection dropped."""
    chunks: list[bytes] = []
    read = 0
    while read < MAX_ANSWER_BYTES:
        chunk = await response.content.read(MAX_ANSWER_BYTES - read)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        read += len(chunk)
    response.close()
    return b"".join(chunks)


def _token_expired(answer: Answer) -> bool:
    """Google's 401 for an expired access token (the reason pyfcm looks for too)."""
    if answer.status != 401:
        return False
    try:
        details = answer.json().get("error", {}).get("details", [])
    except (ValueError, AttributeError):
        return False
    return any(isinstance(d, dict) and d.get("reason") == "ACCESS_TOKEN_EXPIRED" for d in details)
