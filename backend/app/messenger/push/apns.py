"""Apple Push Notification service, HTTP/2 with token (.p8) auth, through aioapns.

aioapns keeps a small pool of HTTP/2 connections and signs the provider JWT itself.
It has no send timeout (we add one) and reports APNs' answers as results, raising only
for transport trouble. What it offers no public way for (one JWT for all connections,
APNS_ENDPOINT, dropping a timed-out request) is in apns_compat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import uuid
from dataclasses import dataclass
from typing import Any

from aioapns import APNs, NotificationRequest, PushType
from aioapns import exceptions as apns_errors
from aioapns.common import NotificationResult
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.config import ConfigError
from app.messenger.push import apns_compat
from app.messenger.push.base import (
    LOG_LEVEL,
    Device,
    Notification,
    Outcome,
    Result,
    collapse_id,
    fitted,
)

log = logging.getLogger(__name__)

# apns-id = uuid5(namespace, message:device): a retry carries the same id.
# (A clear: uuid5 of its conversation and read mark, and the device.)
_APNS_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "messenger:apns-id")
# 410 is always a dead token; of the 400s, these two.
_DEAD_400_REASONS = {"BadDeviceToken", "DeviceTokenNotForTopic"}
# APNs refuses a larger payload (PayloadTooLarge); VoIP's 5 KB does not apply here.
MAX_PAYLOAD_BYTES = 4096


MIN_CONNECTIONS = 10


@dataclass(frozen=True, slots=True)
class APNsConfig:
    key_file: str  # the .p8 key (PKCS8 PEM, P-256)
    key_id: str
    team_id: str
    topic: str  # the app's bundle id
    use_sandbox: bool = False
    endpoint: str = ""  # "host:port" replacing Apple's (tests, staging)
    ca_file: str = ""  # a CA bundle to trust for that endpoint
    ttl_seconds: int = 24 * 3600
    timeout_seconds: float = 10.0
    max_connections: int = MIN_CONNECTIONS


def apns_id(message_id: object, device_id: object) -> str:
    return str(uuid.uuid5(_APNS_ID_NAMESPACE, f"{message_id}:{device_id}"))


class APNsProvider:
    name = "apns"

    def __init__(self, config: APNsConfig) -> None:
        self._config = config
        self._key = _read_p8(config.key_file)
        self._endpoint = _parse_endpoint(config.endpoint) if config.endpoint else None
        try:
            # With APNS_CA_FILE, that CA alone is trusted; else the system's.
            self._ssl = ssl.create_default_context(cafile=config.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"APNS_CA_FILE cannot be loaded ({type(exc).__name__})") from None
        self._ssl.set_alpn_protocols(["h2"])
        self._client: APNs | None = None

    async def start(self) -> None:
        # aioapns binds to the running loop when built: never at import time.
        self._client = APNs(
            key=self._key,
            key_id=self._config.key_id,
            team_id=self._config.team_id,
            topic=self._config.topic,
            use_sandbox=self._config.use_sandbox,
            ssl_context=self._ssl,
            max_connections=self._config.max_connections,
            # It sleeps 1 s between attempts; our timeout bounds the whole send anyway.
            max_connection_attempts=2,
            err_func=_no_log,  # we log every outcome ourselves, without the token
        )
        try:
            apns_compat.prepare_pool(
                self._client.pool,
                key=self._key,
                key_id=self._config.key_id,
                team_id=self._config.team_id,
                endpoint=self._endpoint,
            )
        except ConfigError:
            await self.close()
            raise

    async def close(self) -> None:
        if self._client is not None:
            self._client.pool.close()
            self._client = None

    async def send(self, device: Device, notification: Notification) -> Result:
        client = self._client
        if client is None:
            raise RuntimeError("APNsProvider.send() before start()")
        if notification.kind == "clear":
            # A background push: no alert, no sound; the app takes the conversation's
            # notification down and sets the badge. Apple requires priority 5 for it.
            # No collapse id: it never replaces a message push waiting for the device.
            request = NotificationRequest(
                device_token=device.token,
                message=_clear_payload(notification),
                notification_id=apns_id(notification.ref, device.id),
                time_to_live=self._config.ttl_seconds,
                priority=5,
                push_type=PushType.BACKGROUND,
            )
        else:
            request = NotificationRequest(
                device_token=device.token,
                message=_payload(fitted(notification, _size, MAX_PAYLOAD_BYTES)),
                notification_id=apns_id(notification.ref, device.id),
                time_to_live=self._config.ttl_seconds,
                priority=10,
                push_type=PushType.ALERT,
                # One notification per conversation: the next replaces it (and says how
                # many unread messages it stands for), as a second delivery of it does.
                collapse_key=collapse_id(notification.conversation_id),
            )
        try:
            async with asyncio.timeout(self._config.timeout_seconds):
                response = await client.send_notification(request)
        except TimeoutError:
            apns_compat.abandon(client.pool, request.notification_id)
            result = Result(Outcome.RETRY, error="timeout")
        except (
            apns_errors.MaxAttemptsExceeded,
            apns_errors.ConnectionError,
            apns_errors.ConnectionClosed,
            OSError,
        ) as exc:
            result = Result(Outcome.RETRY, error=f"{type(exc).__name__}: {exc}"[:200])
        except Exception as exc:  # a bug here must not look like a dead token
            log.exception("apns send failed device=%s", device.id)
            result = Result(Outcome.FAILED, error=f"{type(exc).__name__}: {exc}"[:200])
        else:
            result = _classify(response)
        log.log(
            LOG_LEVEL[result.outcome],
            "apns %s device=%s message=%s apns_id=%s token=%s… status=%s error=%s",
            result.outcome,
            device.id,
            notification.ref,
            request.notification_id,
            device.token[:8],
            result.status,
            result.error,
        )
        return result


def from_settings(settings: Any) -> APNsProvider | None:
    """The provider, or None when no APNs key is configured (APNs is then off)."""
    required = {
        "APNS_KEY_FILE": settings.apns_key_file,
        "APNS_KEY_ID": settings.apns_key_id,
        "APNS_TEAM_ID": settings.apns_team_id,
        "APNS_TOPIC": settings.apns_topic,
    }
    if not any(required.values()):
        return None
    missing = [name for name, value in required.items() if not value]
    if missing:
        raise ConfigError(f"APNs is half configured: {', '.join(missing)} missing")
    return APNsProvider(
        APNsConfig(
            key_file=settings.apns_key_file,
            key_id=settings.apns_key_id,
            team_id=settings.apns_team_id,
            topic=settings.apns_topic,
            use_sandbox=settings.apns_use_sandbox,
            endpoint=settings.apns_endpoint,
            ca_file=settings.apns_ca_file,
            ttl_seconds=settings.push_ttl_seconds,
            timeout_seconds=settings.push_timeout_seconds,
            # Enough connections for every push in flight at a few streams each
            # (apns_compat.STREAMS_PER_CONNECTION).
            max_connections=max(
                MIN_CONNECTIONS,
                -(-settings.push_concurrency_for("apns") // apns_compat.STREAMS_PER_CONNECTION),
            ),
        )
    )


def _payload(notification: Notification) -> dict[str, Any]:
    aps: dict[str, Any] = {
        "alert": {"title": notification.title, "body": notification.body},
        "thread-id": str(notification.conversation_id),
        "sound": "default",
    }
    if notification.badge is not None:
        aps["badge"] = notification.badge
    # Custom keys sit beside "aps", keeping their JSON types.
    payload = {**{k: v for k, v in notification.data.items() if k != "aps"}, "aps": aps}
    if notification.image:
        # The app's notification service extension fetches the image and attaches it.
        aps["mutable-content"] = 1
        payload["image_url"] = notification.image
    return payload


def _clear_payload(notification: Notification) -> dict[str, Any]:
    aps: dict[str, Any] = {"content-available": 1}
    if notification.badge is not None:
        aps["badge"] = notification.badge  # the badge changes without anything shown
    return {**{k: v for k, v in notification.data.items() if k != "aps"}, "aps": aps}


def _size(notification: Notification) -> int:
    return len(json.dumps(_payload(notification), ensure_ascii=False, default=str).encode())


def _classify(response: NotificationResult) -> Result:
    status = int(response.status) if str(response.status).isdigit() else None
    reason = response.description or None
    if status == 200:
        return Result(Outcome.DELIVERED, status=status)
    if status == 410 or (status == 400 and reason in _DEAD_400_REASONS):
        return Result(Outcome.DEAD_TOKEN, status=status, error=reason)
    if status is not None and (status == 429 or status >= 500):
        return Result(Outcome.RETRY, status=status, error=reason)
    # 400 BadTopic/PayloadTooLarge..., 403 InvalidProviderToken...: our side.
    return Result(Outcome.FAILED, status=status, error=reason)


async def _no_log(request: NotificationRequest, result: NotificationResult) -> None:
    return None


def _read_p8(path: str) -> str:
    try:
        with open(path, "rb") as f:
            pem = f.read()
        key = serialization.load_pem_private_key(pem, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"APNS_KEY_FILE is not a readable .p8 key ({type(exc).__name__})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError("APNS_KEY_FILE must hold an EC P-256 key (the .p8 from Apple)")
    return pem.decode()


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError("APNS_ENDPOINT must be host:port")
    return host.strip("[]"), int(port)
