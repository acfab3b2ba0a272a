"""A user's notification settings (time zone, quiet hours, push delay, preview,
language): /api/v1/me/notification-settings, and the loader the push decision uses.

No row means every default; a PUT writes the row (an upsert) with what it names.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import Settings
from app.db import one_of, upsert, utcnow
from app.email.address import normalise_email
from app.email.preferences import apply_email_changes
from app.email.verification import Verifications
from app.errors import ApiError
from app.jsonutil import JSONResponse
from app.locales import DEFAULT_LOCALE, SUPPORTED_LOCALES
from app.messenger.push.quiet_hours import clock_time
from app.models import NotificationSettings
from app.openapi import schemas
from app.openapi.api import documented
from app.web import RequestReader

_settings = NotificationSettings.__table__

MAX_PUSH_DELAY_SECONDS = 600
# Users per query when loading many (SQLite binds each one).
_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class UserNotificationSettings:
    """One user's settings, named as their columns."""

    time_zone: str = "UTC"
    # "HH:MM" in time_zone; both set or both None (no quiet hours). May wrap midnight.
    quiet_start: str | None = None
    quiet_end: str | None = None
    quiet_allow_mentions: bool = False
    push_delay_seconds: int = 0
    preview: str = "full"  # "full" | "sender" | "none"
    locale: str = DEFAULT_LOCALE
    # Email for missed messages (app/email).
    email: str | None = None
    email_verified: bool = False
    email_digest: str = "off"  # "off" | "hourly" | "daily"
    email_disabled_reason: str | None = None  # the mail server refused the address
    email_disabled_at: datetime | None = None
    # The last verification email did not get through: why (the app offers a resend).
    email_verification_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        quiet_hours = None
        if self.quiet_start is not None and self.quiet_end is not None:
            quiet_hours = {
                "start": self.quiet_start,
                "end": self.quiet_end,
                "allow_mentions": self.quiet_allow_mentions,
            }
        return {
            "time_zone": self.time_zone,
            "quiet_hours": quiet_hours,
            "push_delay_seconds": self.push_delay_seconds,
            "preview": self.preview,
            "locale": self.locale,
            "email": self.email,
            "email_verified": self.email_verified,
            "email_digest": self.email_digest,
            # Set when a bounce turned digests off: the web client says so.
            "email_digest_disabled": None
            if self.email_disabled_at is None
            else {
                "reason": self.email_disabled_reason or "",
                "at": self.email_disabled_at.isoformat(),
            },
            "email_verification_failed": None
            if self.email_verification_error is None
            else {"reason": self.email_verification_error},
        }


DEFAULTS = UserNotificationSettings()
_COLUMNS = (
    "time_zone",
    "quiet_start",
    "quiet_end",
    "quiet_allow_mentions",
    "push_delay_seconds",
    "preview",
    "locale",
)


async def load_settings(
    conn: AsyncConnection, user_ids: Collection[int]
) -> dict[int, UserNotificationSettings]:
    """Every one of these users' settings, by user id (DEFAULTS for those without a row)."""
    ids = list(dict.fromkeys(user_ids))
    found = dict.fromkeys(ids, DEFAULTS)
    dialect = conn.dialect.name
    for i in range(0, len(ids), _CHUNK):
        rows = await conn.execute(
            select(_settings).where(one_of(_settings.c.user_id, ids[i : i + _CHUNK], dialect))
        )
        for row in rows:
            found[row.user_id] = UserNotificationSettings(
                **{name: getattr(row, name) for name in _COLUMNS},
                email=row.email,
                email_verified=row.email_verified_at is not None,
                email_digest=row.email_digest,
                email_disabled_reason=row.email_disabled_reason,
                email_disabled_at=row.email_disabled_at,
                email_verification_error=row.email_verification_error,
            )
    return found


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def known_time_zone(name: str) -> bool:
    """Whether this is an IANA zone this machine knows. Looked up in the list of zones,
    so a name like "../../etc/passwd" never reaches the file system."""
    return name in _known_zones()


def _supported_locale(value: str) -> str:
    if value not in SUPPORTED_LOCALES:
        raise ValueError(f"locale must be one of {', '.join(SUPPORTED_LOCALES)}")
    return value


def _clock_time(value: str) -> str:
    if clock_time(value) is None:
        raise ValueError("must be a 24-hour time HH:MM, 00:00 to 23:59")
    return value


