"""Users, tokens and sessions."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from app.openapi.schemas.choices import TokenType


class User(BaseModel):
    """A user as every other user sees them."""

    id: int
    username: str
    display_name: str
    is_bot: bool


class Me(User):
    """The caller's own account."""

    is_admin: bool


class UserList(BaseModel):
    """Users whose name starts with the query (at most 20)."""

    users: list[User]


class Tokens(BaseModel):
    """A fresh access token and the refresh token that replaces the one spent."""

    access_token: str
    token_type: TokenType
    expires_in: int
    refresh_token: str
    session_id: str


class Login(Tokens):
    """A new session's tokens and its user."""

    user: User


class Session(BaseModel):
    id: str
    created_at: datetime
    last_used_at: datetime
    user_agent: str | None
    ip: str | None
    current: bool


class SessionList(BaseModel):
    """The caller's open sessions."""

    sessions: list[Session]


class Success(BaseModel):
    """Done."""

    success: bool


class RevokedOthers(Success):
    """Every other session of the caller is revoked."""

    revoked: int
