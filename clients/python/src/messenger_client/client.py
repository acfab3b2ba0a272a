"""`Client`: one signed-in user (or bot) of a messenger node, over REST and one socket.

Every call renews the access token before it runs out (and once more on a 401), so a
long-lived client never sees an expired token. Errors raise the server's answer as an
exception of `messenger_client.errors`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal
from urllib.parse import quote

import httpx2

from messenger_client.backoff import Backoff
from messenger_client.errors import (
    ApiError,
    AuthError,
    ConnectionLost,
    MessengerError,
    SessionEnded,
    Unavailable,
    error_from_answer,
)
from messenger_client.events import Event
from messenger_client.models import (
    Bot,
    Conversation,
    Device,
    DeviceRegistration,
    Message,
    User,
)
from messenger_client.stream import EventStream
from messenger_client.tokens import Tokens

log = logging.getLogger(__name__)

API = "/api/v1"
MESSENGER = "/api/v1/messenger"
# A send that met a lost connection or a 503 is tried again this many times in all, with
# the same client_msg_id, so the server stores it once however many tries arrive.
SEND_ATTEMPTS = 5


def new_client_msg_id() -> str:
    return uuid.uuid4().hex


class Client:
    """A client of one node (or of the load balancer in front of several).

    `Client(base_url)` then `await login(...)`; or `Client(base_url, token=...)` with a
    bot's token, used as it is for REST and the socket: it has no refresh, so a 401
    raises `SessionEnded`. Use it as `async with Client(...) as client:` or call
    `close()`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens: Tokens | None = Tokens(token) if token else None
        self.user: User | None = None
        self.backoff = backoff or Backoff()
        self._http = httpx2.AsyncClient(
            base_url=self.base_url, timeout=timeout, transport=transport
        )
        self._refresh_lock = asyncio.Lock()
        self._stream: EventStream | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the socket (if any) and the HTTP connections."""
        if self._stream is not None:
            await self._stream.close()
            self._stream = None
        await self._http.aclose()

    @property
    def ws_url(self) -> str:
        scheme, rest = self.base_url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest + "/ws"

    # --- accounts and sessions ---

    async def register(self, username: str, password: str, display_name: str | None = None) -> User:
        """Create an account (it does not sign in: call `login`)."""
        body: dict[str, Any] = {"username": username, "password": password}
        if display_name is not None:
            body["display_name"] = display_name
        return User.from_json(await self._call("POST", f"{API}/auth/register", body, auth=False))

    async def login(self, username: str, password: str) -> User:
        """Sign in: a new session whose access token this client renews by itself."""
        sent = time.time()
        data = await self._call(
            "POST", f"{API}/auth/login", {"username": username, "password": password}, auth=False
        )
        self.tokens = Tokens.from_json(data, now=sent)
        self.user = User.from_json(data["user"])
        log.info("signed in user=%s session=%s", self.user.id, self.tokens.session_id)
        return self.user

    async def logout(self) -> None:
        """End this session on the server; its tokens stop working everywhere."""
        await self._call("POST", f"{API}/auth/logout")
        await self.disconnect()
        self.tokens = None

    async def me(self) -> User:
        self.user = User.from_json(await self._call("GET", f"{API}/me"))
        return self.user

    async def sessions(self) -> list[dict[str, Any]]:
        """The caller's open sessions: `{id, created_at, last_used_at, user_agent, ip,
        current}` each."""
        data = await self._call("GET", f"{API}/me/sessions")
        return list(data["sessions"])

    async def revoke_session(self, session_id: str) -> None:
        """End one of the caller's sessions (a lost phone): its sockets close too."""
        await self._call("DELETE", f"{API}/me/sessions/{_part(session_id)}")

    async def get_user(self, user_id: int) -> User:
        """One user by id (`is_bot` tells a bot from a person)."""
        return User.from_json(await self._call("GET", f"{API}/users/{int(user_id)}"))

    # --- bots ---

    async def create_bot(self, username: str, display_name: str | None = None) -> tuple[Bot, str]:
        """Make a bot account the caller runs: the bot and its token, which the server
        shows this once (keep it like a password; `Client(url, token=...)` runs the bot)."""
        body: dict[str, Any] = {"username": username}
        if display_name is not None:
            body["display_name"] = display_name
        data = await self._call("POST", f"{API}/me/bots", body)
        token = str(data["token"])
        # The answer names no display name: the server took the given one, else the username.
        shown = {k: v for k, v in data.items() if k != "token"}
        shown.setdefault("display_name", (display_name or "").strip() or data["username"])
        bot = Bot.from_json(shown)
        log.info("bot created bot=%s", bot.id)
        return bot, token

    async def bots(self) -> list[Bot]:
        """The bots the caller runs (never their tokens)."""
        data = await self._call("GET", f"{API}/me/bots")
        return [Bot.from_json(b) for b in data["bots"]]

    async def rotate_bot_token(self, bot_id: int) -> str:
        """A new token for one of the caller's bots; its old token stops working at once
        (its sockets close within about a second)."""
        data = await self._call("POST", f"{API}/me/bots/{int(bot_id)}/token")
        log.info("bot token rotated bot=%s", bot_id)
        return str(data["token"])

    async def delete_bot(self, bot_id: int) -> None:
        """Delete one of the caller's bots: its token stops working; its messages stay."""
        await self._call("DELETE", f"{API}/me/bots/{int(bot_id)}")
        log.info("bot deleted bot=%s", bot_id)

    async def refresh(self) -> Tokens:
        """Renew the access token now (this client does it by itself when due)."""
        tokens = self.tokens
        if tokens is None:
            raise AuthError(None, "unauthorized", "not signed in")
        return await self._refresh(tokens.access_token)

    # --- conversations and messages ---

    async def conversations(self) -> list[Conversation]:
        data = await self._call("GET", f"{MESSENGER}/conversations")
        return [Conversation.from_json(c) for c in data["conversations"]]

    async def conversation(self, conversation_id: str) -> Conversation:
        return Conversation.from_json(
            await self._call("GET", f"{MESSENGER}/conversations/{_part(conversation_id)}")
        )

    async def create_direct(self, user_id: int) -> Conversation:
        """The direct conversation with `user_id` (the existing one if there is one)."""
        return await self._create({"type": "direct", "participant_ids": [user_id]})

    async def create_group(
        self, participant_ids: list[int], title: str | None = None
    ) -> Conversation:
        body: dict[str, Any] = {"type": "group", "participant_ids": participant_ids}
        if title is not None:
            body["title"] = title
        return await self._create(body)

    async def add_participants(self, conversation_id: str, user_ids: list[int]) -> Conversation:
        """Add members to a group (its admins; a new member sees history from now on)."""
        path = f"{MESSENGER}/conversations/{_part(conversation_id)}/participants"
        return Conversation.from_json(await self._call("POST", path, {"user_ids": user_ids}))

    async def _create(self, body: dict[str, Any]) -> Conversation:
        return Conversation.from_json(await self._call("POST", f"{MESSENGER}/conversations", body))

    async def history(
        self,
        conversation_id: str,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> list[Message]:
        """One page of messages in ascending seq: with `after_seq` the oldest after it,
        else the newest (before `before_seq` if given). `limit` is at most 200."""
        params: dict[str, int] = {"limit": limit}
        if after_seq is not None:
            params["after_seq"] = after_seq
        if before_seq is not None:
            params["before_seq"] = before_seq
        data = await self._call(
            "GET", f"{MESSENGER}/conversations/{_part(conversation_id)}/messages", params=params
        )
        return [Message.from_json(m) for m in data["messages"]]

    async def messages_after(self, conversation_id: str, after_seq: int) -> AsyncIterator[Message]:
        """Every message after `after_seq`, page by page, in ascending seq."""
        while True:
            page = await self.history(conversation_id, after_seq=after_seq, limit=200)
            for message in page:
                yield message
            if len(page) < 200:
                return
            after_seq = page[-1].seq

    async def send(
        self,
        conversation_id: str,
        content: str,
        client_msg_id: str | None = None,
        *,
        reply_to: str | None = None,
        via: Literal["auto", "socket", "rest"] = "auto",
    ) -> Message:
        """Send a message: over the socket when connected (`via="socket"` insists), else
        over REST (`via="rest"`). A lost connection or a 503 is retried with the same
        `client_msg_id`, so the message is stored once; a 429 raises `RateLimited`."""
        client_msg_id = client_msg_id or new_client_msg_id()
        stream = self._stream
        if via == "socket" or (via == "auto" and stream is not None and stream.connected):
            if stream is None:
                raise ConnectionLost("not connected: call connect() first")
            return await stream.send(conversation_id, content, client_msg_id, reply_to)
        body: dict[str, Any] = {"content": content, "client_msg_id": client_msg_id}
        if reply_to is not None:
            body["reply_to"] = reply_to
        path = f"{MESSENGER}/conversations/{_part(conversation_id)}/messages"
        for attempt in range(SEND_ATTEMPTS):
            try:
                return Message.from_json(await self._call("POST", path, body))
            except (ConnectionLost, Unavailable) as exc:
                if attempt == SEND_ATTEMPTS - 1:
                    raise
                wait = getattr(exc, "retry_after", None) or self.backoff.delay(attempt)
                log.info("send retry client_msg_id=%s in=%.1fs", client_msg_id, wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def read(self, conversation_id: str, seq: int) -> None:
        """Mark the conversation read up to `seq` (the other participants see it)."""
        await self._call(
            "POST", f"{MESSENGER}/conversations/{_part(conversation_id)}/read", {"seq": seq}
        )

    async def typing(self, conversation_id: str) -> None:
        """Tell the others the caller is typing (over the socket; dropped when offline)."""
        if self._stream is not None:
            await self._stream.send_frame({"type": "typing", "conversation_id": conversation_id})

    # --- devices ---

    async def register_device(
        self,
        device_token: str,
        platform: str,
        provider: str,
        device_name: str | None = None,
    ) -> DeviceRegistration:
        """Register a push token: `platform` ios, android or web; `provider` fcm, apns or
        web_push (the token is then the PushSubscription as JSON)."""
        body: dict[str, Any] = {
            "device_token": device_token,
            "platform": platform,
            "provider": provider,
        }
        if device_name is not None:
            body["device_name"] = device_name
        status, data = await self._answer("POST", f"{MESSENGER}/devices/register", body)
        return DeviceRegistration.from_json(data, created=status == 201)

    async def devices(self) -> list[Device]:
        data = await self._call("GET", f"{MESSENGER}/devices")
        return [Device.from_json(d) for d in data["devices"]]

    async def unregister_device(self, device_token: str) -> None:
        await self._call("DELETE", f"{MESSENGER}/devices/{quote(device_token, safe='')}")

    # --- the socket ---

    async def connect(self) -> None:
        """Open the socket and sign it in; it reconnects by itself until `disconnect()`.

        From here on `events()` yields what happens, starting with what arrived since
        this call. Returns once the socket is signed in (raises if it cannot be)."""
        if self._stream is None:
            if self.user is None:
                await self.me()
            self._stream = EventStream(self, self.backoff)
            try:
                await self._stream.start()
            except BaseException:
                stream, self._stream = self._stream, None
                await stream.close()
                raise

    async def disconnect(self) -> None:
        if self._stream is not None:
            await self._stream.close()
            self._stream = None

    async def events(self) -> AsyncIterator[Event]:
        """The events of the socket (connecting first if needed): messages once each and
        in seq order per conversation, across reconnects. Raises `SessionEnded` when the
        session is over."""
        await self.connect()
        assert self._stream is not None
        async for event in self._stream.events():
            yield event

    # --- HTTP underneath ---

    async def access_token(self) -> str:
        """The access token to use now, renewed first if it is due."""
        tokens = self.tokens
        if tokens is None:
            raise AuthError(None, "unauthorized", "not signed in: call login() first")
        if tokens.due():
            tokens = self.tokens = await self._refresh(tokens.access_token)
        return tokens.access_token

    async def _refresh(self, stale: str) -> Tokens:
        """Trade the refresh token for new tokens, once for all callers that saw `stale`."""
        async with self._refresh_lock:
            tokens = self.tokens
            if tokens is None:
                raise SessionEnded(401, "unauthorized", "not signed in")
            if tokens.access_token != stale and not tokens.due():
                return tokens  # another caller renewed it meanwhile
            if not tokens.refreshable:
                raise SessionEnded(
                    401, "invalid_token", "the token was refused and cannot be renewed"
                )
            body = {"refresh_token": tokens.refresh_token}
            sent = time.time()
            try:
                data = await self._call("POST", f"{API}/auth/refresh", body, auth=False)
            except ConnectionLost:
                # The answer may have been lost after the server rotated the token: the
                # same token once more is taken as that retry (REFRESH_REUSE_GRACE_SECONDS).
                data = await self._call("POST", f"{API}/auth/refresh", body, auth=False)
            except AuthError as exc:
                raise SessionEnded(exc.status, exc.code, exc.message) from None
            self.tokens = Tokens.from_json(data, now=sent)
            log.info("tokens renewed session=%s", self.tokens.session_id)
            return self.tokens

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, int] | None = None,
        auth: bool = True,
    ) -> Any:
        return (await self._answer(method, path, body, params=params, auth=auth))[1]

    async def _answer(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, int] | None = None,
        auth: bool = True,
    ) -> tuple[int, Any]:
        """One request: its status and JSON body. A 401 renews the token and tries once more."""
        for renewed in (False, True):
            headers: dict[str, str] = {}
            token = ""
            if auth:
                token = await self.access_token()
                headers["Authorization"] = f"Bearer {token}"
            try:
                response = await self._http.request(
                    method, path, json=body, params=params, headers=headers
                )
            except httpx2.TransportError as exc:
                # No path in the message: a device's push token can be part of it.
                raise ConnectionLost(f"{method} failed: {type(exc).__name__}") from exc
            try:
                data = response.json() if response.content else None
            except ValueError:
                data = None
            if response.status_code == 401 and auth and not renewed:
                tokens = self.tokens
                if tokens is not None and not tokens.refreshable:
                    # A token issued once (a bot's) has nothing to renew it with: the
                    # refusal is final, with the server's own code and message.
                    refused = error_from_answer(401, data, None, response.reason_phrase)
                    raise SessionEnded(refused.status, refused.code, refused.message)
                await self._refresh(token)
                continue
            if response.status_code >= 400:
                raise error_from_answer(
                    response.status_code,
                    data,
                    response.headers.get("retry-after"),
                    response.reason_phrase,
                )
            return response.status_code, data
        raise AssertionError("unreachable")  # the second round returns or raises


def _part(value: str) -> str:
    """An id as one path segment, whatever it holds."""
    return quote(value, safe="")


__all__ = ["ApiError", "Client", "MessengerError"]
