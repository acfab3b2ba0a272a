"""The pages an email's links open, without a login: the token in the link is the
authority, good for one user, one address and one purpose, and only for a while.

GET (and HEAD) /email/verify shows a confirm button and changes nothing: mail scanners
and link previews fetch links, and must not verify an address nobody looked at. POST to
the same URL verifies (the link was sent to that address, which is the proof), only
the very setting of the address it was sent for, and only once.
GET /email/unsubscribe shows a confirm button and changes nothing (mail scanners fetch
links); POST to the same URL unsubscribes: the button, or a mail client's one-click
(RFC 8058: body `List-Unsubscribe=One-Click`). A forged, expired or outdated link gets
a page that says so, with 400, and changes nothing.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from app.config import Settings
from app.db import utcnow
from app.email.links import UNSUBSCRIBE_PATH, VERIFY_PATH
from app.email.schedule import next_digest_at
from app.email.tokens import UNSUBSCRIBE, VERIFY, EmailClaims, InvalidEmailToken, set_stamp
from app.email.tokens import decode_email_token as decode
from app.models import NotificationSettings

log = logging.getLogger(__name__)
_s = NotificationSettings.__table__
MAX_TOKEN_LENGTH = 2048
# The token is in the URL: no referrer carries it away, no cache keeps it, no other
# site frames the button.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
}
_BAD_LINK = (
    "This link is not valid",
    "It may have expired, been replaced by a newer one, or been copied incompletely. "
    "Nothing was changed. Open the settings in the app to send a new one.",
)


@cache
def _env() -> Environment:
    templates = Path(__file__).resolve().parent / "templates"
    return Environment(loader=FileSystemLoader(templates), autoescape=select_autoescape(["html"]))


def page(
    title: str,
    text: str,
    status: int = 200,
    form_action: str | None = None,
    button: str = "Unsubscribe",
) -> Response:
    html = (
        _env()
        .get_template("page.html")
        .render(title=title, text=text, form_action=form_action, button=button)
    )
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


class EmailLinkRoutes:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    @property
    def routes(self) -> list[Route]:
        return [
            Route(VERIFY_PATH, self.verify_page, methods=["GET"]),
            Route(VERIFY_PATH, self.verify, methods=["POST"]),
            Route(UNSUBSCRIBE_PATH, self.unsubscribe_page, methods=["GET"]),
            Route(UNSUBSCRIBE_PATH, self.unsubscribe, methods=["POST"]),
        ]

    def _claims(self, request: Request, audience: str) -> EmailClaims | None:
        token = request.query_params.get("token", "")
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        try:
            return decode(token, self._settings.signing_key, audience)
        except InvalidEmailToken:
            return None

    @staticmethod
    def _current(row: Any, claims: EmailClaims) -> bool:
        """Whether the link was sent for the address the user has now, set when it was:
        a link for another address, or an earlier setting of this one, proves nothing."""
        return (
            row is not None
            and row.email == claims.email
            and claims.set_at is not None
            and row.email_set_at is not None
            and set_stamp(row.email_set_at) == claims.set_at
        )

    async def verify_page(self, request: Request) -> Response:
        claims = self._claims(request, VERIFY)
        if claims is None:
            return page(*_BAD_LINK, status=400)
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(_s).where(_s.c.user_id == claims.user_id))
            ).one_or_none()
        if not self._current(row, claims):
            return page(*_BAD_LINK, status=400)
        return page(
            "Confirm your email address?",
            "Emails about messages you missed will go to this address, as set in the app.",
            form_action=str(request.url.path) + "?" + str(request.url.query),
            button="Confirm",
        )

    async def verify(self, request: Request) -> Response:
        claims = self._claims(request, VERIFY)
        if claims is None:
            return page(*_BAD_LINK, status=400)
        now = utcnow()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(select(_s).where(_s.c.user_id == claims.user_id))
            ).one_or_none()
            if row is None or not self._current(row, claims):
                return page(*_BAD_LINK, status=400)
            if row.email_verified_at is None:
                values: dict[str, object] = {
                    "email_verified_at": now,
                    "email_verification_error": None,
                }
                if row.email_digest != "off":
                    values["next_digest_at"] = next_digest_at(
                        row.email_digest,
                        now,
                        row.time_zone,
                        row.quiet_start,
                        row.quiet_end,
                        self._settings.email_daily_digest_hour,
                    )
                # Checked again in the statement itself: an address changed (or verified)
                # between the read above and here is left alone.
                result = await conn.execute(
                    update(_s)
                    .where(
                        _s.c.user_id == claims.user_id,
                        _s.c.email == claims.email,
                        _s.c.email_set_at == row.email_set_at,
                        _s.c.email_verified_at.is_(None),
                    )
                    .values(**values)
                )
                if result.rowcount:
                    log.info("email verified user=%d", claims.user_id)
        return page(
            "Email address verified",
            "Emails about messages you missed will go to this address, as set in the app.",
        )

    async def unsubscribe_page(self, request: Request) -> Response:
        if self._claims(request, UNSUBSCRIBE) is None:
            return page(*_BAD_LINK, status=400)
        return page(
            "Stop digest emails?",
            "You will get no more emails about messages you missed. You can turn them on "
            "again in the app's settings.",
            form_action=str(request.url.path) + "?" + str(request.url.query),
        )

    async def unsubscribe(self, request: Request) -> Response:
        claims = self._claims(request, UNSUBSCRIBE)
        if claims is None:
            return page(*_BAD_LINK, status=400)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(_s)
                .where(_s.c.user_id == claims.user_id, _s.c.email == claims.email)
                .values(email_digest="off", next_digest_at=None)
            )
        if result.rowcount == 0:
            return page(*_BAD_LINK, status=400)
        log.info("email digests unsubscribed user=%d", claims.user_id)
        return page(
            "Unsubscribed",
            "You will get no more emails about messages you missed. You can turn them on "
            "again in the app's settings.",
        )
