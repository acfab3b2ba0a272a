"""Settings read once from the environment (and an optional `.env` file) at start-up."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = ROOT / "data"
MIN_SECRET_LENGTH = 32


class ConfigError(RuntimeError):
    """The configuration cannot be used: the server refuses to start."""


APNS_IN_FLIGHT = 100  # APNs' default in-flight limit (see Settings.push_concurrency_for)


class Settings(BaseSettings):
    # A `.env` at the repository root (or in the working directory) is read too.
    model_config = SettingsConfigDict(env_file=(ROOT / ".env", ".env"), extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = ""
    # PostgreSQL: a statement running longer is cancelled (a send then gets 503
    # `unavailable`), a connect taking longer fails, and a request waits at most this long
    # for one of the pool's connections.
    database_statement_timeout_seconds: float = Field(default=10.0, gt=0)
    database_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    database_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    # Connections a node keeps open to PostgreSQL, and how many more it may open at a
    # peak: several nodes (and their background loops) share the server's max_connections.
    database_pool_size: int = Field(default=20, ge=1, le=500)
    database_max_overflow: int = Field(default=20, ge=0, le=500)
    redis_url: str = ""
    # A Redis Cluster instead of one Redis: seed nodes, comma-separated (redis_client.py).
    redis_cluster_url: str = ""
    secret_key: str = ""
    node_id: str = Field(default_factory=lambda: secrets.token_hex(4))

    # argon2-cffi's profile: RFC_9106_LOW_MEMORY in production, CHEAPEST for tests.
    password_profile: str = "RFC_9106_LOW_MEMORY"
    # Sessions: short access tokens (at most 15 minutes: a larger value refuses to start),
    # minted by a refresh token that rotates on each use and ends when unused this long.
    access_token_ttl_seconds: int = Field(default=900, ge=1, le=900)
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    # How long after a refresh its spent token may come again (the client never got the
    # answer) and still be renewed instead of counting as reuse; 0: never.
    refresh_reuse_grace_seconds: float = Field(default=30.0, ge=0, le=300)
    # A user's open sessions; a new sign-in beyond this ends the least recently used.
    max_sessions_per_user: int = Field(default=100, ge=1)
    # Sessions revoked or expired this long ago are deleted by the daily cleanup.
    session_retention_days: int = Field(default=30, ge=1)
    # How often each node looks for sessions revoked anywhere, to close their sockets.
    session_revocation_poll_seconds: float = Field(default=1.0, gt=0, le=4)
    # A socket opened without a token must send `auth {access_token}` within this time.
    websocket_auth_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    # Sockets still waiting for that first frame, from one client address (an IPv6
    # address's /64) and on the node: one more is closed at once (1008, 1013).
    max_pending_auth_sockets_per_address: int = Field(default=8, ge=1)
    max_pending_auth_sockets: int = Field(default=1000, ge=1)
    max_message_length: int = 4000
    # How long after sending a message its sender may edit it (0: never); past it 403.
    message_edit_window_seconds: int = Field(default=172_800, ge=0)
    # Who may do what in a group beyond its admins and owner (roles.GroupPolicy).
    group_members_may_rename: bool = False
    group_members_may_add: bool = False
    # Whether group admins (and the owner) may delete other people's messages.
    group_admins_may_delete_messages: bool = True
    # Distinct emoji on one message; one more is refused (409 `too_many_reactions`).
    max_reactions_per_message: int = Field(default=20, ge=1, le=200)
    # Message search on PostgreSQL: the text search configuration (stemming, stop words)
    # the index is built with when migration 0007 runs, and that queries use; a node
    # refuses to start when it is not one of pg_ts_config's or not the index's.
    search_language: str = Field(default="english", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # Searches per user (each may rank thousands of matches and holds a connection while
    # it runs); one more answers 429.
    search_rate_per_minute: float = Field(default=120.0, gt=0)
    search_burst: int = Field(default=10, ge=1)
    # A search that runs longer is cancelled (503 `search_timeout`); at most the database
    # statement timeout counts.
    search_timeout_seconds: float = Field(default=2.0, gt=0)
    # Transactions the message writer runs side by side (PostgreSQL; SQLite has one).
    # One lane makes the fewest, largest commits (each waits on a disk flush); more pay
    # where PostgreSQL has cores and a disk to spare.
    writer_lanes: int = Field(default=1, ge=1, le=16)
    # Sends waiting for the writer or being written on this node; one more is refused at
    # once (503 `overloaded`) rather than queued without bound.
    writer_queue_limit: int = Field(default=10_000, ge=1)
    # Sends of one socket accepted and not yet answered; beyond this the node stops
    # reading that socket until the oldest is answered.
    websocket_sends_in_flight: int = Field(default=64, ge=1)
    max_frame_bytes: int = 64 * 1024
    max_body_bytes: int = 1024 * 1024
    websocket_compression: bool = False
    # uvicorn pings every socket this often and drops one that leaves a ping unanswered for
    # the timeout: how long a half-open socket (a phone that lost its network) counts online.
    websocket_ping_interval_seconds: float = Field(default=20.0, gt=0)
    websocket_ping_timeout_seconds: float = Field(default=20.0, gt=0)

    # Flood control: token buckets per user, per username or per client address (an IPv6
    # address counts by its /64). Defaults suit a public deployment; a load test raises them.
    send_rate_per_second: float = 20.0
    send_burst: int = 50
    # Logins: one bucket per username (whatever the address) and one per address. The
    # address bucket takes the LOGIN_* values unless given its own (many users behind NAT).
    login_rate_per_minute: float = Field(default=10.0, gt=0)
    login_burst: int = Field(default=10, ge=1)
    login_address_rate_per_minute: float | None = Field(default=None, gt=0)
    login_address_burst: int | None = Field(default=None, ge=1)
    registration_rate_per_minute: float = Field(default=5.0, gt=0)  # per address
    registration_burst: int = Field(default=10, ge=1)
    conversation_rate_per_minute: float = Field(default=10.0, gt=0)  # new conversations per user
    conversation_burst: int = Field(default=20, ge=1)
    device_registration_rate_per_minute: float = Field(default=10.0, gt=0)  # per user
    device_registration_burst: int = Field(default=10, ge=1)
    # A user's devices; registering one more removes the least recently used.
    max_devices_per_user: int = Field(default=20, ge=1)
    # Bots and incoming webhooks (app/bots.py, app/messenger/webhooks.py): bots one user
    # runs, webhooks one conversation holds, posts per webhook per minute and its burst.
    max_bots_per_user: int = Field(default=20, ge=0)
    max_webhooks_per_conversation: int = Field(default=10, ge=0)
    webhook_rate_per_minute: float = Field(default=30, gt=0)
    webhook_burst: int = Field(default=10, ge=1)
    # Bots one user may make per day, deleted ones and webhooks' included (their rows
    # stay); posts to webhooks from one client address, checked before the lookup so
    # guessed ids and secrets count; posts to all of one conversation's webhooks.
    bot_creations_per_day: int = Field(default=50, ge=1)
    webhook_address_rate_per_minute: float = Field(default=120, gt=0)
    webhook_address_burst: int = Field(default=30, ge=1)
    webhook_conversation_rate_per_minute: float = Field(default=60, gt=0)
    webhook_conversation_burst: int = Field(default=20, ge=1)
    # A user's sockets on one node; one more closes the oldest (code 4429).
    max_sockets_per_user: int = Field(default=20, ge=1)
    # A user's typing frames reach a conversation at most about once per interval (per
    # node); the rest are dropped without an answer.
    typing_interval_seconds: float = Field(default=3.0, ge=0)
    # argon2 runs on this many threads (each hash takes 64 MiB with the default profile)
    # with at most password_hash_queue callers waiting; beyond that: 503 busy.
    password_hash_concurrency: int = Field(default=2, ge=1)
    password_hash_queue: int = Field(default=16, ge=0)
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (a load balancer):
    # comma-separated addresses or networks, or "*". Client limits key on what they say.
    forwarded_allow_ips: str = "127.0.0.1,::1"

    # Blocks: sends in a direct conversation cache whether a block stands between its two
    # for this long; another node's block or unblock takes effect here within it.
    block_cache_seconds: float = Field(default=5.0, ge=0)
    max_blocks_per_user: int = Field(default=10_000, ge=1)

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
    # Announcement pushes in flight at once per node (push.lane): at most half of each
    # provider's limit, so ordinary pushes always have the other half. Few, so that the
    # node's event loop is not taken by announcement callbacks that ordinary sends wait
    # behind; with the lane planning ahead, 8 went as fast as 50 against a provider that
    # answers at once, and 6 as fast as 8 once a push cost less CPU, with ordinary sends
    # held up less. The lane's speed is about 6 / the provider's answer time: raise it
    # where providers answer slowly (60 pushes a second at 100 ms).
    push_announcement_concurrency: int = Field(default=6, ge=1)
    # Recipients per chunk of an announcement (one transaction each), and the per-admin
    # rate of new announcements. 500: the Python work after a chunk's commit runs in one
    # turn of the event loop, and at 1,000 ordinary sends waited behind it.
    announcement_chunk: int = Field(default=500, ge=1, le=5000)
    announcement_rate_per_hour: float = Field(default=10, gt=0)
    announcement_burst: int = Field(default=3, ge=1)
    # A node's hold on the announcement it is sending (renewed while it works), and how
    # often each node looks for one to send or to take over.
    announcement_lease_seconds: float = Field(default=30.0, gt=0)
    announcement_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    push_timeout_seconds: float = 10.0
    push_max_attempts: int = 5
    push_backoff_base_seconds: float = 1.0
    push_backoff_max_seconds: float = 60.0
    # A node renews its jobs' leases every recovery interval; keep it under a third of the lease.
    push_lease_seconds: float = 60.0
    push_recovery_interval_seconds: float = 15.0
    # Deliveries planned and not finished (waiting for a slot, calling, backing off) on one
    # node; beyond it planning waits, and the jobs waiting keep their leases.
    push_max_pending_deliveries: int = Field(default=10_000, ge=1)
    # A recipient skipped because they looked online is looked at again this often (and at
    # once when presence here sees them go); gone with the message unread, they get the push
    # then. At most this many (message, recipient) pairs are remembered per node.
    push_recheck_interval_seconds: float = Field(default=5.0, gt=0)
    push_recheck_max_pairs: int = Field(default=50_000, ge=0)
    push_device_retention_days: int = 90
    push_attempt_retention_days: int = 30
    push_ttl_seconds: int = 24 * 3600
    cleanup_interval_seconds: float = 24 * 3600
    # How often the admin statistics' rollup runs (app/admin_stats.py).
    stats_rollup_interval_seconds: float = 300
    web_base_url: str = ""

    # Email for missed messages (app/email). No SMTP_HOST: no email is sent (addresses
    # are still kept, unverified), said once at start.
    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: str = Field(default="", repr=False)
    smtp_starttls: bool = True
    # Implicit TLS from the first byte (port 465) instead of STARTTLS.
    smtp_tls: bool = False
    # A password over an unencrypted connection is refused at start unless this is set.
    smtp_allow_plaintext_auth: bool = False
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    # For staging and tests: trust this CA for the server's STARTTLS certificate.
    smtp_ca_file: str = ""
    email_from: str = ""
    # SMTP connections a digest pass sends over side by side, each reused for many emails.
    email_connections: int = Field(default=4, ge=1, le=64)
    # Retries of a transient failure (4xx, connection lost), exponential with jitter.
    email_max_attempts: int = Field(default=4, ge=1, le=20)
    email_backoff_base_seconds: float = Field(default=1.0, ge=0)
    email_backoff_max_seconds: float = Field(default=60.0, ge=0)
    # How often a node looks for due digests; the local hour a daily digest goes out.
    email_digest_interval_seconds: float = Field(default=60.0, gt=0)
    email_daily_digest_hour: int = Field(default=8, ge=0, le=23)
    # Verification emails one user may make the node send (setting an address).
    email_verification_rate_per_hour: float = Field(default=5.0, gt=0)
    email_verification_burst: int = Field(default=3, ge=1)
    # Verification emails to one address (whoever asks), and to all addresses together.
    email_verification_per_address_per_day: int = Field(default=3, ge=1)
    email_verification_global_per_hour: float = Field(default=600.0, gt=0)
    # A digest pass stops (giving back what it has not sent) after this many failed
    # connects in a row, or this many bounces in a row (relay trouble, not addresses).
    email_abort_after_connect_failures: int = Field(default=3, ge=1)
    email_abort_after_bounces: int = Field(default=50, ge=1)

    # Scheduled messages and reminders (timers.py): how often a node looks for due ones,
    # how long a node's claim on due ones holds before another node takes them over, and
    # how many one claim takes. What one user may keep pending, and how far ahead.
    timer_poll_seconds: float = Field(default=0.25, gt=0, le=1)
    timer_lease_seconds: float = Field(default=30.0, gt=0)
    timer_batch: int = Field(default=500, ge=1, le=5000)
    max_scheduled_per_user: int = Field(default=100, ge=0)
    max_reminders_per_user: int = Field(default=500, ge=0)
    max_schedule_ahead_days: int = Field(default=365, ge=1, le=3650)
    # New reminders and scheduled messages per user (beside the caps on pending ones).
    reminder_rate_per_minute: float = Field(default=30.0, gt=0)
    reminder_burst: int = Field(default=20, ge=1)
    schedule_rate_per_minute: float = Field(default=30.0, gt=0)
    schedule_burst: int = Field(default=20, ge=1)
    # Conversations whose participants (and type) a node keeps in memory.
    participant_cache_size: int = Field(default=100_000, ge=1)

    # Web Push endpoints must be on a known push service (push/endpoints.py); an operator
    # adds hosts here (comma-separated names or `*.suffix`). Allowing any endpoint (any
    # http(s) URL, address and port) is for staging and tests only: it lets a user make
    # the node POST anywhere.
    web_push_extra_hosts: str = ""
    web_push_allow_any_endpoint: bool = False
    # Its old name: still set, it would be ignored and the staging fakes refused.
    web_push_allow_http: str | None = Field(default=None, exclude=True)
    # Pushes in flight to one push service host (one entry of the host list), so a slow
    # one cannot take every Web Push slot.
    web_push_per_host_concurrency: int = Field(default=100, ge=1)
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

    # Uploads: stored in a local folder (relative to the repository root), or in an
    # S3-compatible bucket when S3_BUCKET is set. Past MAX_UPLOAD_BYTES a file is 413.
    upload_dir: str = "data/uploads"
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    upload_rate_per_minute: float = Field(default=30.0, gt=0)  # per user
    upload_burst: int = Field(default=10, ge=1)
    # Bytes of a user's unsent uploads held at once (413 past it), and bytes a user may
    # upload a day, refilled evenly (429 past it).
    upload_quota_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    upload_bytes_per_day: int = Field(default=2 * 1024 * 1024 * 1024, ge=1)
    # Files one message may carry; an upload not sent with a message this many hours
    # after it was made goes at the next cleanup (and may no longer be sent).
    max_attachments: int = Field(default=10, ge=1, le=100)
    upload_unattached_hours: float = Field(default=24.0, gt=0)
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"
    # Downloads from S3 answer a redirect to a presigned URL valid this long (the bytes
    # then never pass through the node); 0: the node streams them itself. At most an
    # hour: a URL handed out still works after its reader lost access.
    s3_presigned_url_seconds: int = Field(default=0, ge=0, le=3600)
    # Images: one claiming more pixels is refused (422) before it is decoded; Pillow's
    # own hard limit (2 x its MAX_IMAGE_PIXELS) caps the setting. Thumbnails fit in a
    # square of THUMBNAIL_SIZE; IMAGE_WORKERS images are decoded at once per node.
    max_image_pixels: int = Field(default=50_000_000, ge=1, le=178_956_970)
    thumbnail_size: int = Field(default=480, ge=16, le=4096)
    image_workers: int = Field(default=2, ge=1, le=64)

    # Who may read GET /metrics: comma-separated addresses or CIDR networks (behind a
    # load balancer, as FORWARDED_ALLOW_IPS reports them); empty: everyone.
    metrics_allow_from: str = ""

    log_level: str = "INFO"

    @model_validator(mode="after")
    def _no_renamed_settings(self) -> Settings:
        if self.web_push_allow_http is not None:
            raise ConfigError(
                "WEB_PUSH_ALLOW_HTTP was renamed WEB_PUSH_ALLOW_ANY_ENDPOINT (and now allows "
                "any host, address and port too): set that instead and remove the old name "
                "from the environment and .env"
            )
        if self.smtp_username and not (
            self.smtp_starttls or self.smtp_tls or self.smtp_allow_plaintext_auth
        ):
            raise ConfigError(
                "SMTP_USERNAME is set but SMTP_STARTTLS and SMTP_TLS are false: the password "
                "would cross the network in clear. Turn one on, or set "
                "SMTP_ALLOW_PLAINTEXT_AUTH=true for a server on the same host"
            )
        return self

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
        if own is not None:
            return own
        if provider == "apns":
            # aioapns waits for a free stream by polling every 10 ms, and APNs opens a new
            # connection at one stream: past about 100 in flight a burst slows down (1,000
            # pushes took 1.5 s at 200, 0.6 s at 100).
            return min(self.push_concurrency, APNS_IN_FLIGHT)
        return self.push_concurrency

    @property
    def login_address_limit(self) -> tuple[float, int]:
        """(rate per minute, burst) of the per-address login bucket."""
        rate = self.login_address_rate_per_minute
        burst = self.login_address_burst
        return (
            self.login_rate_per_minute if rate is None else rate,
            self.login_burst if burst is None else burst,
        )

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
        log.warning("SECRET_KEY is not set: using the generated key in %s", key_file)
        return read_or_create_key(key_file)


def read_or_create_key(path: Path) -> str:
    """The key kept in `path`, made first if there is none.

    It is written to a file of its own, created 0600 with O_EXCL (never readable by
    anyone else, not even for a moment), then linked into place, which fails if the key
    exists: of two processes making it at once, one wins, and both use the winner's.
    """
    if not path.exists():
        spare = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(spare, path)
        finally:
            spare.unlink()
    if path.stat().st_mode & 0o077:
        log.warning("%s can be read by other users: chmod 600 it", path)
    key = path.read_text().strip()
    if len(key) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{path} holds no usable key: remove it to have a new one made")
    return key


def normalise_database_url(url: str) -> str:
    """Accept the usual `postgresql://` form and use the async drivers."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url
