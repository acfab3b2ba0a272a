"""Web Push (RFC 8030, payload encrypted per RFC 8291, signed with VAPID per RFC 8292).

The device token is the browser's PushSubscription as JSON, parsed once per device.
The payload is encrypted for it (push.webpush_crypto: RFC 8291, as pywebpush does it)
and py_vapid signs a VAPID JWT per push service origin, reused until it nears expiry
(push.vapid_cache). The POST goes through the providers' HTTP/1.1 client
(push.http_client), whose connections only ever reach a public address when the
endpoint, chosen by a client, is a known push service (endpoints.py); redirects are
not followed, and an answer is read only up to a few KiB, never decompressed.

The payload is what the service worker (frontend/sw.js) reads; being end-to-end
encrypted to the browser, it is the one provider's payload that may carry an action
token (app.messenger.action_tokens): what lets the worker reply to, or mark read, the
conversation of its notification without a session; a test push or a reminder carries
an open token (push.open_tokens) instead, which records that notification's open only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid

from app.config import ConfigError
from app.messenger.action_tokens import issue_action_token
from app.messenger.push import texts
from app.messenger.push.base import (
    LOG_LEVEL,
    Device,
    Notification,
    Outcome,
    Result,
    collapse_id,
    fitted,
)
from app.messenger.push.bounded_cache import BoundedCache
from app.messenger.push.endpoints import (
    EndpointPolicy,
    NonPublicAddress,
    PushTarget,
    resolve_public,
)
from app.messenger.push.host_limit import HostLimits
from app.messenger.push.http_client import HttpClient, resolve_any
from app.messenger.push.open_tokens import issue_open_token
from app.messenger.push.retry_after import parse_retry_after
from app.messenger.push.vapid_cache import VapidCache
from app.messenger.push.webpush_crypto import Receiver, encrypt

log = logging.getLogger(__name__)

# How much of a push service's answer is read: its error bodies are a few hundred bytes;
# reading them to the end keeps the connection reusable, and nothing more is needed.
MAX_ANSWER_BYTES = 4096
# A push service takes at most 4096 bytes of body (RFC 8030 7.2); aes128gcm adds 86
# bytes of header, a 16-byte tag and a 1-byte delimiter to the plaintext (RFC 8291).
MAX_BODY_BYTES = 4096
MAX_PAYLOAD_BYTES = MAX_BODY_BYTES - 86 - 16 - 1
# Parsed subscriptions kept (a few hundred bytes each): a node's active Web Push devices.
PARSED_SUBSCRIPTIONS = 20_000
# Pushes about no conversation whose opens the service worker reports with an open token.
OPEN_TOKEN_KINDS = frozenset({"test", "reminder"})


@dataclass(frozen=True, slots=True)
class WebPushConfig:
    private_key: str  # raw P-256 key, base64url (43 chars), or a path to a PEM file
    subject: str  # "mailto:..." or "https://..."
    public_key: str = ""  # optional; when given it must match the private key
    ttl_seconds: int = 24 * 3600  # > 0: with TTL 0 an offline browser never gets it
    timeout_seconds: float = 10.0
    max_connections: int = 100
    # Which endpoints may be contacted; the default allows the known push services only.
    endpoints: EndpointPolicy = field(default_factory=EndpointPolicy)
    per_host_concurrency: int = 100
    # Signs the action tokens of message pushes (the node's signing key); "": none.
    action_key: str = ""


class WebPushProvider:
    name = "web_push"

    def __init__(self, config: WebPushConfig) -> None:
        if config.ttl_seconds <= 0:
            raise ConfigError("the Web Push TTL must be positive")
        if not config.subject.startswith(("mailto:", "https://")):
            raise ConfigError("VAPID_SUBJECT must be a mailto: or https: URL")
        self._config = config
        self._vapid = load_vapid_key(config.private_key)
        # The browser's applicationServerKey: the uncompressed public point, base64url.
        self.public_key = _b64url(
            self._vapid.public_key.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )
        if config.public_key and config.public_key.rstrip("=") != self.public_key:
            raise ConfigError("VAPID_PUBLIC_KEY does not belong to VAPID_PRIVATE_KEY")
        self._client: HttpClient | None = None
        self._hosts = HostLimits(config.per_host_concurrency)
        self.vapid_tokens = VapidCache(self._vapid, config.subject)
        # Each device's subscription parsed, checked and its keys decoded once, not at
        # every push (and twice per push: its host's slot, then the send).
        self._parsed: BoundedCache[str, tuple[PushTarget, Receiver]] = BoundedCache(
            PARSED_SUBSCRIPTIONS
        )

    async def start(self) -> None:
        # One client for every push service: keeps connections (and TLS) alive. Resolved
        # addresses must be public unless any endpoint is allowed (staging: the fakes
        # listen on 127.0.0.1). send() bounds each push as a whole (asyncio.timeout).
        self._client = HttpClient(
            self._config.max_connections,
            resolve_any if self._config.endpoints.allow_any else resolve_public,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def host_slot(self, device: Device) -> AbstractAsyncContextManager[None]:
        """Held while this device's push is in flight to its push service."""
        try:
            target, _ = self._parse(device.token)
        except ValueError:
            return contextlib.nullcontext()  # send() refuses it without contacting anyone
        return self._hosts.slot(target.service)

    def _parse(self, token: str) -> tuple[PushTarget, Receiver]:
        """The push service and keys of a subscription; ValueError when it is unusable
        or its endpoint not an allowed push service."""
        return self._parsed.get_or_make(token, self._parse_now)

    def _parse_now(self, token: str) -> tuple[PushTarget, Receiver]:
        endpoint, keys = _subscription(token)
        return self._config.endpoints.check(endpoint), keys

    async def send(self, device: Device, notification: Notification) -> Result:
        if self._client is None:
            raise RuntimeError("WebPushProvider.send() before start()")
        try:
            target, keys = self._parse(device.token)
        except ValueError as exc:
            # Nothing we can ever send to (unusable, or not a push service: never contacted).
            return self._log(device, notification, Result(Outcome.DEAD_TOKEN, error=str(exc)), "")
        service = target.origin
        try:
            async with asyncio.timeout(self._config.timeout_seconds):
                result = await self._post(self._client, target, keys, device, notification)
        except (TimeoutError, OSError) as exc:
            if isinstance(exc, NonPublicAddress):  # never contacted: a retry changes nothing
                result = Result(Outcome.FAILED, error="the push service has no public address")
            else:
                result = Result(Outcome.RETRY, error=_describe(exc, target))
        except Exception as exc:  # a bug here must not look like a dead token
            log.exception("web_push send failed device=%s", device.id)
            result = Result(Outcome.FAILED, error=_describe(exc, target))
        return self._log(device, notification, result, service)

    async def _post(
        self,
        client: HttpClient,
        target: PushTarget,
        keys: Receiver,
        device: Device,
        notification: Notification,
    ) -> Result:
        payload = self.payload(device, notification)
        if len(payload) > MAX_PAYLOAD_BYTES:
            # Nothing left to cut (ids and tokens alone fill it): no push service takes it.
            return Result(Outcome.FAILED, error="payload too large")
        body = encrypt(payload, keys)
        headers = {
            # One token per push service until it nears expiry (push.vapid_cache).
            **self.vapid_tokens.headers(target.origin),
            "TTL": str(self._config.ttl_seconds),
            # A clear may wait for the device to wake; a message should not.
            "Urgency": "normal" if notification.kind == "clear" else "high",
            # A conversation's message pushes replace each other while the browser is
            # away; a clear has a Topic of its own, so it never replaces a newer one.
            "Topic": collapse_id(notification.topic),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        answer = await client.post(target.url, headers, body, MAX_ANSWER_BYTES)
        return _classify(answer.status, answer.reason, answer.headers)

    def payload(self, device: Device, notification: Notification) -> bytes:
        """The JSON the service worker gets, within what a push service takes."""
        token = open_token = None
        key = self._config.action_key
        if notification.kind == "message" and key:
            token = issue_action_token(
                key, device.user_id, device.id, notification.conversation_id, device.session_id
            )
        notification_id = notification.data.get("notification_id")
        if notification.kind in OPEN_TOKEN_KINDS and key and isinstance(notification_id, str):
            # No conversation to act on: a token that records this notification's open only.
            open_token = issue_open_token(
                key, device.user_id, device.id, notification_id, device.session_id
            )
        built: list[bytes] = []  # the last one built is the one that fits: built once

        def size(n: Notification) -> int:
            built.append(_payload(n, token, open_token))
            return len(built[-1])

        fitted(notification, size, MAX_PAYLOAD_BYTES)
        return built[-1]

    def _log(
        self, device: Device, notification: Notification, result: Result, service: str
    ) -> Result:
        log.log(
            LOG_LEVEL[result.outcome],
            "web_push %s device=%s message=%s service=%s status=%s retry_after=%s error=%s",
            result.outcome,
            device.id,
            notification.ref,
            service or "-",
            result.status,
            result.retry_after,
            result.error,
        )
        return result


def from_settings(settings: Any) -> WebPushProvider | None:
    """The provider, or None when VAPID is not configured (Web Push is then off)."""
    if not (settings.vapid_private_key or settings.vapid_subject):
        return None
    if not (settings.vapid_private_key and settings.vapid_subject):
        raise ConfigError("Web Push needs both VAPID_PRIVATE_KEY and VAPID_SUBJECT")
    return WebPushProvider(
        WebPushConfig(
            private_key=settings.vapid_private_key,
            subject=settings.vapid_subject,
            public_key=settings.vapid_public_key,
            ttl_seconds=settings.push_ttl_seconds,
            timeout_seconds=settings.push_timeout_seconds,
            # As many connections as pushes may be in flight: a host that holds its share
            # of them leaves the others' connections alone.
            max_connections=settings.push_concurrency_for("web_push"),
            endpoints=EndpointPolicy.from_settings(settings),
            per_host_concurrency=settings.web_push_per_host_concurrency,
            action_key=settings.signing_key,
        )
    )


def load_vapid_key(value: str) -> Vapid:
    """A raw base64url P-256 key, or a PEM file (or PEM text); never logs the key."""
    value = value.strip()
    try:
        if "-----BEGIN" in value:
            pem = value.encode()
        elif os.path.isfile(value):
            with open(value, "rb") as f:
                pem = f.read()
        else:
            # Raw 32-byte key (or base64 DER), as web-push tools print it.
            pem = b""
            key = Vapid.from_string(private_key=value).private_key
        if pem:
            key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, OSError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            "VAPID_PRIVATE_KEY is neither a base64url P-256 key nor a PEM file "
            f"({type(exc).__name__})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError("VAPID_PRIVATE_KEY must be a P-256 (prime256v1) EC key")
    return Vapid(private_key=key)


def _payload(
    notification: Notification, action_token: str | None, open_token: str | None = None
) -> bytes:
    """{type: "message", title, body, data, tag, url, badge, count, lang, preview,
    actions, action_token, image?}; a clear: {type: "clear", tag, conversation_id, seq,
    badge, title, lang}, a deleted message's adding {message_id, reason: "deleted"}; a test
    or a reminder: {type, title, body, data, tag, url, lang, open_token?}."""
    tag = str(notification.conversation_id)
    payload: dict[str, Any]
    if notification.kind == "clear":
        payload = {
            "type": "clear",
            "tag": tag,
            "conversation_id": tag,
            "seq": notification.seq,
            "title": notification.title,
        }
        if notification.data.get("reason") == "deleted":
            payload["message_id"] = notification.data["message_id"]
            payload["reason"] = "deleted"
    else:
        payload = {
            "type": notification.kind,
            "title": notification.title,
            "body": notification.body,
            "data": notification.data,
            "tag": tag,
            "url": notification.url,
        }
    if notification.kind == "message":
        payload["count"] = notification.count
        payload["preview"] = notification.preview
        actions = [{"action": "read", "title": texts.text(notification.locale, "action_read")}]
        if notification.replyable:
            reply = texts.text(notification.locale, "action_reply")
            actions.insert(0, {"action": "reply", "title": reply})
        payload["actions"] = actions
        if action_token is not None:
            payload["action_token"] = action_token
        if notification.image:
            payload["image"] = notification.image
    if open_token is not None:
        payload["open_token"] = open_token
    if notification.badge is not None:
        payload["badge"] = notification.badge
    payload["lang"] = notification.locale
    # UTF-8, compact; a stray non-JSON value in data must not kill the push.
    return orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS)


