"""The node's own state."""

from __future__ import annotations

from pydantic import BaseModel


class Health(BaseModel):
    """Each dependency's state: `ok`, `off` (Redis unset) or what is wrong."""

    status: str
    database: str
    redis: str