# 24-hour "HH:MM", 00:00 to 23:59: read as quiet hours are when a push is decided.
ClockTime = Annotated[str, AfterValidator(_clock_time)]


class QuietHoursBody(BaseModel):
    start: ClockTime
    end: ClockTime
    allow_mentions: StrictBool = False

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.start == self.end:
            raise ValueError("quiet_hours start and end must differ")
        return self


class NotificationSettingsBody(BaseModel):
    time_zone: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    quiet_hours: QuietHoursBody | None = None
    push_delay_seconds: Annotated[StrictInt, Field(ge=0, le=MAX_PUSH_DELAY_SECONDS)] | None = None
    preview: Literal["full", "sender", "none"] | None = None
    locale: Annotated[str, AfterValidator(_supported_locale)] | None = None
    # null removes the address; checked by app.email.address (422 invalid_email).
    email: Annotated[str, StringConstraints(max_length=320)] | None = None
    email_digest: Literal["off", "hourly", "daily"] | None = None


# Fields that take no null (quiet_hours does: no quiet hours).
_NOT_NULL = ("time_zone", "push_delay_seconds", "preview", "locale", "email_digest")


class NotificationSettingsRoutes:
    """/api/v1/me/notification-settings."""

    def __init__(
        self,
        engine: AsyncEngine,
        reader: RequestReader,
        settings: Settings | None = None,
        verifications: Verifications | None = None,
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._app_settings = settings
        self._verifications = verifications

    @property
    def routes(self) -> list[Route]:
        path = "/api/v1/me/notification-settings"
        return [
            Route(path, self.get_settings, methods=["GET"]),
            Route(path, self.put_settings, methods=["PUT"]),
        ]

    @documented(
        "The caller's notification settings",
        responses={200: schemas.NotificationSettings},
        tags=["settings"],
    )
    async def get_settings(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        async with self._engine.connect() as conn:
            found = await load_settings(conn, [user_id])
        return JSONResponse(found[user_id].as_json())

    @documented(
        "Change notification settings (any of the fields)",
        body=NotificationSettingsBody,
        responses={
            200: schemas.NotificationSettings,
            422: "an unknown time zone or locale, a bad time or email address",
            429: "too many verification emails asked for",
        },
        tags=["settings"],
    )
    async def put_settings(self, request: Request) -> Response:
        user_id = await self._reader.user_id(request)
        body = await self._reader.json(request, NotificationSettingsBody)
        given = body.model_fields_set
        values: dict[str, Any] = {}
        for name in _NOT_NULL:
            if name in given:
                value = getattr(body, name)
                if value is None:
                    raise ApiError(422, "invalid_field", f"{name} cannot be null")
                values[name] = value
        # email_digest is written with the address, below.
        values.pop("email_digest", None)
        email = body.email
        if email is not None:
            email = normalise_email(email)
            if email is None:
                raise ApiError(
                    422, "invalid_email", "email must be an address like ana@example.com"
                )
        if "time_zone" in values and not known_time_zone(values["time_zone"]):
            raise ApiError(
                422, "invalid_time_zone", "time_zone must be an IANA time zone, like Europe/Berlin"
            )
        if "quiet_hours" in given:
            quiet = body.quiet_hours
            values["quiet_start"] = quiet.start if quiet else None
            values["quiet_end"] = quiet.end if quiet else None
            values["quiet_allow_mentions"] = quiet.allow_mentions if quiet else False
        email_given = {"email", "email_digest"} & given
        async with self._engine.begin() as conn:
            if values or email_given:
                insert = upsert(_settings, conn.dialect.name).values(user_id=user_id, **values)
                await conn.execute(
                    insert.on_conflict_do_update(index_elements=[_settings.c.user_id], set_=values)
                    if values
                    else insert.on_conflict_do_nothing(index_elements=[_settings.c.user_id])
                )
            needs_link = False
            if self._app_settings is not None and (email_given or values):
                needs_link = await apply_email_changes(
                    conn, self._app_settings, user_id, given, email, body.email_digest, utcnow()
                )
                if needs_link and self._verifications is not None:
                    await self._verifications.check_rate(user_id, email)  # 429 writes nothing
            found = await load_settings(conn, [user_id])
        mine = found[user_id]
        if needs_link and mine.email and self._verifications is not None:
            self._verifications.send_link(user_id, mine.email, mine.locale)
        return JSONResponse(mine.as_json())
