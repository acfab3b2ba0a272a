"""A fake FCM HTTP v1 API with its OAuth token endpoint.

`write_service_account(dir)` makes a service account with a fresh RSA key whose
`token_uri` is this fake's /token. /token verifies the RS256 JWT assertion the way
Google does and hands out access tokens; messages:send checks the bearer token and the
message (data values must be strings, ...) and answers in Google's error format.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import AiohttpFake, Mode

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

_MESSAGE_FIELDS = {
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "token",
    "topic",
    "condition",
}
_NOTIFICATION_FIELDS = {"title", "body", "image"}
_ANDROID_FIELDS = {
    "collapse_key",
    "priority",
    "ttl",
    "restricted_package_name",
    "data",
    "notification",
    "fcm_options",
    "direct_boot_ok",
}
# AndroidNotification's fields (the ones a server may set).
_ANDROID_NOTIFICATION_FIELDS = {
    "title",
    "body",
    "icon",
    "color",
    "sound",
    "tag",
    "click_action",
    "body_loc_key",
    "body_loc_args",
    "title_loc_key",
    "title_loc_args",
    "channel_id",
    "ticker",
    "sticky",
    "event_time",
    "local_only",
    "notification_priority",
    "default_sound",
    "default_vibrate_timings",
    "default_light_settings",
    "vibrate_timings",
    "visibility",
    "notification_count",
    "light_settings",
    "image",
    "bypass_proxy_notification",
    "proxy",
}
_RESERVED_DATA_KEYS = {"from", "notification", "message_type"}
_TTL_RE = re.compile(r"^\d+(\.\d{1,9})?s$")


class InvalidArgument(Exception):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Received:
    token: str | None
    status: int
    message: dict[str, Any]
    headers: dict[str, str]


class FakeFCM(AiohttpFake):
    def __init__(self, project_id: str = "fake-project") -> None:
        super().__init__()
        self.project_id = project_id
        self.client_email = f"firebase-adminsdk@{project_id}.iam.gserviceaccount.com"
        self.key_id = secrets.token_hex(20)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.access_tokens: set[str] = set()
        self.expired_tokens: set[str] = set()
        self.token_requests: list[dict[str, Any]] = []  # the verified assertion claims
        self.received: list[Received] = []
        self.app.router.add_post("/token", self._token)
        self.app.router.add_post("/v1/projects/{project}/messages:send", self._send)

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def write_service_account(self, directory: Path) -> Path:
        """The service-account JSON, as the Firebase console downloads it."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        info = {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        }
        path = Path(directory) / "service-account.json"
        path.write_text(json.dumps(info))
        return path

    def expire_tokens(self) -> None:
        """Every access token handed out so far is now expired."""
        self.expired_tokens |= self.access_tokens
        self.access_tokens.clear()

    def received_for(self, token: str) -> list[Received]:
        return [r for r in self.received if r.token == token]

    def reset(self) -> None:
        self.received.clear()
        self.token_requests.clear()
        self.modes.reset()

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type")
        assertion = str(form.get("assertion", ""))
        try:
            header = jwt.get_unverified_header(assertion)
            if header.get("alg") != "RS256" or header.get("kid") != self.key_id:
                return _oauth_error("invalid_grant", "Invalid JWT Signature.")
            claims = jwt.decode(
                assertion,
                self._key.public_key(),
                algorithms=["RS256"],
                audience=[GOOGLE_TOKEN_URI, self.token_uri],
                issuer=self.client_email,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.InvalidTokenError as exc:
            return _oauth_error("invalid_grant", f"Invalid JWT: {exc}")
        if claims["exp"] - claims["iat"] > 3600:
            return _oauth_error("invalid_grant", "Invalid JWT: expiration more than 1h after iat")
        if SCOPE not in str(claims.get("scope", "")).split():
            return _oauth_error("invalid_scope", "Missing the firebase.messaging scope")
        self.token_requests.append(claims)
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self.access_tokens.add(token)
        return web.json_response(
            {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
        )

    async def _send(self, request: web.Request) -> web.StreamResponse:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if bearer in self.expired_tokens:
            return _google_error(
                401,
                "Request had invalid authentication credentials.",
                [
                    {
                        "@type": ERROR_INFO,
                        "reason": "ACCESS_TOKEN_EXPIRED",
                        "domain": "googleapis.com",
                    }
                ],
            )
        if bearer not in self.access_tokens:
            return _google_error(401, "Request had invalid authentication credentials.")
        if request.match_info["project"] != self.project_id:
            return _google_error(
                403,
                "Permission 'cloudmessaging.messages.create' denied on resource "
                "(or it may not exist).",
            )
        body: Any = None
        try:
            body = json.loads(await request.read())
            message = _validate(body)
        except (ValueError, InvalidArgument) as exc:
            field = getattr(exc, "field", None)
            self.received.append(Received(None, 400, body if isinstance(body, dict) else {}, {}))
            return _invalid_argument(str(exc), field)

        token = message["token"]
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("content-type", "authorization")
        }
        record = Received(token, 0, message, headers)
        self.received.append(record)
        mode = self.modes.next(token)
        if mode is Mode.HANG:
            return await self.hang()
        record.status, response = self._answer(mode)
        return response

    def _answer(self, mode: Mode) -> tuple[int, web.Response]:
        if mode is Mode.DEAD:
            return 404, _google_error(
                404,
                "Requested entity was not found.",
                [{"@type": FCM_ERROR, "errorCode": "UNREGISTERED"}],
            )
        if mode is Mode.BAD_TOKEN:
            return 400, _invalid_argument(
                "The registration token is not a valid FCM registration token", "message.token"
            )
        if mode is Mode.THROTTLED:
            response = _google_error(
                429,
                "Quota exceeded for quota metric 'Send requests'.",
                [{"@type": FCM_ERROR, "errorCode": "QUOTA_EXCEEDED"}],
            )
            response.headers["Retry-After"] = self.retry_after
            return 429, response
        if mode is Mode.DOWN:
            return 503, _google_error(
                503,
                "The service is currently unavailable.",
                [{"@type": FCM_ERROR, "errorCode": "UNAVAILABLE"}],
            )
        message_id = f"0:{int(time.time() * 1000)}%{secrets.token_hex(8)}"
        name = f"projects/{self.project_id}/messages/{message_id}"
        return 200, web.json_response({"name": name})


def _validate(body: Any) -> dict[str, Any]:
    """What FCM rejects with 400 INVALID_ARGUMENT (the parts our provider could get wrong)."""
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        raise InvalidArgument("Invalid JSON payload received. Missing 'message'.")
    _only(body, {"message", "validate_only"}, "")
    message = body["message"]
    _only(message, _MESSAGE_FIELDS, "message")
    targets = [k for k in ("token", "topic", "condition") if k in message]
    if len(targets) != 1:
        raise InvalidArgument("Exactly one of token, topic or condition must be set.", "message")
    if not isinstance(message.get("token"), str) or not message["token"]:
        raise InvalidArgument(
            "The registration token is not a valid FCM registration token", "message.token"
        )
    data = message.get("data", {})
    if not isinstance(data, dict):
        raise InvalidArgument("Invalid value at 'message.data'", "message.data")
    for i, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            where = f"message.data[{i}].value"
            raise InvalidArgument(
                f"Invalid value at '{where}' (TYPE_STRING), {json.dumps(value)}", where
            )
        if key in _RESERVED_DATA_KEYS or key.startswith(("google.", "gcm.")):
            raise InvalidArgument(f"Invalid data payload key: {key}", "message.data")
    notification = message.get("notification", {})
    _only(notification, _NOTIFICATION_FIELDS, "message.notification")
    _strings(notification, "message.notification")
    android = message.get("android", {})
    _only(android, _ANDROID_FIELDS, "message.android")
    if str(android.get("priority", "normal")).lower() not in ("normal", "high"):
        raise InvalidArgument(
            "Invalid value at 'message.android.priority'", "message.android.priority"
        )
    if "ttl" in android and not _TTL_RE.match(str(android["ttl"])):
        raise InvalidArgument(
            "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
            "message.android.ttl",
        )
    android_notification = android.get("notification", {})
    _only(android_notification, _ANDROID_NOTIFICATION_FIELDS, "message.android.notification")
    _strings(android_notification, "message.android.notification", numbers_ok=True)
    count = android_notification.get("notification_count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        raise InvalidArgument(
            "Invalid value at 'message.android.notification.notification_count' (TYPE_INT32)",
            "message.android.notification.notification_count",
        )
    apns = message.get("apns", {})
    _only(apns, {"headers", "payload", "fcm_options", "live_activity_token"}, "message.apns")
    _strings(apns.get("headers", {}), "message.apns.headers")
    if len(apns.get("headers", {}).get("apns-collapse-id", "").encode()) > 64:
        raise InvalidArgument("apns-collapse-id must not exceed 64 bytes", "message.apns.headers")
    webpush = message.get("webpush", {})
    _only(webpush, {"headers", "data", "notification", "fcm_options"}, "message.webpush")
    _strings(webpush.get("headers", {}), "message.webpush.headers")
    topic = webpush.get("headers", {}).get("Topic")
    if topic is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", topic):
        raise InvalidArgument("Invalid webpush Topic header", "message.webpush.headers")
    if "payload" in apns and not isinstance(apns["payload"].get("aps"), dict):
        raise InvalidArgument(
            "apns.payload must contain an 'aps' dictionary", "message.apns.payload"
        )
    apns_headers = apns.get("headers", {})
    if apns_headers.get("apns-push-type") == "background":
        # FCM passes APNs' answer on: a background push needs priority 5 and an aps of
        # content-available 1 without alert or sound (and no notification block here).
        aps = apns.get("payload", {}).get("aps", {})
        if (
            apns_headers.get("apns-priority") != "5"
            or aps.get("content-available") != 1
            or {"alert", "sound"} & aps.keys()
            or "notification" in message
        ):
            raise InvalidArgument(
                "Request contains an invalid argument (APNs background push)", "message.apns"
            )
    return message


def _only(obj: Any, allowed: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"Invalid value at '{where}'", where)
    for key in obj:
        if key not in allowed:
            raise InvalidArgument(
                f'Invalid JSON payload received. Unknown name "{key}" at '
                f"'{where}': Cannot find field.",
                where,
            )


def _strings(obj: Any, where: str, numbers_ok: bool = False) -> None:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"Invalid value at '{where}'", where)
    for key, value in obj.items():
        if not (isinstance(value, str) or (numbers_ok and isinstance(value, int | list | bool))):
            raise InvalidArgument(
                f"Invalid value at '{where}.{key}' (TYPE_STRING)", f"{where}.{key}"
            )


def _google_error(
    code: int, message: str, details: list[dict[str, Any]] | None = None
) -> web.Response:
    status = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        503: "UNAVAILABLE",
    }.get(code, HTTPStatus(code).phrase.upper())
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=code)


def _invalid_argument(message: str, field: str | None) -> web.Response:
    details: list[dict[str, Any]] = [{"@type": FCM_ERROR, "errorCode": "INVALID_ARGUMENT"}]
    if field:
        details.append(
            {"@type": BAD_REQUEST, "fieldViolations": [{"field": field, "description": message}]}
        )
    return _google_error(400, message, details)


def _oauth_error(error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)
