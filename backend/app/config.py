"""Settings read once from the environment (and an optional `.env` file) at start-up."""

from __future__ import annotations

import logging
import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = ROOT / "data"
MIN_SECRET_LENGTH = 32


class ConfigError(RuntimeError):
    """The configuration cannot be used: the server refuses to start."""


class Settings(BaseSettings):
    # A `.env` at the repository root (or in the working directory) is read too.
    model_config = SettingsConfigDict(env_file=(ROOT / ".env", ".env"), extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = ""
    redis_url: str = ""
    secret_key: str = ""
    node_id: str = Field(default_factory=lambda: secrets.token_hex(4))

    # argon2-cffi's profile: RFC_9106_LOW_MEMORY in production, CHEAPEST for tests.
    password_profile: str = "RFC_9106_LOW_MEMORY"
    access_token_ttl_seconds: int = 7 * 24 * 3600
    max_message_length: int = 4000
    # Transactions the message writer runs side by side (PostgreSQL; SQLite has one).
    # One lane makes the fewest, largest commits (each waits on a disk flush); more pay
    # where PostgreSQL has cores and a disk to spare.
    writer_lanes: int = Field(default=1, ge=1, le=16)
    max_frame_bytes: int = 64 * 1024
    max_body_bytes: int = 1024 * 1024
    websocket_compression: bool = False

    # Flood control: a token bucket per user (sends) and per username+address (logins).
    send_rate_per_second: float = 20.0
    send_burst: int = 50
    login_rate_per_minute: float = 10.0
    login_burst: int = 10

    # Presence: each node refreshes its users in Redis every heartbeat; a node that
    # stops (kill -9) stops counting once the TTL runs out.
    presence_heartbeat_seconds: float = 30.0
    presence_ttl_seconds: float = 90.0
    # Every Redis key and channel starts with this, so deployments (or tests) can share
    # one Redis. A Redis call waits at most this long: when Redis is away the node serves
    # its own sockets rather than waiting on it.
    redis_prefix: str = "msg:"
    redis_timeout_seconds: float = 2.0

    # Push delivery. Each provider has its own in-flight limit: its own setting, else
    # push_concurrency (see push_concurrency_for).
    push_concurrency: int = Field(default=200, ge=1)
    push_concurrency_fcm: int | None = Field(default=None, ge=1)
    push_concurrency_apns: int | None = Field(default=None, ge=1)
    push_concurrency_web_push: int | None = Field(default=None, ge=1)
    push_timeout_seconds: float = 10.0
    push_max_attempts: int = 5
    push_backoff_base_seconds: float = 1.0
    push_backoff_max_seconds: float = 60.0
    # A node renews its jobs' leases every recovery interval; keep it under a third of the lease.
    push_lease_seconds: float = 60.0
    push_recovery_interval_seconds: float = 15.0
    push_device_retention_days: int = 90
    push_attempt_retention_days: int = 30
    push_ttl_seconds: int = 24 * 3600
    cleanup_interval_seconds: float = 24 * 3600
    web_base_url: str = ""

    # Browsers hand out https endpoints only; plain http is for local fakes in tests.
    web_push_allow_http: bool = False
    vapid_private_key: str = ""
    vapid_public_key: str = ""
    vapid_subject: str = ""
    fcm_service_account_file: str = ""
    fcm_project_id: str = ""
    fcm_endpoint: str = ""
    apns_key_file: str = ""
    apns_key_id: str = ""
    apns_team_id: str = ""
    apns_topic: str = ""
    apns_use_sandbox: bool = False
    apns_endpoint: str = ""
    apns_ca_file: str = ""

    log_level: str = "INFO"

    @cached_property
    def effective_database_url(self) -> str:
        if self.database_url:
            return normalise_database_url(self.database_url)
        DEFAULT_DATA_DIR.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{DEFAULT_DATA_DIR / 'messenger.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    def push_concurrency_for(self, provider: str) -> int:
        """The provider's in-flight limit on this node ("fcm", "apns" or "web_push")."""
        own = {
            "fcm": self.push_concurrency_fcm,
            "apns": self.push_concurrency_apns,
            "web_push": self.push_concurrency_web_push,
        }.get(provider)
        return self.push_concurrency if own is None else own

    @property
    def public_base_url(self) -> str:
        return self.web_base_url.rstrip("/") or f"http://{self.host}:{self.port}"

    @cached_property
    def signing_key(self) -> str:
        """The key that signs access tokens.

        The embedded default (SQLite) makes one and keeps it next to the database so
        tokens survive a restart; a shared deployment must be given a strong one.
        """
        if len(self.secret_key) >= MIN_SECRET_LENGTH:
            return self.secret_key
        if not self.is_sqlite:
            raise ConfigError(
                f"SECRET_KEY must be set to at least {MIN_SECRET_LENGTH} characters "
                "when DATABASE_URL is not the embedded SQLite default"
            )
        if self.secret_key:
            log.warning("SECRET_KEY is shorter than %d characters", MIN_SECRET_LENGTH)
            return self.secret_key
        key_file = DEFAULT_DATA_DIR / "secret_key"
        DEFAULT_DATA_DIR.mkdir(parents=True, exist_ok=True)
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(48))
            key_file.chmod(0o600)
        log.warning("SECRET_KEY is not set: using the generated key in %s", key_file)
        return key_file.read_text().strip()


def normalise_database_url(url: str) -> str:
    """Accept the usual `postgresql://` form and use the async drivers."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url
