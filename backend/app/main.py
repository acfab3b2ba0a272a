"""The application: routes, error handlers, and what starts and stops with it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from app import accounts
from app.auth import use_password_profile
from app.config import Settings
from app.errors import EXCEPTION_HANDLERS
from app.jsonutil import JSONResponse
from app.messenger import conversations, devices
from app.messenger.framewriter import ServerSend
from app.messenger.websocket import WebSocketApp
from app.metrics import metrics_endpoint
from app.migrations import check_schema_current
from app.services import build_services
from app.web import RefuseNulInUrl

log = logging.getLogger(__name__)
FRONTEND = Path(__file__).resolve().parents[2] / "frontend"


async def health(request: Request) -> Response:
    services = request.app.state.services
    status = {"status": "ok", "database": "ok", "redis": "off"}
    try:
        async with services.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("health: database down: %s", exc.__class__.__name__)
        status["database"] = "down"
    if services.redis is not None:
        try:
            await services.redis.ping()
            status["redis"] = "ok"
        except Exception as exc:
            log.warning("health: redis down: %s", exc.__class__.__name__)
            status["redis"] = "down"
    healthy = status["database"] == "ok" and status["redis"] != "down"
    if not healthy:
        status["status"] = "degraded"
    return JSONResponse(status, 200 if healthy else 503)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    settings.signing_key  # noqa: B018  (fail now, not on the first login, if it is unusable)
    use_password_profile(settings.password_profile)
    services = build_services(settings)
    await check_schema_current(services.engine)
    await services.start()
    app.state.services = services
    log.info(
        "node started node=%s database=%s redis=%s",
        settings.node_id,
        services.engine.dialect.name,
        "on" if services.redis is not None else "off",
    )
    try:
        yield
    finally:
        await services.stop()
        log.info("node stopped node=%s", settings.node_id)


def create_app(settings: Settings | None = None) -> Starlette:
    routes = [
        *accounts.routes,
        *conversations.routes,
        *devices.routes,
        WebSocketRoute("/ws", WebSocketApp()),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        # The web client last, at the root: /sw.js must be served from there so its
        # scope can be the whole site.
        Mount("/", StaticFiles(directory=FRONTEND, html=True, check_dir=False)),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(ServerSend), Middleware(RefuseNulInUrl)],
        lifespan=lifespan,
    )
    app.state.settings = settings or Settings()
    return app
