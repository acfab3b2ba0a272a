"""Web Push (RFC 8030, payload encrypted per RFC 8291, signed with VAPID per RFC 8292).

The device token is the browser's PushSubscription as JSON. pywebpush encrypts the
payload for it and signs a VAPID JWT for the endpoint's origin; we speak to every
push service (Google, Mozilla, Apple, ...) through one shared aiohttp session.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid
from pywebpush import WebPushException, webpush_async

from app.config import ConfigError
from app.messenger.push.base import LOG_LEVEL, Device, Notification, Outcome, Result
from app.messenger.push.retry_after import parse_retry_after

log = logging.getLogger(__name__)

# RFC 8030 5.4: a Topic is at most 32 characters of the URL-safe base64 alphabet.
_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True, slots=True)
class WebPushConfig:
    private_key: str  # raw P-256 key, base64url (43 chars), or a path to a PEM file
    subject: str  # "mailto:..." or "https://..."
    public_key: str = ""  # optional; when given it must match the private key
    ttl_seconds: int = 24 * 3600  # > 0: with TTL 0 an offline browser never gets it
    timeout_seconds: float = 10.0
    max_connections: int = 100


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
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # One session for every push service: keeps connections (and TLS) alive.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._config.max_connections),
            timeout=aiohttp.ClientTimeout(total=self._config.timeout_seconds),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, device: Device, notification: Notification) -> Result:
        if self._session is None:
            raise RuntimeError("WebPushProvider.send() before start()")
        try:
            subscription = _subscription(device.token)
        except ValueError as exc:
            # Nothing we can ever send to: the registration is unusable.
            return self._log(device, notification, Result(Outcome.DEAD_TOKEN, error=str(exc)), "")
        origin = _origin(subscription["endpoint"])
        timeout = self._config.timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                response = await webpush_async(
                    subscription,
                    data=_payload(notification),
                    vapid_private_key=self._vapid,
                    # A fresh dict each call: pywebpush writes aud and exp into it.
                    vapid_claims={"sub": self._config.subject},
                    content_encoding="aes128gcm",
                    ttl=self._config.ttl_seconds,
                    headers={"Urgency": "high", "Topic": topic_for(notification.conversation_id)},
                    timeout=timeout,
                    aiohttp_session=self._session,
                )
            result = Result(Outcome.DELIVERED, status=response.status)
        except WebPushException as exc:
            result = _classify(exc)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            result = Result(Outcome.RETRY, error=_describe(exc, subscription["endpoint"]))
        except Exception as exc:  # a bug here must not look like a dead token
            log.exception("web_push send failed device=%s", device.id)
            result = Result(Outcome.FAILED, error=_describe(exc, subscription["endpoint"]))
        return self._log(device, notification, result, origin)

    def _log(
        self, device: Device, notification: Notification, result: Result, origin: str
    ) -> Result:
        log.log(
            LOG_LEVEL[result.outcome],
            "web_push %s device=%s message=%s service=%s status=%s retry_after=%s error=%s",
            result.outcome,
            device.id,
            notification.message_id,
            origin,
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
            max_connections=min(settings.push_concurrency_for("web_push"), 100),
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


def topic_for(conversation_id: object) -> str:
    """One Topic per conversation, so a push service keeps only the newest while offline."""
    text = str(conversation_id)
    try:
        return uuid.UUID(text).hex  # 32 hex characters
    except ValueError:
        pass
    if _TOPIC_RE.fullmatch(text):
        return text
    return _b64url(hashlib.sha256(text.encode()).digest()[:24])  # 32 characters


def _payload(notification: Notification) -> str:
    return json.dumps(
        {
            "title": notification.title,
            "body": notification.body,
            "data": notification.data,
            "tag": str(notification.conversation_id),
            "url": notification.url,
        },
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,  # a stray UUID or datetime in data must not kill the push
    )


def _subscription(token: str) -> dict[str, Any]:
    """The PushSubscription, checked the way the encryption will need it."""
    try:
        sub = json.loads(token)
        endpoint, keys = sub["endpoint"], sub["keys"]
        p256dh, auth = _b64decode(keys["p256dh"]), _b64decode(keys["auth"])
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except (ValueError, TypeError, KeyError):
        raise ValueError("malformed subscription (endpoint, keys.p256dh, keys.auth)") from None
    if not (isinstance(endpoint, str) and endpoint.startswith(("https://", "http://"))):
        raise ValueError("subscription endpoint is not an http(s) URL")
    if len(auth) != 16:
        raise ValueError("subscription auth secret is not 16 bytes")
    return {"endpoint": endpoint, "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]}}


def _classify(exc: WebPushException) -> Result:
    status = exc.status_code
    if status is None:  # raised before sending: the subscription keys are unusable
        return Result(Outcome.DEAD_TOKEN, error=exc.message[:200])
    error = exc.message.splitlines()[0][:200]
    if status in (404, 410):  # the subscription expired or the user unsubscribed
        return Result(Outcome.DEAD_TOKEN, status=status, error=error)
    if status == 429 or status >= 500:
        return Result(
            Outcome.RETRY,
            status=status,
            retry_after=parse_retry_after(exc.retry_after),
            error=error,
        )
    # 400 bad headers, 401/403 VAPID rejected, 413 payload too large: our side.
    return Result(Outcome.FAILED, status=status, error=error)


def _describe(exc: BaseException, endpoint: str) -> str:
    # aiohttp puts the whole URL in some messages: keep the subscription's path out.
    text = f"{type(exc).__name__}: {exc}"
    path = urlsplit(endpoint).path
    return (text.replace(path, "/…") if len(path) > 1 else text)[:200]


def _origin(endpoint: str) -> str:
    # The endpoint path is the subscription's secret: log only where it goes.
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
