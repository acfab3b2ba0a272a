"""Devices registered for push: register, list, unregister; the VAPID public key.

A device is bound to the sign-in session that registered it (or registered it last):
ending that session switches it off (app.sessions). A device that moves to another user
gets a new id, so nothing of its former user's (action tokens, delivery history) names
it any more.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import uuid
from typing import Annotated, Any, Literal

import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, StringConstraints
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import metrics
from app.bot_tokens import is_bot_session
from app.config import Settings
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.messenger.device_metrics import count_failures
from app.messenger.models import DeviceToken
from app.messenger.push.endpoints import EndpointPolicy, EndpointRefused
from app.messenger.push.service import PushService
from app.messenger.push.webpush import WebPushProvider
from app.models import Session, User
from app.openapi import schemas
from app.openapi.api import documented
from app.ratelimit import RateLimiter, too_many_requests
from app.web import RequestReader

log = logging.getLogger(__name__)
_devices = DeviceToken.__table__
_users = User.__table__
_sessions = Session.__table__

# Which providers can reach which platform (FCM also delivers to iOS and browsers).
PROVIDERS_FOR = {"ios": {"apns", "fcm"}, "android": {"fcm"}, "web": {"web_push", "fcm"}}
MAX_TOKEN = 1024
_APNS_TOKEN = re.compile(r"^[0-9a-fA-F]{32,200}$")
_FCM_TOKEN = re.compile(r"^[A-Za-z0-9_:\-]{16,1024}$")


class RegisterBody(BaseModel):
    device_token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    platform: Literal["ios", "android", "web"]
    provider: Literal["fcm", "apns", "web_push"]
    device_name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = (
        None
    )


def _b64url(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def parse_subscription(raw: str, endpoints: EndpointPolicy) -> dict[str, Any]:
    """A browser PushSubscription as the canonical dict we store; 422 if malformed."""
    try:
        sub = orjson.loads(raw)
        endpoint = sub["endpoint"]
        keys = sub["keys"]
        p256dh = _b64url(keys["p256dh"])
        auth = _b64url(keys["auth"])
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error):
        raise ApiError(
            422,
            "invalid_subscription",
            "device_token must be a PushSubscription: {endpoint, keys: {p256dh, auth}} "
            "with a P-256 public key and a 16-byte auth secret",
        ) from None
    if isinstance(endpoint, str) and len(endpoint) > MAX_TOKEN:
        raise ApiError(422, "invalid_subscription", "the subscription endpoint is too long")
    try:
        endpoints.check(endpoint)  # a known push service's host, https, nothing odd
    except EndpointRefused as exc:
        raise ApiError(422, "invalid_subscription", str(exc)) from None
    if len(auth) != 16:
        raise ApiError(422, "invalid_subscription", "keys.auth must be 16 bytes")
    return {"endpoint": endpoint, "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]}}


def device_key(token: str) -> str:
    """What identifies a device: a Web Push subscription's endpoint, else the token."""
    if token.lstrip().startswith("{"):
        try:
            endpoint = orjson.loads(token).get("endpoint")
        except (orjson.JSONDecodeError, AttributeError):
            return token
        if isinstance(endpoint, str):
            return endpoint
    return token


def normalise_token(provider: str, token: str, endpoints: EndpointPolicy) -> str:
    if provider == "web_push":
        sub = parse_subscription(token, endpoints)
        return orjson.dumps(sub, option=orjson.OPT_SORT_KEYS).decode()
    token = token.strip()
    pattern = _APNS_TOKEN if provider == "apns" else _FCM_TOKEN
    if not pattern.match(token):
        raise ApiError(422, "invalid_token_format", f"device_token is not a valid {provider} token")
    return token


