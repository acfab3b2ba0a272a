"""A fake Web Push service (RFC 8030) that checks VAPID (RFC 8292) and decrypts (RFC 8291).

The test plays the browser: `subscribe()` makes the subscriber's P-256 key pair and
auth secret, and returns the PushSubscription JSON (the device token) whose endpoint
is this fake. Every accepted request is decrypted and recorded in `received`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import time
import zlib
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import http_ece
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from py_vapid import jwt as vapid_jwt

from . import AiohttpFake, Mode

_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_URGENCIES = {"very-low", "low", "normal", "high"}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class VapidKeys:
    private_raw: str  # base64url of the 32-byte private value (43 chars): VAPID_PRIVATE_KEY
    public: str  # base64url uncompressed point (87 chars): VAPID_PUBLIC_KEY
    pem: bytes  # the same private key as PKCS8 PEM


def make_vapid_keys() -> VapidKeys:
    v = Vapid02()
    v.generate_keys()
    raw = v.private_key.private_numbers().private_value.to_bytes(32, "big")
    point = v.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return VapidKeys(private_raw=b64url(raw), public=b64url(point), pem=v.private_pem())


@dataclass
class Subscriber:
    """The browser's side of one subscription."""

    sub_id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    @property
    def token(self) -> str:
        p256dh = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return json.dumps(
            {
                "endpoint": self.endpoint,
                "keys": {"p256dh": b64url(p256dh), "auth": b64url(self.auth)},
            }
        )


@dataclass
class Received:
    sub_id: str
    status: int
    headers: dict[str, str]
    claims: dict[str, Any]
    payload: dict[str, Any] | None = None  # decrypted, on 201 only


