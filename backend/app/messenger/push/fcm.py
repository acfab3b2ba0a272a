"""Firebase Cloud Messaging, HTTP v1 API.

pyfcm builds the message (parse_payload); the send is ours, async, over kept-alive
connections with one OAuth token for all (push.fcm_transport). One send is one HTTP
request: the push service retries with backoff, honouring Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import google.auth.exceptions
import requests
from google.oauth2 import service_account
from pyfcm import FCMNotification

from app.config import ConfigError
from app.messenger.push.base import (
    LOG_LEVEL,
    Device,
    Notification,
    Outcome,
    Result,
    collapse_id,
    fitted,
)
from app.messenger.push.fcm_transport import FCMTransport
from app.messenger.push.http_client import Answer
from app.messenger.push.retry_after import parse_retry_after

log = logging.getLogger(__name__)

GOOGLE_ENDPOINT = "https://fcm.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# FCM's limit for a message's notification and data together.
MAX_PAYLOAD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class FCMConfig:
    service_account_file: str
    project_id: str = ""  # default: the service account's project_id
    endpoint: str = ""  # replaces https://fcm.googleapis.com (tests, staging)
    ttl_seconds: int = 24 * 3600
    timeout_seconds: float = 10.0
    # Kept-alive connections to FCM at most (the provider's in-flight limit).
    max_connections: int = 100


class FCMProvider:
    name = "fcm"

    def __init__(self, config: FCMConfig) -> None:
        try:
            credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                config.service_account_file, scopes=[SCOPE]
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"FCM_SERVICE_ACCOUNT_FILE is not a readable service-account JSON "
                f"({type(exc).__name__})"
            ) from None
        self.project_id = config.project_id or credentials.project_id or ""
        if not self.project_id:
            raise ConfigError("FCM needs FCM_PROJECT_ID or a project_id in the service account")
        base = (config.endpoint or GOOGLE_ENDPOINT).rstrip("/")
        self._url = f"{base}/v1/projects/{self.project_id}/messages:send"
        self._config = config
        # pyfcm for building messages only: it speaks no network here.
        self._builder = FCMNotification(credentials=credentials)
        self.transport = FCMTransport(
            credentials, self._url, config.timeout_seconds, config.max_connections
        )
        self._started = False

    async def start(self) -> None:
        await self.transport.start()
        self._started = True

    async def close(self) -> None:
        self._started = False
        await self.transport.close()

    async def send(self, device: Device, notification: Notification) -> Result:
        if not self._started:
            raise RuntimeError("FCMProvider.send() before start()")
        payload = self._builder.parse_payload(**self._message(device, notification))
        try:
            # The whole call, a token refresh included, within the timeout.
            async with asyncio.timeout(self._config.timeout_seconds):
                response = await self.transport.post(payload)
        except (
            TimeoutError,
            OSError,
            requests.RequestException,
            google.auth.exceptions.TransportError,
        ) as exc:
            result = Result(Outcome.RETRY, error=_describe(exc))
        except google.auth.exceptions.RefreshError as exc:
            # The token endpoint said no: retryable when it was busy, else our credentials.
            outcome = Outcome.RETRY if exc.retryable else Outcome.FAILED
            result = Result(outcome, error=f"OAuth token: {_describe(exc)}")
        except Exception as exc:  # a bug here must not look like a dead token
            log.exception("fcm send failed device=%s", device.id)
            result = Result(Outcome.FAILED, error=_describe(exc))
        else:
            result = self._classify(response)
        log.log(
            LOG_LEVEL[result.outcome],
            "fcm %s device=%s message=%s token=%s… status=%s retry_after=%s error=%s",
            result.outcome,
            device.id,
            notification.ref,
            device.token[:8],
            result.status,
            result.retry_after,
            result.error,
        )
        return result

    def _message(self, device: Device, notification: Notification) -> dict[str, Any]:
        if notification.kind == "clear":
            return self._clear_message(device, notification)
        notification = fitted(notification, _size, MAX_PAYLOAD_BYTES)
        tag = str(notification.conversation_id)
        data = dict(notification.data)
        android_notification: dict[str, Any] = {"tag": tag}
        aps: dict[str, Any] = {"thread-id": tag, "sound": "default"}
        if notification.badge is not None:
            data["badge"] = notification.badge
            # Android's launcher badge (where it shows a number), as iOS' aps.badge.
            android_notification["notification_count"] = notification.badge
            aps["badge"] = notification.badge
        apns_config: dict[str, Any] = {
            "headers": {
                "apns-push-type": "alert",
                "apns-priority": "10",
                "apns-collapse-id": collapse_id(notification.conversation_id),
            },
            "payload": {"aps": aps},
        }
        if notification.image:
            # iOS shows the image only through the app's notification service extension,
            # which a mutable notification wakes.
            aps["mutable-content"] = 1
            apns_config["fcm_options"] = {"image": notification.image}
        return {
            "fcm_token": device.token,
            "notification_title": notification.title,
            "notification_body": notification.body,
            # Android shows it itself (message.notification.image of HTTP v1).
            "notification_image": notification.image,
            "data_payload": string_values(data),
            "android_config": {
                "priority": "high",
                "ttl": f"{self._config.ttl_seconds}s",
                # While the device is offline, keep the newest push per conversation (FCM
                # keeps at most four collapse keys per device).
                "collapse_key": tag,
                # One notification in the tray per conversation, replaced by the next,
                # which says how many unread messages it stands for.
                "notification": android_notification,
            },
            # For iOS devices registered through FCM: as the APNs provider does.
            "apns_config": apns_config,
            # For browsers registered through FCM: as the Web Push provider does.
            "webpush_config": {"headers": {"Topic": collapse_id(notification.conversation_id)}},
        }

    def _clear_message(self, device: Device, notification: Notification) -> dict[str, Any]:
        """A data message, no notification block: the app takes the conversation's
        notification down (a deletion's: only if it shows that message) and sets its
        badge; nothing is shown."""
        data = dict(notification.data)
        aps: dict[str, Any] = {"content-available": 1}
        if notification.badge is not None:
            data["badge"] = aps["badge"] = notification.badge
        return {
            "fcm_token": device.token,
            "data_payload": string_values(data),
            "android_config": {
                # Normal, not high: Android reserves high priority for pushes that show
                # something, and may demote an app whose high-priority pushes do not. A
                # dozing phone gets it at its next wake-up, before anyone looks at it.
                "priority": "normal",
                "ttl": f"{self._config.ttl_seconds}s",
                # A key of its own: the newest clear waiting for the device replaces an
                # older one, never a message push still waiting (which may be newer).
                "collapse_key": collapse_id(notification.topic),
            },
            # iOS through FCM: a background push, as the APNs provider sends it.
            "apns_config": {
                "headers": {"apns-push-type": "background", "apns-priority": "5"},
                "payload": {"aps": aps},
            },
            "webpush_config": {
                "headers": {"Topic": collapse_id(notification.topic), "Urgency": "normal"}
            },
        }

    def _classify(self, response: Answer) -> Result:
        """FCM's answer as an outcome (the statuses pyfcm's parse_response tells apart)."""
        status = response.status
        if status == 200 and response.body:
            try:
                body = response.json()
            except ValueError:  # a 200 whose body isn't JSON: FCM took it all the same
                return Result(Outcome.DELIVERED, status=status)
            name = body.get("name") if isinstance(body, dict) else None
            return Result(Outcome.DELIVERED, status=status, extra={"name": name})
        if status == 404:  # UNREGISTERED: the app was uninstalled
            return Result(Outcome.DEAD_TOKEN, status=status, error="UNREGISTERED")
        if status == 400:
            # A bad token is dead; anything else wrong in the message is our bug.
            dead = _names_the_token(response)
            outcome = Outcome.DEAD_TOKEN if dead else Outcome.FAILED
            return Result(outcome, status=status, error=_error_message(response))
        if status == 200 or status == 429 or status >= 500:  # an empty 200: busy or down
            return Result(
                Outcome.RETRY,
                status=status,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                error=_error_message(response),
            )
        # 401 / 403 (our credentials or project), anything else: not retried.
        return Result(Outcome.FAILED, status=status, error=_error_message(response))


def from_settings(settings: Any) -> FCMProvider | None:
    """The provider, or None when no service account is configured (FCM is then off)."""
    if not settings.fcm_service_account_file:
        return None
    return FCMProvider(
        FCMConfig(
            service_account_file=settings.fcm_service_account_file,
            project_id=settings.fcm_project_id,
            endpoint=settings.fcm_endpoint,
            ttl_seconds=settings.push_ttl_seconds,
            timeout_seconds=settings.push_timeout_seconds,
            max_connections=settings.push_concurrency_for("fcm"),
        )
    )


def string_values(data: dict[str, Any]) -> dict[str, str]:
    """FCM data values must be strings: numbers and booleans as JSON text, None left out."""
    return {
        str(k): v if isinstance(v, str) else json.dumps(v, default=str)
        for k, v in data.items()
        if v is not None
    }


def _size(notification: Notification) -> int:
    """About what FCM counts against its limit: the notification's texts, image and data."""
    return len(
        json.dumps(
            [
                notification.title,
                notification.body,
                notification.image,
                string_values(notification.data),
            ],
            ensure_ascii=False,
            default=str,
        ).encode()
    )


def _error_body(response: Answer) -> dict[str, Any]:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _names_the_token(response: Answer) -> bool:
    """Google's 400 for a bad token names the field `message.token`, or says UNREGISTERED."""
    for detail in _error_body(response).get("details") or []:
        if not isinstance(detail, dict):
            continue
        if detail.get("errorCode") == "UNREGISTERED":
            return True
        for violation in detail.get("fieldViolations") or []:
            if isinstance(violation, dict) and violation.get("field") == "message.token":
                return True
    return False


def _error_message(response: Answer) -> str:
    error = _error_body(response)
    codes = [d.get("errorCode") for d in error.get("details") or [] if isinstance(d, dict)]
    code = next((c for c in codes if c), error.get("status") or response.status)
    return f"{code}: {error.get('message') or response.reason}"[:200]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