class DeviceRoutes:
    """/api/v1/messenger/devices and the VAPID public key."""

    def __init__(
        self,
        engine: AsyncEngine,
        reader: RequestReader,
        push: PushService,
        endpoints: EndpointPolicy,
        limiter: RateLimiter,
        settings: Settings,
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._push = push
        self._endpoints = endpoints  # where a Web Push subscription may point
        self._limiter = limiter
        self._settings = settings

    @property
    def routes(self) -> list[Route]:
        return [
            Route(
                "/api/v1/messenger/devices/register",
                count_failures(self.register_device),
                methods=["POST"],
            ),
            Route("/api/v1/messenger/devices", self.list_devices, methods=["GET"]),
            Route(
                "/api/v1/messenger/devices/{device_token:path}",
                self.unregister_device,
                methods=["DELETE"],
            ),
            Route(
                "/api/v1/messenger/push/vapid-public-key", self.vapid_public_key, methods=["GET"]
            ),
        ]

    @documented(
        "Register a device for pushes (again: refresh it)",
        body=RegisterBody,
        responses={
            200: schemas.DeviceRegistered,
            201: schemas.DeviceRegistered,
            403: "a bot cannot register devices",
            409: "the token was registered at the same moment elsewhere",
            422: "a token of the wrong form for its provider",
            429: "too many device registrations",
        },
        tags=["devices"],
    )
    async def register_device(self, request: Request) -> Response:
        caller = await self._reader.caller(request)
        user_id, session_id = caller.user_id, caller.session_id
        if is_bot_session(session_id):
            # No device, no push: a bot is never pushed (it reads its sockets or REST).
            raise ApiError(
                403, "bots_cannot_register_devices", "a bot cannot register devices for push"
            )
        settings = self._settings
        retry_after = await self._limiter.hit(
            f"device:{user_id}",
            settings.device_registration_rate_per_minute / 60,
            settings.device_registration_burst,
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many device registrations; try again later")
        body = await self._reader.json(request, RegisterBody)
        if body.provider not in PROVIDERS_FOR[body.platform]:
            raise ApiError(
                422,
                "invalid_field",
                f"provider {body.provider} does not serve platform {body.platform}",
            )
        token = normalise_token(body.provider, body.device_token, self._endpoints)
        key = device_key(token)
        now = utcnow()
        values = {
            "user_id": user_id,
            "token": token,
            "platform": body.platform,
            "provider": body.provider,
            "device_name": body.device_name,
            "is_active": True,
            "last_used_at": now,
            "session_id": session_id,
        }
        engine = self._engine
        postgresql = engine.dialect.name == "postgresql"
        for _ in range(2):
            try:
                async with engine.begin() as conn:
                    # One registration of this user's at a time (PostgreSQL; SQLite has one
                    # writer anyway), so two at once cannot both slip past the cap.
                    await conn.execute(
                        select(_users.c.id)
                        .where(_users.c.id == user_id)
                        .with_for_update(key_share=True)
                    )
                    if postgresql:
                        await _session_stands(conn, user_id, session_id)
                    row = (
                        await conn.execute(
                            select(_devices.c.id, _devices.c.user_id, _devices.c.session_id).where(
                                _devices.c.token_key == key
                            )
                        )
                    ).first()
                    evicted: list[str] = []
                    if row is not None and row.user_id == user_id:
                        # Known token: refresh it (and bind it to the caller's session).
                        await conn.execute(
                            update(_devices).where(_devices.c.id == row.id).values(**values)
                        )
                        device_id, status = row.id, 200
                        if row.session_id != session_id:
                            log.info(
                                "device bound to another session device=%s user=%s session=%s",
                                device_id,
                                user_id,
                                session_id,
                            )
                    elif row is not None:
                        # Another user's: it moves to the caller, under a new id.
                        device_id, status = str(uuid.uuid4()), 200
                        await conn.execute(
                            update(_devices)
                            .where(_devices.c.id == row.id)
                            .values(id=device_id, created_at=now, **values)
                        )
                        log.info(
                            "device moved device=%s new_id=%s from=%s to=%s",
                            row.id,
                            device_id,
                            row.user_id,
                            user_id,
                        )
                        evicted = await self._evict_beyond_cap(conn, user_id, device_id)
                    else:
                        device_id, status = str(uuid.uuid4()), 201
                        await conn.execute(
                            _devices.insert().values(
                                id=device_id, token_key=key, created_at=now, **values
                            )
                        )
                        evicted = await self._evict_beyond_cap(conn, user_id, device_id)
                    if not postgresql:
                        # SQLite: this transaction holds the only write lock once it has
                        # written, so a revocation commits either before this check or
                        # after this device is bound (and then switches it off).
                        await _session_stands(conn, user_id, session_id)
            except IntegrityError:
                continue  # registered concurrently: go round and refresh it
            for old in evicted:
                log.info(
                    "device evicted, over the limit device=%s user=%s for=%s",
                    old,
                    user_id,
                    device_id,
                )
            if status == 201:
                log.info(
                    "device registered device=%s user=%s session=%s provider=%s",
                    device_id,
                    user_id,
                    session_id,
                    body.provider,
                )
                metrics.device_registrations.labels(body.provider).inc()
            return _registered(device_id, user_id, body.platform, status)
        raise ApiError(409, "conflict", "the device was registered concurrently; try again")

    async def _evict_beyond_cap(self, conn: AsyncConnection, user_id: int, keep: str) -> list[str]:
        """Past MAX_DEVICES_PER_USER, remove the user's least recently used devices (never
        `keep`, the one just registered); their ids."""
        mine = _devices.c.user_id == user_id
        count = await conn.scalar(select(func.count()).select_from(_devices).where(mine))
        excess = (count or 0) - self._settings.max_devices_per_user
        if excess <= 0:
            return []
        oldest = list(
            (
                await conn.execute(
                    select(_devices.c.id)
                    .where(mine, _devices.c.id != keep)
                    .order_by(_devices.c.last_used_at, _devices.c.created_at, _devices.c.id)
                    .limit(excess)
                )
            ).scalars()
        )
        await conn.execute(delete(_devices).where(_devices.c.id.in_(oldest)))
        return oldest

    @documented(
        "Unregister a device",
        responses={200: schemas.DeviceRemoved, 404: "you have no device with that token"},
        tags=["devices"],
        path={"device_token": "the token as registered, percent-encoded; may contain '/'"},
    )
    async def unregister_device(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        key = device_key(request.path_params["device_token"])
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(_devices).where(_devices.c.token_key == key, _devices.c.user_id == user_id)
            )
        if result.rowcount == 0:
            raise ApiError(404, "device_not_found", "you have no device with that token")
        log.info("device unregistered user=%s", user_id)
        return JSONResponse({"success": True, "message": "device unregistered"})

    @documented("The caller's devices", responses={200: schemas.DeviceList}, tags=["devices"])
    async def list_devices(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(_devices)
                .where(_devices.c.user_id == user_id)
                .order_by(_devices.c.created_at)
            )
            devices = [
                {
                    "id": r.id,
                    "platform": r.platform,
                    "provider": r.provider,
                    "device_name": r.device_name,
                    "is_active": r.is_active,
                    "registered_at": r.created_at,
                    "last_used_at": r.last_used_at,
                }
                for r in rows
            ]
        return JSONResponse({"devices": devices})

    @documented(
        "The Web Push applicationServerKey",
        responses={200: schemas.VapidKey, 404: "Web Push is not configured"},
        tags=["devices"],
        auth=False,
    )
    async def vapid_public_key(self, request: Request) -> Response:
        provider = self._push.providers.get("web_push")
        if not isinstance(provider, WebPushProvider):
            raise ApiError(404, "web_push_off", "Web Push is not configured on this server")
        return JSONResponse({"public_key": provider.public_key})


async def _session_stands(conn: AsyncConnection, user_id: int, session_id: str) -> None:
    """401 unless the caller's session still stands, in the registration's transaction.
    On PostgreSQL its row is share-locked before the device is written: a revocation
    under way finishes first (and this is refused), or waits for this registration to
    commit and then switches the new device off with the session's others."""
    standing = await conn.scalar(
        select(_sessions.c.id)
        .where(
            _sessions.c.id == session_id,
            _sessions.c.user_id == user_id,
            _sessions.c.revoked_at.is_(None),
            _sessions.c.expires_at > utcnow(),
        )
        .with_for_update(read=True)
    )
    if standing is None:
        raise ApiError(401, "invalid_token", "the access token is invalid, expired or revoked")


def _registered(device_id: str, user_id: int, platform: str, status: int) -> Response:
    return JSONResponse(
        {
            "status": "registered",
            "device_token_id": device_id,
            "user_id": user_id,
            "platform": platform,
        },
        status,
    )