class FakePushService(AiohttpFake):
    def __init__(self, vapid_public_key: str) -> None:
        super().__init__()
        # The applicationServerKey the subscriptions were made with.
        self.vapid_public_key = vapid_public_key
        self.subscribers: dict[str, Subscriber] = {}
        self.received: list[Received] = []
        # Requests that followed a REDIRECT answer: a client that never follows keeps it 0.
        self.redirects_followed = 0
        # Authorization header -> its parts and claims, once its signature held.
        self._verified: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}
        self.app.router.add_post("/push/{sub_id}", self._push)
        self.app.router.add_route("*", "/redirected/{sub_id}", self._redirected)

    def subscribe(self, *modes: Mode) -> str:
        """A new subscription (its JSON is the device token), answering `modes` in turn."""
        sub = Subscriber(sub_id=secrets.token_urlsafe(12), endpoint="")
        sub.endpoint = f"{self.base_url}/push/{sub.sub_id}"
        self.subscribers[sub.sub_id] = sub
        if modes:
            self.modes.set(sub.sub_id, *modes)
        return sub.token

    def received_for(self, token: str) -> list[Received]:
        sub_id = json.loads(token)["endpoint"].rsplit("/", 1)[1]
        return [r for r in self.received if r.sub_id == sub_id]

    def reset(self) -> None:
        self.received.clear()
        self.modes.reset()

    async def _push(self, request: web.Request) -> web.StreamResponse:
        sub = self.subscribers.get(request.match_info["sub_id"])
        if sub is None:
            return _error(404, 102, "Request did not validate invalid token")
        claims, problem = self._check_vapid(request.headers.get("Authorization", ""))
        if problem:
            return problem
        headers = {
            k: request.headers[k]
            for k in ("TTL", "Urgency", "Topic", "Content-Encoding")
            if k in request.headers
        }
        if not re.fullmatch(r"\d+", headers.get("TTL", "")):
            return _error(400, 112, "Missing or invalid TTL header")
        if "Urgency" in headers and headers["Urgency"] not in _URGENCIES:
            return _error(400, 110, "Invalid Urgency header")
        if "Topic" in headers and not _TOPIC_RE.fullmatch(headers["Topic"]):
            return _error(400, 113, "Topic must be at most 32 URL-safe base64 characters")
        if headers.get("Content-Encoding") != "aes128gcm":
            return _error(400, 110, "Unknown Content-Encoding")
        body = await request.read()
        if len(body) > 4096:
            return _error(413, 104, "Payload too large")

        mode = self.modes.next(sub.sub_id)
        record = Received(sub.sub_id, 0, headers, claims)
        self.received.append(record)
        if mode is Mode.HANG:
            return await self.hang()
        if mode in (Mode.DEAD, Mode.BAD_TOKEN):
            record.status = 410
            return _error(410, 106, "Subscription is no longer valid")
        if mode is Mode.THROTTLED:
            record.status = 429
            return _error(429, 999, "Too many requests", {"Retry-After": self.retry_after})
        if mode is Mode.DOWN:
            record.status = 503
            return _error(503, 202, "Service unavailable")
        if mode is Mode.REDIRECT:
            record.status = 307
            location = f"{self.base_url}/redirected/{sub.sub_id}"
            return web.Response(status=307, headers={"Location": location})
        if mode is Mode.GZIP_BOMB:
            record.status = 400
            return web.Response(
                status=400,
                body=gzip_bomb(),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        if mode is Mode.ENDLESS:
            record.status = 201
            return await self._endless(request)
        try:
            plain = http_ece.decrypt(
                body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm"
            )
            record.payload = json.loads(plain)
        except Exception:
            record.status = 400
            return _error(400, 110, "Could not decrypt the payload")
        record.status = 201
        return web.Response(
            status=201, headers={"Location": f"{self.base_url}/m/{secrets.token_hex(8)}"}
        )

    async def _redirected(self, request: web.Request) -> web.Response:
        self.redirects_followed += 1
        return web.Response(status=201)

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=201)
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            while not self._stopping.is_set():
                await response.write(chunk)
                await asyncio.sleep(0)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what a client that reads a bounded answer does
        return response

    def _check_vapid(self, authorization: str) -> tuple[dict[str, Any], web.Response | None]:
        # A header whose signature held once is not verified again (as a push service
        # would cache it): the claims are still checked at every push, below.
        known = self._verified.get(authorization)
        if known is None:
            try:
                if not Vapid02.verify(authorization):
                    return {}, _error(401, 109, "Invalid VAPID signature")
                parts = dict(p.split("=", 1) for p in authorization.split(" ", 1)[1].split(","))
                known = parts, vapid_jwt.decode(parts["t"], parts["k"])
            except Exception:
                return {}, _error(401, 109, "Missing or malformed VAPID Authorization header")
            if len(self._verified) >= 1000:
                self._verified.clear()
            self._verified[authorization] = known
        parts, claims = known[0], dict(known[1])
        if parts["k"] != self.vapid_public_key:
            # The subscription belongs to another applicationServerKey.
            return claims, _error(403, 109, "VAPID key does not match the subscription")
        now = time.time()
        if claims.get("aud") != self.base_url:
            return claims, _error(401, 109, "VAPID aud is not this push service's origin")
        if not (now < int(claims.get("exp", 0)) <= now + 24 * 3600):
            return claims, _error(401, 109, "VAPID exp is in the past or more than 24h away")
        if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            return claims, _error(401, 109, "VAPID sub must be a mailto: or https: URL")
        return claims, None


_BOMB: list[bytes] = []


def gzip_bomb() -> bytes:
    """About 100 KB of gzip that inflates to 100 MiB of zeros (made once)."""
    if not _BOMB:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
        zeros = bytes(1 << 20)
        _BOMB.append(b"".join(packer.compress(zeros) for _ in range(100)) + packer.flush())
    return _BOMB[0]


def _error(
    status: int, errno: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    # The shape Mozilla's autopush answers with.
    body = {"code": status, "errno": errno, "error": HTTPStatus(status).phrase, "message": message}
    return web.json_response(body, status=status, headers=headers)
