"""GET /openapi.json: the app's OpenAPI document, built on the first call and kept."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.openapi.builder import build_document


class OpenApiRoutes:
    """One per app: the document describes that app's routes, which never change once
    it is built."""

    def __init__(self) -> None:
        self._body: bytes | None = None

    @property
    def routes(self) -> list[Route]:
        return [Route("/openapi.json", self.document, methods=["GET"])]

    async def document(self, request: Request) -> Response:
        if self._body is None:
            settings = getattr(request.app.state, "settings", None)
            self._body = orjson.dumps(build_document(request.app.routes, settings))
        return Response(
            self._body,
            media_type="application/json",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )
