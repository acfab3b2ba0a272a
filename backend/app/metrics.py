"""Prometheus metrics, served at /metrics."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from app.config import ConfigError, Settings
from app.errors import ApiError
from app.openapi.api import Raw, documented

messages_sent = Counter("messenger_messages_sent_total", "Messages persisted by this node")
websocket_connections = Gauge("messenger_websocket_connections", "Open WebSockets on this node")
pushes = Counter(
    "messenger_pushes_total", "Push deliveries by provider and outcome", ["provider", "outcome"]
)
push_latency = Histogram(
    "messenger_push_commit_to_accepted_seconds",
    "From the message's commit to the provider accepting its push",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
read_mark_writes = Counter(
    "messenger_read_mark_writes_total", "Read-mark write transactions (bursts of marks merged)"
)
push_jobs_recovered = Counter(
    "messenger_push_jobs_recovered_total", "Push jobs taken up after their node stopped"
)
push_deliveries_pending = Gauge(
    "messenger_push_deliveries_pending", "Push deliveries planned and not finished"
)
push_jobs_deferred = Counter(
    "messenger_push_jobs_deferred_total",
    "Push jobs left to recovery because this node had too much push work queued",
)
push_deliveries_waiting = Gauge(
    "messenger_push_deliveries_waiting",
    "Push deliveries planned and waiting for room (PUSH_MAX_PENDING_DELIVERIES reached)",
)
push_rechecks = Counter(
    "messenger_push_rechecks_total",
    "Messages pushed late: the recipient looked online at commit, then went away unread",
)
push_clears = Counter(
    "messenger_push_clears_total",
    "Clearing pushes (a notification taken down: read, or deleted) by provider and outcome",
    ["provider", "outcome"],
)
push_clears_dropped = Counter(
    "messenger_push_clears_dropped_total",
    "Clearings dropped because this node had too many waiting (the next read clears them)",
)
push_rechecks_forgotten = Counter(
    "messenger_push_rechecks_forgotten_total",
    "Recipients skipped as online and forgotten early (PUSH_RECHECK_MAX_PAIRS reached)",
)
push_decisions = Counter(
    "messenger_push_decisions_total",
    "Push decisions (one message, one recipient) by reason: sent, online, muted, "
    "notify_level, quiet_hours, read_before_delay, no_device, failed, dead_token",
    ["reason"],
)
# Bounded labels: the reasons of push.decision_log, the three ways of opening.
pushes_skipped = Counter(
    "messenger_pushes_skipped_total",
    "Push decisions that pushed nothing, or reached no device, by reason",
    ["reason"],
)
notifications_opened = Counter(
    "messenger_notifications_opened_total",
    "Notifications opened for the first time, by how: click, foreground, background",
    ["how"],
)

device_registrations = Counter(
    "messenger_device_registrations_total",
    "Devices registered (new ones) by provider",
    ["provider"],
)
device_registration_failures = Counter(
    "messenger_device_registration_failures_total",
    "Device registrations that failed on the server's side (5xx, errors), by error code",
    ["code"],
)
devices_inactive = Gauge(
    "messenger_devices_inactive",
    "Active devices unused for at least this many days (30, 60, 90), as of the last rollup",
    ["days"],
)
cleanup_runs = Counter("messenger_cleanup_runs_total", "Daily cleanup runs that finished")
cleanup_failures = Counter("messenger_cleanup_failures_total", "Daily cleanup runs that failed")
cleanup_last_success = Gauge(
    "messenger_cleanup_last_success_timestamp_seconds",
    "When the cleanup last finished on this node (or the node started, before its first run)",
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class MetricsEndpoint:
    """GET /metrics: to every client, or only to addresses in METRICS_ALLOW_FROM."""

    def __init__(self, allow_from: Sequence[IPNetwork] = ()) -> None:
        self._allow_from = tuple(allow_from)

    @classmethod
    def from_settings(cls, settings: Settings) -> MetricsEndpoint:
        return cls(parse_networks(settings.metrics_allow_from))

    def allows(self, address: str | None) -> bool:
        if not self._allow_from:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:  # no address (a Unix socket), or not one
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack listener's view of an IPv4 client
        return any(ip in network for network in self._allow_from)

    @documented(
        "Prometheus metrics",
        responses={
            200: Raw("text/plain", "Prometheus text exposition", binary=False),
            403: "not served to this address (METRICS_ALLOW_FROM)",
        },
        tags=["service"],
        auth=False,
    )
    async def serve(self, request: Request) -> Response:
        if not self.allows(request.client.host if request.client else None):
            raise ApiError(403, "forbidden", "metrics are not served to this address")
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or CIDR networks; an empty text is none."""
    networks = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(
                f"METRICS_ALLOW_FROM: {entry!r} is not an address or network"
            ) from None
    return tuple(networks)
