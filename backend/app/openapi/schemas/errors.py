"""The one error body every failure answers."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str


class Error(BaseModel):
    """The error body: {"error": {"code", "message"}}."""

    error: ErrorDetail
