"""Query parameters of the REST calls that take them (the handlers parse them
themselves; these models describe them)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class UserSearch(BaseModel):
    query: str = Field("", max_length=64, description="a prefix of a username or display name")


class MessagesQuery(BaseModel):
    after_seq: int | None = Field(None, ge=0, description="only messages after this seq")
    before_seq: int | None = Field(None, ge=0, description="only messages before this seq")
    limit: int = Field(50, ge=1, le=200)
    changed_after: int | None = Field(
        None,
        ge=0,
        description="a `cursor` from an earlier answer: the messages changed since then",
    )


class SearchQuery(BaseModel):
    q: str = Field(min_length=1, max_length=200, description="the words to find")
    conversation_id: str | None = Field(None, description="search this conversation only")
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, description="a `next_cursor` of the page before")


class NotificationsQuery(BaseModel):
    before: str | None = Field(None, description="the id of the last notification seen")
    limit: int = Field(50, ge=1, description="at most 100 are answered")


class StatsQuery(BaseModel):
    days: int = Field(30, ge=1, le=365, description="how many days back, today included")


class PushLogQuery(BaseModel):
    user_id: int | None = Field(None, ge=1, description="one user's entries only")
    before: str | None = Field(None, description="a `next_before` of the page before")
    limit: int = Field(100, ge=1, description="at most 500 are answered")


class AdminUserSearch(BaseModel):
    q: str = Field("", max_length=64, description="a prefix of a username")