def _subscription(token: str) -> tuple[str, Receiver]:
    """The PushSubscription's endpoint and keys, checked the way the encryption needs."""
    try:
        sub = json.loads(token)
        endpoint, keys = sub["endpoint"], sub["keys"]
        receiver = Receiver.of(_b64decode(keys["p256dh"]), _b64decode(keys["auth"]))
    except (ValueError, TypeError, KeyError):
        raise ValueError("malformed subscription (endpoint, keys.p256dh, keys.auth)") from None
    if not isinstance(endpoint, str):
        raise ValueError("subscription endpoint is not a URL")
    if len(receiver.auth) != 16:
        raise ValueError("subscription auth secret is not 16 bytes")
    return endpoint, receiver


def _classify(status: int, reason: str | None, headers: Any) -> Result:
    error = f"{status} {reason or ''}".strip()[:100]
    if 200 <= status < 300:
        return Result(Outcome.DELIVERED, status=status)
    if status in (404, 410):  # the subscription expired or the user unsubscribed
        return Result(Outcome.DEAD_TOKEN, status=status, error=error)
    if status == 429 or status >= 500:
        return Result(
            Outcome.RETRY,
            status=status,
            retry_after=parse_retry_after(headers.get("retry-after")),
            error=error,
        )
    if 300 <= status < 400:  # a push service does not redirect: not followed
        return Result(Outcome.FAILED, status=status, error=f"{error} (redirect not followed)")
    # 400 bad headers, 401/403 VAPID rejected, 413 payload too large: our side.
    return Result(Outcome.FAILED, status=status, error=error)


def _describe(exc: BaseException, target: PushTarget) -> str:
    # Some errors name the whole URL: the path is the subscription's secret.
    text = f"{type(exc).__name__}: {exc}".replace(str(target.url), target.origin)
    path = target.url.raw_path_qs
    return (text.replace(path, "/…") if len(path) > 1 else text)[:200]


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
