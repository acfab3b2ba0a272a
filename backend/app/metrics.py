"""Prometheus metrics, served at /metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

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
push_jobs_recovered = Counter(
    "messenger_push_jobs_recovered_total", "Push jobs taken up after their node stopped"
)


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
