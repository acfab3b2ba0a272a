"""The web client's files, served at the root behind every other route."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

# The page runs only its own scripts and talks only to this server: markup that got in
# (it should not: the client renders server data as text) could run nothing. Attachments'
# images are fetched with the token and shown through blob: URLs (only this origin's
# scripts can make them).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
# Pages at a path of their own, not a file name: /admin is the admin dashboard, /docs
# the API's OpenAPI description in Swagger UI.
_PAGES = {"/admin": "/admin.html", "/admin/": "/admin.html", "/docs": "/docs.html"}


class WebClient:
    """StaticFiles for GET and HEAD, with a strict Content-Security-Policy. Any other
    method reaching it is a path no route took: 405 where a route serves that path with
    another method, else 404 (not the 405 StaticFiles gives every method it lacks)."""

    def __init__(self, directory: Path, routes: Sequence[BaseRoute]) -> None:
        self._files = StaticFiles(directory=directory, html=True, check_dir=False)
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            other_method = any(r.matches(scope)[0] == Match.PARTIAL for r in self._routes)
            raise HTTPException(405 if other_method else 404)
        root = scope.get("root_path", "")
        page = _PAGES.get(scope["path"].removeprefix(root)) if scope["type"] == "http" else None
        if page is not None:
            scope = {**scope, "path": root + page}

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *_HEADERS]}
            await send(message)

        await self._files(scope, receive, with_headers)
