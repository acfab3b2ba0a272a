"""Every log record an in-process node writes, its own and uvicorn's, for tests to read."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

# uvicorn's loggers do not propagate to the root (its logging config): "uvicorn" (which
# "uvicorn.error" propagates to) and "uvicorn.access" are watched too.
WATCHED = ("", "uvicorn", "uvicorn.access")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def failures(self, since: int = 0) -> list[str]:
        """Records from `since` on that an operator would read as a crash: ERROR or
        worse, or one that carries a traceback."""
        found = []
        for record in self.records[since:]:
            text = record.getMessage()
            if record.levelno >= logging.ERROR or record.exc_info or "Traceback" in text:
                found.append(f"{record.levelname} {record.name}: {text}")
        return found


@contextmanager
def captured_logs() -> Iterator[Records]:
    """Capture while inside. Start it after the node: uvicorn configures its loggers (and
    drops their handlers) when a server is made."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in WATCHED]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
