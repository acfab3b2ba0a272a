"""`python -m app`: serve one node with uvicorn on HOST:PORT."""

from __future__ import annotations

import gc
import logging

import uvicorn

from app.config import Settings
from app.main import create_app


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    app = create_app(settings)
    # The ~130,000 objects the imports made live as long as the process: out of the
    # collector's sight, a full collection takes a few ms instead of ~60 ms, a pause that
    # under load lands, whole, in the latency of every message waiting behind it.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",  # the protocol whose writes framewriter batches
        ws_per_message_deflate=settings.websocket_compression,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


if __name__ == "__main__":
    main()
