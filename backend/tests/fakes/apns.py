"""A fake APNs: HTTP/2 over TLS with h2 on asyncio, checking what Apple checks.

At start it makes a CA and a server certificate for 127.0.0.1/localhost (trust
`ca_file`). `write_key(dir)` writes the .p8 key whose public half verifies the
provider JWT (ES256, kid = key_id, iss = team_id). Every response echoes apns-id and
an error body goes out as ONE DATA frame; a 200 has no body at all (aioapns parses
every DATA frame as JSON and hangs or breaks otherwise).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import ssl
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from . import Mode, Script

_PATH_RE = re.compile(r"^/3/device/([^/]+)$")
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_PUSH_TYPES = {
    "alert",
    "background",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "location",
    "pushtotalk",
    "controls",
    "widgets",
}


@dataclass
class Received:
    token: str
    status: int
    headers: dict[str, str]
    payload: dict[str, Any]
    jwt_header: dict[str, Any]
    jwt_claims: dict[str, Any]


class APNsError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class FakeAPNs:
    def __init__(
        self,
        team_id: str = "TEAM123456",
        key_id: str = "KEY1234567",
        topic: str = "com.example.messenger",
    ) -> None:
        self.team_id = team_id
        self.key_id = key_id
        self.topic = topic
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.modes = Script()
        self.received: list[Received] = []
        self.connections_made = 0  # since the last reset()
        self.port = 0
        self.ca_file = Path()
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_H2Server] = set()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write_key(self, directory: Path) -> Path:
        """The .p8 file, as Apple's developer portal hands it out."""
        path = Path(directory) / f"AuthKey_{self.key_id}.p8"
        path.write_bytes(
            self._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    def script(self, token: str, *modes: Mode) -> None:
        self.modes.set(token, *modes)

    def received_for(self, token: str) -> list[Received]:
        return [r for r in self.received if r.token == token]

    def reset(self) -> None:
        self.received.clear()
        self.modes.reset()
        self.connections_made = 0

    async def start(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="fake-apns-")
        cert_file, key_file, self.ca_file = _make_certificates(Path(self._dir.name))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        context.set_alpn_protocols(["h2"])
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _H2Server(self), "127.0.0.1", 0, ssl=context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for connection in list(self._connections):
            connection.transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    async def __aenter__(self) -> FakeAPNs:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, str | None] | None:
        """The answer (status, reason) for one request; None: never answer."""
        try:
            token, jwt_header, claims = self._check_request(headers)
            payload = self._check_payload(body)
            _check_push_type(headers, payload)
        except APNsError as exc:
            return exc.status, exc.reason
        record = Received(token, 0, headers, payload, jwt_header, claims)
        self.received.append(record)
        mode = self.modes.next(token)
        answer: tuple[int, str | None] | None = {
            Mode.OK: (200, None),
            Mode.DEAD: (410, "Unregistered"),
            Mode.BAD_TOKEN: (400, "BadDeviceToken"),
            Mode.THROTTLED: (429, "TooManyRequests"),
            Mode.DOWN: (503, "ServiceUnavailable"),
            Mode.HANG: None,
        }[mode]
        if answer is not None:
            record.status = answer[0]
        return answer

    def _check_request(self, h: dict[str, str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        if h.get(":method") != "POST":
            raise APNsError(405, "MethodNotAllowed")
        match = _PATH_RE.match(h.get(":path", ""))
        if not match:
            raise APNsError(404, "BadPath")
        header, claims = self._check_jwt(h.get("authorization", ""))
        if "apns-topic" not in h:
            raise APNsError(400, "MissingTopic")
        if h["apns-topic"] != self.topic:
            raise APNsError(400, "TopicDisallowed")
        if "apns-push-type" in h and h["apns-push-type"] not in _PUSH_TYPES:
            raise APNsError(400, "InvalidPushType")
        if "apns-id" in h and not _UUID_RE.match(h["apns-id"]):
            raise APNsError(400, "BadMessageId")
        if h.get("apns-priority", "10") not in ("1", "5", "10"):
            raise APNsError(400, "BadPriority")
        if not h.get("apns-expiration", "0").isdigit():
            raise APNsError(400, "BadExpirationDate")
        if len(h.get("apns-collapse-id", "").encode()) > 64:
            raise APNsError(400, "BadCollapseId")
        token = match.group(1)
        if not re.fullmatch(r"[0-9a-fA-F]{64,200}", token):
            raise APNsError(400, "BadDeviceToken")
        return token, header, claims

    def _check_jwt(self, authorization: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if not authorization.startswith("bearer "):
            raise APNsError(403, "MissingProviderToken")
        token = authorization.removeprefix("bearer ")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
                raise APNsError(403, "InvalidProviderToken")
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["ES256"],
                options={"require": ["iss", "iat"]},
            )
        except jwt.InvalidTokenError:
            raise APNsError(403, "InvalidProviderToken") from None
        if claims["iss"] != self.team_id:
            raise APNsError(403, "InvalidProviderToken")
        if claims["iat"] < time.time() - 3600:
            raise APNsError(403, "ExpiredProviderToken")
        return header, claims

    def _check_payload(self, body: bytes) -> dict[str, Any]:
        if not body:
            raise APNsError(400, "PayloadEmpty")
        if len(body) > 4096:
            raise APNsError(413, "PayloadTooLarge")
        try:
            payload = json.loads(body)
        except ValueError:
            raise APNsError(400, "BadPayload") from None  # (Apple's reason text may differ)
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            raise APNsError(400, "BadPayload")
        return payload


def _check_push_type(headers: dict[str, str], payload: dict[str, Any]) -> None:
    """Apple's rules for a background push: apns-priority 5 (10 is refused), and an aps
    of content-available 1 that asks for nothing the user would see or hear."""
    aps = payload["aps"]
    if headers.get("apns-push-type") == "background":
        if headers.get("apns-priority") != "5":
            raise APNsError(400, "BadPriority")
        if aps.get("content-available") != 1 or {"alert", "sound"} & aps.keys():
            raise APNsError(400, "BadPayload")
    elif aps.get("content-available") == 1 and not {"alert", "sound"} & aps.keys():
        # Apple: priority 10 is an error for a push that only wakes the app.
        if headers.get("apns-priority", "10") == "10":
            raise APNsError(400, "BadPriority")


class _H2Server(asyncio.Protocol):
    def __init__(self, fake: FakeAPNs) -> None:
        self.fake = fake
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.fake._connections.add(self)
        self.fake.connections_made += 1
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        self.transport.write(self.conn.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.fake._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self.streams[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
            elif isinstance(event, DataReceived):
                self.streams[event.stream_id][1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                self._respond(event.stream_id)
            elif isinstance(event, StreamReset):
                self.streams.pop(event.stream_id, None)
            elif isinstance(event, ConnectionTerminated):
                self.transport.close()
                return
        self.transport.write(self.conn.data_to_send())

    def _respond(self, stream_id: int) -> None:
        headers, body = self.streams.pop(stream_id)
        answer = self.fake.handle(headers, bytes(body))
        if answer is None:
            return  # HANG: the stream stays open
        status, reason = answer
        # APNs echoes (or assigns) apns-id on every response; aioapns matches on it.
        response = [
            (":status", str(status)),
            ("apns-id", headers.get("apns-id") or str(uuid.uuid4())),
        ]
        if reason is None:
            self.conn.send_headers(stream_id, response, end_stream=True)
            return
        error: dict[str, Any] = {"reason": reason}
        if status == 410:
            error["timestamp"] = int(time.time() * 1000)
        data = json.dumps(error).encode()
        response += [("content-type", "application/json"), ("content-length", str(len(data)))]
        self.conn.send_headers(stream_id, response)
        self.conn.send_data(stream_id, data, end_stream=True)  # one DATA frame


def _make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake APNs test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file, ca_file
