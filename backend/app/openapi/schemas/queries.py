"""Query parameters of the REST calls that take them (the handlers parse them
themselves; these models describe them).

Limits are the handlers' own constants. Those of modules that import this namespace
(for their `@documented` lines) are read when the document is built, not at import,
which would be circular."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from app.admin_push_log import MAX_LIMIT as PUSH_LOG_MAX_LIMIT
from app.admin_stats import MAX_DAYS

# The handlers of these cap the length of the text searched for without a constant.
SEARCH_TEXT_LENGTH = 64


def _from_code(
    module: str,
    keywords: Mapping[str, str],
    note: str = "",
    mentions: Mapping[str, str] | None = None,
) -> Callable[[dict[str, Any]], None]:
    """Sets each JSON Schema keyword to the constant of `module` named for it, and adds
    `note` to the description, formatted with the constants `mentions` names."""

    def fill(schema: dict[str, Any]) -> None:
        source = importlib.import_module(module)
        schema.update({keyword: getattr(source, name) for keyword, name in keywords.items()})
        if note:
            text = note.format(**{k: getattr(source, n) for k, n in (mentions or {}).items()})
            described = schema.get("description")
            schema["description"] = f"{described}; {text}" if described else text

    return fill


class UserSearch(BaseModel):
    query: str = Field(
        "",
        max_length=SEARCH_TEXT_LENGTH,
        description="a prefix of a username or display name",
    )


class MessagesQuery(BaseModel):
    after_seq: int | None = Field(None, ge=0, description="only messages after this seq")
    before_seq: int | None = Field(None, ge=0, description="only messages before this seq")
    limit: int = Field(
        50,
        ge=1,
        json_schema_extra=_from_code(
            "app.messenger.message_changes",
            {"maximum": "MAX_CHANGES_LIMIT"},
            "with changed_after the default is {default}",
            {"default": "DEFAULT_CHANGES_LIMIT"},
        ),
    )
    changed_after: int | None = Field(
        None,
        ge=0,
        description="a `cursor` from an earlier answer: the messages changed since then",
    )


class SearchQuery(BaseModel):
    q: str = Field(
        min_length=1,
        description="the words to find",
        json_schema_extra=_from_code("app.messenger.search", {"maxLength": "MAX_QUERY_CHARS"}),
    )
    conversation_id: str | None = Field(None, description="search this conversation only")
    limit: int | None = Field(
        None,
        ge=1,
        json_schema_extra=_from_code(
            "app.messenger.search", {"default": "DEFAULT_LIMIT", "maximum": "MAX_LIMIT"}
        ),
    )
    cursor: str | None = Field(
        None,
        description="a `next_cursor` of the page before",
        json_schema_extra=_from_code("app.messenger.search", {"maxLength": "MAX_CURSOR_CHARS"}),
    )


class NotificationsQuery(BaseModel):
    before: str | None = Field(None, description="the id of the last notification seen")
    limit: int | None = Field(
        None,
        ge=1,
        json_schema_extra=_from_code(
            "app.notification_history",
            {"default": "DEFAULT_LIMIT"},
            "at most {most} are answered",
            {"most": "MAX_LIMIT"},
        ),
    )


class StatsQuery(BaseModel):
    days: int = Field(30, ge=1, le=MAX_DAYS, description="how many days back, today included")


class PushLogQuery(BaseModel):
    user_id: int | None = Field(None, ge=1, description="one user's entries only")
    before: str | None = Field(None, description="a `next_before` of the page before")
    limit: int = Field(100, ge=1, description=f"at most {PUSH_LOG_MAX_LIMIT} are answered")


class AdminUserSearch(BaseModel):
    q: str = Field("", max_length=SEARCH_TEXT_LENGTH, description="a prefix of a username")
