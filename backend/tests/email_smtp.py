"""A real SMTP server on loopback for the email tests: aiosmtpd with STARTTLS required
(a self-signed certificate the client is told to trust) and AUTH required after it.

It keeps every accepted email, parsed back with the standard library's parser, and can
be told to refuse a recipient: `fail[address] = [451, 451]` refuses it twice with a
4xx before accepting, `[550]` refuses it for good (a 5xx on RCPT stays), with the text
of `fail_text[address]` if set (an enhanced status code: "5.7.1 relaying denied").
`fail_data[address]` answers the message itself (after DATA) with that code, and an
address in `drop_data` has its connection cut after DATA, with no answer. Every AUTH
attempt is counted in `auth_attempts`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USERNAME, PASSWORD = "mailer", "smtp-secret"


@dataclass
class Received:
    rcpt: list[str]
    mail_from: str
    message: EmailMessage


@dataclass
class Sink:
    received: list[Received] = field(default_factory=list)
    fail: dict[str, list[int]] = field(default_factory=dict)
    rcpt_attempts: dict[str, int] = field(default_factory=dict)
    fail_text: dict[str, str] = field(default_factory=dict)
    fail_data: dict[str, int] = field(default_factory=dict)
    drop_data: set[str] = field(default_factory=set)
    auth_attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth: Any
    ) -> Any:
        with self.lock:
            self.auth_attempts += 1
        return _authenticate(server, session, envelope, mechanism, auth)

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [r.message for r in self.received if address in r.rcpt]

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        with self.lock:
            self.rcpt_attempts[address] = self.rcpt_attempts.get(address, 0) + 1
            codes = self.fail.get(address)
            if codes:
                code = codes[0] if codes[0] >= 500 else codes.pop(0)
                kind = "mailbox unavailable" if code >= 500 else "try again later"
                return f"{code} {self.fail_text.get(address, kind)}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = cast(EmailMessage, message_from_bytes(envelope.content, policy=policy.default))
        with self.lock:
            for address in envelope.rcpt_tos:
                if address in self.fail_data:
                    return f"{self.fail_data[address]} message refused"
                if address in self.drop_data:
                    # Taken, but the answer is lost with the connection.
                    self.received.append(
                        Received(list(envelope.rcpt_tos), envelope.mail_from, message)
                    )
                    server.transport.close()
                    return "250 never heard"
            self.received.append(Received(list(envelope.rcpt_tos), envelope.mail_from, message))
        return "250 Message accepted"


def accept_login(username: str, password: str) -> Callable[..., Any]:
    """An aiosmtpd authenticator that takes this one login and no other."""

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        ok = isinstance(auth, LoginPassword) and (auth.login, auth.password) == (
            username.encode(),
            password.encode(),
        )
        return AuthResult(success=ok)

    return authenticate


_authenticate = accept_login(USERNAME, PASSWORD)


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp.crt", directory / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SmtpServer:
    sink: Sink
    controller: Controller
    port: int
    ca_file: Path

    def settings(self) -> dict[str, Any]:
        """The node's SMTP settings for this server (retries quick, for tests)."""
        return {
            "smtp_host": "127.0.0.1",
            "smtp_port": self.port,
            "smtp_username": USERNAME,
            "smtp_password": PASSWORD,
            "smtp_starttls": True,
            "smtp_ca_file": str(self.ca_file),
            "email_from": "Messenger <noreply@messenger.test>",
            "email_backoff_base_seconds": 0.01,
            "email_backoff_max_seconds": 0.05,
        }

    def stop(self) -> None:
        self.controller.stop()


def start_smtp_server(directory: Path, starttls: bool = True) -> SmtpServer:
    """The server; without `starttls` one that offers no STARTTLS (and takes AUTH in
    clear, which a client must never try)."""
    cert, key = self_signed(directory)
    sink = Sink()
    port = free_port()
    controller = smtp_controller(sink, port, cert, key, sink.authenticate, starttls)
    controller.start()
    return SmtpServer(sink, controller, port, cert)


def smtp_controller(
    handler: Any,
    port: int,
    cert: Path,
    key: Path,
    authenticator: Callable[..., Any],
    starttls: bool = True,
) -> Controller:
    """An aiosmtpd server (not started yet) on loopback that requires AUTH, and before it
    STARTTLS with this certificate (unless `starttls` is false)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        tls_context=context if starttls else None,
        require_starttls=starttls,
        authenticator=authenticator,
        auth_require_tls=starttls,
        auth_required=True,
    )


def link_in(message: EmailMessage, path: str) -> str:
    """The first link to `path` (with its token) in the email's text part."""
    body = message.get_body(("plain",))
    assert body is not None
    found = re.search(rf"https?://\S+{re.escape(path)}\?token=\S+", body.get_content())
    assert found, body.get_content()
    return found.group(0)


def local(url: str) -> str:
    """A link's path and query, to fetch from the node under test."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def confirm_link(http: Any, url: str) -> Any:
    """Follow an emailed verification link as a person does: the page (GET changes
    nothing), then its button (POST). The POST's response."""
    page = await http.get(local(url))
    assert page.status_code == 200 and 'method="post"' in page.text, page.text
    return await http.post(local(url))
