"""Counting device registrations that fail, for the registration-failure alert.

Only the server's own failures count: an answer of 500 or more (by error code) and an
unexpected error. A refusal of what the client sent (a malformed token, a provider that
does not serve the platform, a host refused, a conflict: every 4xx) is the client's
doing, and one account sending junk could otherwise fire the alert on its own: it is
answered with its code and not counted here.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from app import metrics
from app.errors import ApiError

Handler = Callable[[Request], Awaitable[Response]]
SERVER_FAILURE = 500  # this status and above


def count_failures(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def counted(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            if exc.status >= SERVER_FAILURE:
                metrics.device_registration_failures.labels(exc.code).inc()
            raise
        except Exception:
            metrics.device_registration_failures.labels("error").inc()
            raise

    return counted
