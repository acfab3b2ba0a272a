"""`python -m app`: serve one node with uvicorn on HOST:PORT."""

from __future__ import annotations

import gc

import uvicorn

from app.config import Settings
from app.logs import configure_logging
from app.main import create_app

GC_THRESHOLDS = (700, 10, 1000)  # young, middle, full: see main()


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    # The ~130,000 objects the imports made live as long as the process: out of the
    # collector's sight, a full collection takes a few ms instead of ~60 ms, a pause that
    # under load lands, whole, in the latency of every message waiting behind it.
    gc.collect()
    gc.freeze()
    # Full collections rarely (after 1,000 middle ones, not 10): work that keeps many
    # objects alive for a while (an announcement's chunks and pushes in flight) set one
    # off every second or two, each walking every socket's and cache's objects for
    # 50-100 ms and finding next to nothing. Young and middle collections stay as they
    # were: small, so each pause stays short.
    gc.set_threshold(*GC_THRESHOLDS)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",  # the protocol whose writes framewriter batches
        ws_per_message_deflate=settings.websocket_compression,
        ws_ping_interval=settings.websocket_ping_interval_seconds,
        ws_ping_timeout=settings.websocket_ping_timeout_seconds,
        # A larger frame closes the socket (1009) from its header, before it is read.
        ws_max_size=settings.max_frame_bytes,
        # Behind a load balancer the client's address (which the abuse limits key on)
        # comes from X-Forwarded-For, believed only from these peers.
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


if __name__ == "__main__":
    main()
