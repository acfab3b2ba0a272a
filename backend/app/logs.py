"""Log records without secrets: no token, password, refresh token or push endpoint
reaches a log line, whichever library writes it.

uvicorn logs each WebSocket's path with its query string (`/ws?token=...`), and at
DEBUG the websockets library logs frames (an `auth` frame holds an access token). So
every record is redacted as it is made, by a record factory: no handler (ours,
uvicorn's, an operator's) ever sees the secret.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # A query-string or form value: token=..., access_token=..., password=...
    (
        re.compile(
            r"(?i)\b((?:access_|refresh_|action_)?token|password|auth|p256dh)"
            r"=[^&\s\"'\]]+"
        ),
        rf"\1={REDACTED}",
    ),
    # A JSON field, even one cut short by a library eliding a long payload.
    (
        re.compile(
            r"(?i)([\"'](?:access_token|refresh_token|action_token|token|device_token"
            r"|password|endpoint|p256dh|auth)[\"']\s*:\s*)\"(?:[^\"\\]|\\.)*\"?"
        ),
        rf'\1"{REDACTED}"',
    ),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), f"Bearer {REDACTED}"),
    # A JWT anywhere (they all start with the base64 of '{"'), whole or cut.
    (re.compile(r"\beyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    # A refresh token, "<session id>.<secret>": the id may stay.
    (
        re.compile(
            r"\b([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
            r"\.[A-Za-z0-9_-]{16,}(?:\.[A-Za-z0-9_-]+)?"
        ),
        rf"\1.{REDACTED}",
    ),
    # A bot token, "mbot_<token id>_<secret>": the id may stay (app/bot_tokens.py).
    (re.compile(r"\bmbot_([0-9]+)_[A-Za-z0-9_-]+"), rf"mbot_\1_{REDACTED}"),
    # An incoming webhook's path, /api/v1/hooks/<id>/<secret> (the access log has it).
    (re.compile(r"(/api/v1/hooks/[^/\s\"'?]+)/[^\s\"'?]+"), rf"\1/{REDACTED}"),
    # A URL's path and query: a Web Push endpoint's path is its subscription's secret.
    (re.compile(r"(?i)\b(https?://[^/\s\"'<>]+)/[^\s\"'<>]+"), rf"\1/{REDACTED}"),
)

# Libraries that log the data they are given (aiosqlite: every statement's parameters,
# push tokens among them; hpack: every HTTP/2 header, an APNs `:path` of
# /3/device/<token> among them): nothing below INFO from them, whatever the node's
# level. A filter holds only for the logger it is on, so hpack's are named one by one.
_DATA_LOGGERS = ("aiosqlite", "hpack.hpack", "hpack.table")


# A line holding none of these holds nothing the rules above redact: most lines are
# passed on after this cheap look, not six regular expressions.
_HINTS = (
    "token",
    "password",
    "auth",
    "p256dh",
    "bearer",
    "eyj",
    "endpoint",
    "://",
    "mbot_",
    "/hooks/",
)
_REFRESH_HINT = re.compile(r"\.[A-Za-z0-9_-]{16,}\.")


def redact(text: str) -> str:
    lowered = text.lower()
    if not any(hint in lowered for hint in _HINTS) and not _REFRESH_HINT.search(text):
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def _redact_arg(arg: Any) -> Any:
    if isinstance(arg, str):
        return redact(arg)
    if arg is None or isinstance(arg, (int, float)):
        return arg
    text = str(arg)
    clean = redact(text)
    return arg if clean == text else clean


def redact_record(record: logging.LogRecord) -> None:
    """Remove secrets from the record's message, arguments and traceback, in place."""
    try:
        message = record.getMessage()
    except Exception:
        return  # a record that cannot be formatted: logging reports it as it would
    clean = redact(message)
    if clean != message:
        # Arguments one by one where that is enough: uvicorn's access formatter reads
        # record.args as a tuple.
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        if record.getMessage() != clean:
            record.msg, record.args = clean, ()
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install_redaction() -> None:
    """Redact every record this process makes from now on (once; a second call is a no-op)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    for name in _DATA_LOGGERS:
        logging.getLogger(name).addFilter(_at_least_info)
    logging.getLogger("uvicorn.error").addFilter(_client_fault_as_warning)


def _at_least_info(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.INFO


# What uvicorn logs as an error with a traceback, though a client caused it (a text
# frame that is not UTF-8; the socket closes with 1007): one warning line instead.
_CLIENT_FAULTS = frozenset({"Invalid UTF-8 sequence received from client."})


def _client_fault_as_warning(record: logging.LogRecord) -> bool:
    if record.msg in _CLIENT_FAULTS:
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
    return True


def configure_logging(level: str) -> None:
    """The node's logging: one line per record on stderr, redacted."""
    install_redaction()
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
