"""GET /health: whether this node's database and Redis answer."""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from app.jsonutil import JSONResponse
from app.messenger.redis_client import AnyRedis
from app.openapi import schemas
from app.openapi.api import documented

log = logging.getLogger(__name__)


class Health:
    def __init__(self, engine: AsyncEngine, redis: AnyRedis | None) -> None:
        self._engine = engine
        self._redis = redis

    @documented(
        "Whether the node and its dependencies are up",
        responses={200: schemas.Health, 503: schemas.Health},
        tags=["service"],
        auth=False,
    )
    async def check(self, request: Request) -> Response:
        """200 {status, database, redis}, or 503 when the database or Redis is down."""
        status = {"status": "ok", "database": "ok", "redis": "off"}
        try:
            async with self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("health: database down: %s", exc.__class__.__name__)
            status["database"] = "down"
        if self._redis is not None:
            try:
                await self._redis.ping()
                status["redis"] = "ok"
            except Exception as exc:
                log.warning("health: redis down: %s", exc.__class__.__name__)
                status["redis"] = "down"
        healthy = status["database"] == "ok" and status["redis"] != "down"
        if not healthy:
            status["status"] = "degraded"
        return JSONResponse(status, 200 if healthy else 503)
