"""The server's errors as exceptions: every one carries its `code`, `message` and status.

The server answers every error as `{"error": {"code", "message"}}`; a socket's `error`
frame carries the same two fields (and `ref`, `retry_after`). One class per kind of
answer, so a caller catches what it can act on (`RateLimited` has `retry_after`).
"""

from __future__ import annotations

from typing import Any


class MessengerError(Exception):
    """Anything this client raises."""


class ApiError(MessengerError):
    """An error answer of the server: HTTP `status` (None for a socket's `error` frame),
    its `code` (snake_case) and human `message`."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"{status or 'socket'} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class BadRequest(ApiError):
    """400, 413 or 422: the request itself is wrong (malformed, too large, a bad field)."""


class AuthError(ApiError):
    """401: wrong credentials, or a token or session that no longer works."""


class Forbidden(ApiError):
    """403: not allowed (not a participant, blocked, not an admin)."""


class NotFound(ApiError):
    """404: no such thing, or not one of the caller's."""


class Conflict(ApiError):
    """409: taken already (a username), or in a state that refuses this."""


class RetryLater(ApiError):
    """An answer that asks to try again after `retry_after` seconds."""

    def __init__(self, status: int | None, code: str, message: str, retry_after: float) -> None:
        super().__init__(status, code, message)
        self.retry_after = retry_after


class RateLimited(RetryLater):
    """429 `rate_limited`: past a flood limit; wait `retry_after` seconds."""


class Unavailable(RetryLater):
    """503 (`busy`, `overloaded`, `unavailable`, ...): the server cannot take it now."""


class ServerError(ApiError):
    """Any other 5xx: the server failed."""


class ConnectionLost(MessengerError):
    """The node could not be reached, or the socket closed before an answer came."""


class SessionEnded(AuthError):
    """The session is over (revoked, expired, refresh token refused): log in again."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: AuthError,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    422: BadRequest,
}

# A socket's error frames carry no status: the codes that mean "retry later".
_RETRY_CODES: dict[str, type[RetryLater]] = {
    "rate_limited": RateLimited,
    "busy": Unavailable,
    "overloaded": Unavailable,
    "unavailable": Unavailable,
}


def _retry_after(value: Any) -> float:
    """Seconds from a `Retry-After` header or a frame's `retry_after`; 1 if unreadable."""
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 1.0


def error_from_answer(
    status: int, body: Any, retry_after: str | None = None, reason: str = ""
) -> ApiError:
    """The exception for an HTTP error answer: its status, parsed body and `Retry-After`."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "error")
        message = str(error.get("message") or reason)
    else:  # not the server's error shape (a proxy in between): keep what there is
        code, message = f"http_{status}", reason or f"HTTP {status}"
    if status == 429:
        return RateLimited(status, code, message, _retry_after(retry_after))
    if status == 503 or (status >= 500 and retry_after is not None):
        return Unavailable(status, code, message, _retry_after(retry_after))
    if status >= 500:
        return ServerError(status, code, message)
    return _BY_STATUS.get(status, ApiError)(status, code, message)


def error_from_frame(frame: dict[str, Any]) -> ApiError:
    """The exception for a socket's `error` frame."""
    code = str(frame.get("code") or "error")
    message = str(frame.get("message") or "")
    if code in _RETRY_CODES:
        return _RETRY_CODES[code](None, code, message, _retry_after(frame.get("retry_after", 1)))
    if code in ("invalid_token", "unauthorized"):
        return AuthError(None, code, message)
    if code in ("not_a_participant", "blocked", "read_only", "forbidden"):
        return Forbidden(None, code, message)
    if code.endswith("_not_found"):
        return NotFound(None, code, message)
    return BadRequest(None, code, message)
