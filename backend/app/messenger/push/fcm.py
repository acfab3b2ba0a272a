"""Firebase Cloud Messaging, HTTP v1 API, through pyfcm.

pyfcm is blocking (requests), so every call runs on a small bounded thread pool and
the event loop never waits on it. pyfcm's own retrying is taken out: its adapter
retries 502/503 and it sleeps on Retry-After inside the thread, which would hold a
worker and hide the answer we need. One send is one HTTP request; the push service
retries with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.oauth2 import service_account
from pyfcm import FCMNotification
from pyfcm.errors import (
    AuthenticationError,
    FCMNotRegisteredError,
    FCMSenderIdMismatchError,
    FCMServerError,
    InvalidDataError,
)
from requests.adapters import HTTPAdapter

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
    threads: int = 16


class _OneShotFCM(FCMNotification):  # type: ignore[misc]
    """pyfcm where one call is one HTTP request, sharing one OAuth token across threads."""

    def __init__(self, credentials: service_account.Credentials, url: str, config: FCMConfig):
        adapter = HTTPAdapter(max_retries=0, pool_maxsize=config.threads)
        super().__init__(credentials=credentials, adapter=adapter)
        self.adapter = adapter
        self.url = url
        self._token_lock = threading.Lock()
        # google-auth's default token request timeout is 120 s: use ours.
        self.auth_session = requests.Session()
        self._auth_request = partial(
            google.auth.transport.requests.Request(self.auth_session),
            timeout=config.timeout_seconds,
        )

    @property
    def fcm_end_point(self) -> str:
        # Our URL, our project id (pyfcm would prefer the credentials' project).
        return self.url

    def _get_access_token(self) -> str:
        # pyfcm refreshes per thread and wraps transport errors as InvalidDataError;
        # we keep one token until it nears expiry and let the real error through.
        with self._token_lock:
            if not self.credentials.valid:
                self.credentials.refresh(self._auth_request)
            token: str = self.credentials.token
            return token

    def post(self, payload: bytes, timeout: float) -> requests.Response:
        """Runs in a worker thread."""
        response = self._post(payload, timeout)
        if self._is_access_token_expired(response):  # revoked or clock skew: once more
            with self._token_lock:
                self.credentials.token = None
            response = self._post(payload, timeout)
        return response

    def _post(self, payload: bytes, timeout: float) -> requests.Response:
        response: requests.Response = self.requests_session.post(
            self.url, data=payload, timeout=timeout, headers=self.request_headers()
        )
        return response


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
        self._credentials = credentials
        self._client: _OneShotFCM | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._client = _OneShotFCM(self._credentials, self._url, self._config)
        self._executor = ThreadPoolExecutor(
            max_workers=self._config.threads, thread_name_prefix="fcm"
        )

    async def close(self) -> None:
        if self._executor is not None:
            # Threads still waiting on a hung request end at their own timeout.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._client is not None:
            self._client.adapter.close()
            self._client.auth_session.close()
            self._client = None

    async def send(self, device: Device, notification: Notification) -> Result:
        if self._client is None or self._executor is None:
            raise RuntimeError("FCMProvider.send() before start()")
        payload = self._client.parse_payload(**self._message(device, notification))
        timeout = self._config.timeout_seconds
        loop = asyncio.get_running_loop()
        try:
            # The whole call, waiting for a free thread included, within the timeout.
            async with asyncio.timeout(timeout):
                response = await loop.run_in_executor(
                    self._executor, self._client.post, payload, timeout
                )
        except (
            TimeoutError,
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
        return {
            "fcm_token": device.token,
            "notification_title": notification.title,
            "notification_body": notification.body,
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
            "apns_config": {
                "headers": {
                    "apns-push-type": "alert",
                    "apns-priority": "10",
                    "apns-collapse-id": collapse_id(notification.conversation_id),
                },
                "payload": {"aps": aps},
            },
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

    def _classify(self, response: requests.Response) -> Result:
        assert self._client is not None
        status = response.status_code
        try:
            body = self._client.parse_response(response)
        except FCMNotRegisteredError:  # 404 UNREGISTERED: the app was uninstalled
            return Result(Outcome.DEAD_TOKEN, status=status, error="UNREGISTERED")
        except InvalidDataError:
            # 400: a bad token is dead; anything else wrong in the message is our bug.
            dead = _names_the_token(response)
            outcome = Outcome.DEAD_TOKEN if dead else Outcome.FAILED
            return Result(outcome, status=status, error=_error_message(response))
        except (AuthenticationError, FCMSenderIdMismatchError):  # 401 / 403
            return Result(Outcome.FAILED, status=status, error=_error_message(response))
        except FCMServerError:  # 429, 5xx, an empty 200: busy or down
            if status == 200 or status == 429 or status >= 500:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return Result(
                    Outcome.RETRY,
                    status=status,
                    retry_after=retry_after,
                    error=_error_message(response),
                )
            return Result(Outcome.FAILED, status=status, error=_error_message(response))
        except ValueError:  # a 200 whose body isn't JSON: FCM took it all the same
            return Result(Outcome.DELIVERED, status=status)
        return Result(Outcome.DELIVERED, status=status, extra={"name": body.get("name")})


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
            threads=max(1, min(settings.push_concurrency_for("fcm"), 32)),
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
    """About what FCM counts against its limit: the notification's texts and the data."""
    return len(
        json.dumps(
            [notification.title, notification.body, string_values(notification.data)],
            ensure_ascii=False,
            default=str,
        ).encode()
    )


def _error_body(response: requests.Response) -> dict[str, Any]:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _names_the_token(response: requests.Response) -> bool:
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


def _error_message(response: requests.Response) -> str:
    error = _error_body(response)
    codes = [d.get("errorCode") for d in error.get("details") or [] if isinstance(d, dict)]
    code = next((c for c in codes if c), error.get("status") or response.status_code)
    return f"{code}: {error.get('message') or response.reason}"[:200]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
