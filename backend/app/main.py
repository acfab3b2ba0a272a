"""The application: the route setup, error handlers, and what starts and stops with it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from app.accounts import AccountRoutes
from app.admin import AdminRoutes
from app.announcements import AnnouncementRoutes
from app.bots import BotRoutes
from app.config import Settings
from app.email.routes import EmailLinkRoutes
from app.errors import EXCEPTION_HANDLERS, AnswerUnexpected
from app.health import Health
from app.messenger.blocks import BlockRoutes
from app.messenger.conversations import ConversationRoutes
from app.messenger.devices import DeviceRoutes
from app.messenger.framewriter import ServerSend
from app.messenger.members import MemberRoutes, Members
from app.messenger.message_changes import MessageChangeRoutes
from app.messenger.notification_actions import NotificationActionRoutes
from app.messenger.push.endpoints import EndpointPolicy
from app.messenger.push_images import PushImageRoutes
from app.messenger.roles import GroupPolicy
from app.messenger.search import SearchRoutes, check_search_language
from app.messenger.uploads import UploadRoutes
from app.messenger.webhooks import WebhookRoutes, Webhooks
from app.messenger.websocket import SocketEndpoint
from app.metrics import MetricsEndpoint
from app.migrations import check_schema_current
from app.notification_history import NotificationHistoryRoutes
from app.notification_settings import NotificationSettingsRoutes
from app.openapi.routes import OpenApiRoutes
from app.services import Services, build_services
from app.sessions import SessionRoutes
from app.web import RefuseNulInUrl, RequestReader
from app.webclient import WebClient

log = logging.getLogger(__name__)
FRONTEND = Path(__file__).resolve().parents[2] / "frontend"


def build_routes(services: Services) -> list[BaseRoute]:
    """Every route, each given the parts of the node it uses."""
    s = services
    reader = RequestReader(s.settings, s.session_store)
    # Notification actions, and the open of a notification, take its action token.
    actions = NotificationActionRoutes(
        s.engine,
        reader,
        s.participants,
        s.sender,
        s.reads,
        s.limiter,
        s.settings,
        s.session_store,
    )
    routes: list[BaseRoute] = [
        *AccountRoutes(
            s.sessionmaker, reader, s.limiter, s.settings, s.passwords, s.session_store
        ).routes,
        *SessionRoutes(s.session_store, reader).routes,
        *BotRoutes(s.engine, reader, s.limiter, s.settings, s.participants, s.fanout).routes,
        *WebhookRoutes(
            Webhooks(s.engine, s.participants, s.fanout, s.sender, s.limiter, s.settings),
            reader,
            s.settings,
        ).routes,
        *NotificationSettingsRoutes(s.engine, reader, s.settings, s.verifications).routes,
        *EmailLinkRoutes(s.engine, s.settings).routes,
        *ConversationRoutes(
            s.engine,
            reader,
            s.participants,
            s.sender,
            s.reads,
            s.fanout,
            s.presence,
            s.blocks,
            s.limiter,
            s.settings,
            s.changes,
            scheduled=s.scheduled,
        ).routes,
        *s.scheduled.routes(reader),
        *s.reminders.routes(reader),
        *MessageChangeRoutes(reader, s.changes).routes,
        *MemberRoutes(
            s.engine,
            reader,
            Members(
                s.engine,
                s.participants,
                s.fanout,
                s.blocks,
                GroupPolicy.from_settings(s.settings),
            ),
        ).routes,
        *BlockRoutes(reader, s.blocks, s.contacts, s.presence, s.fanout).routes,
        *SearchRoutes(s.engine, reader, s.participants, s.limiter, s.settings).routes,
        *UploadRoutes(s.engine, reader, s.storage, s.limiter, s.settings).routes,
        *PushImageRoutes(s.engine, s.storage, s.settings).routes,
        *actions.routes,
        *NotificationHistoryRoutes(
            s.engine, reader, actions, s.trial_pushes, s.limiter, s.settings, s.session_store
        ).routes,
        *AdminRoutes(s.engine, reader).routes,
        *AnnouncementRoutes(s.engine, reader, s.limiter, s.settings, s.broadcasts.wake).routes,
        *DeviceRoutes(
            s.engine,
            reader,
            s.push,
            EndpointPolicy.from_settings(s.settings),
            s.limiter,
            s.settings,
        ).routes,
        WebSocketRoute(
            "/ws",
            SocketEndpoint(
                s.settings,
                s.hub,
                s.presence,
                s.contacts,
                s.sender,
                s.participants,
                s.reads,
                s.fanout,
                s.socket_auth,
                s.blocks,
                s.attention,
            ),
        ),
        Route("/health", Health(s.engine, s.redis).check, methods=["GET"]),
        Route("/metrics", MetricsEndpoint.from_settings(s.settings).serve, methods=["GET"]),
        *OpenApiRoutes().routes,
    ]
    # The web client last, at the root: /sw.js must be served from there so its scope
    # can be the whole site.
    return [*routes, Mount("/", WebClient(FRONTEND, routes))]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    # Built once per app (no I/O until started): an app runs one lifespan, as a server does.
    services = build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        settings.signing_key  # noqa: B018  (fail now, not on the first login, if it is unusable)
        await check_schema_current(services.engine)
        await check_search_language(services.engine, settings)
        await services.start()
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

    app = Starlette(
        routes=build_routes(services),
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            Middleware(ServerSend),
            Middleware(AnswerUnexpected),
            Middleware(RefuseNulInUrl),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.services = services  # for tests and operators poking at a running node
    return app
