"""The enumerated fields of the answers: each names the values a client may meet.

Where the code keeps its values in a constant of a module the route modules do not
import back, the enum is that constant; the others are Literals, and
tests/test_openapi.py holds them to the code's own values."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import WithJsonSchema

from app.email.schedule import PERIODS
from app.messenger.push.base import Outcome
from app.messenger.push.decision_log import REASONS
from app.messenger.push.history import KINDS, OPENED_HOW
from app.messenger.push.notification import PREVIEWS
from app.messenger.roles import ROLES


def _enum(values: Iterable[str]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(values)})


ConversationType = Literal["direct", "group", "announcement"]
Role = Annotated[str, _enum(ROLES)]
Notify = Literal["all", "mentions", "none"]
Platform = Literal["ios", "android", "web"]
Provider = Literal["fcm", "apns", "web_push"]
Preview = Annotated[str, _enum(PREVIEWS)]
EmailDigest = Annotated[str, _enum(("off", *PERIODS))]
NotificationKind = Annotated[str, _enum(KINDS)]
OpenedHow = Annotated[str, _enum(OPENED_HOW)]
TokenType = Literal["bearer"]
# A scheduled message the caller sees: waiting, or failed and not yet dismissed.
ScheduledStatus = Literal["pending", "failed"]
# What cancelling or dismissing answers.
StatusChangeStatus = Literal["cancelled", "dismissed"]
ReminderStatus = Literal["pending", "firing", "fired", "cancelled"]
AnnouncementStatus = Literal["sending", "done", "failed"]
DeviceRegistration = Literal["registered", "refreshed"]
PushLogType = Literal["decision", "delivery"]
# Why a recipient was or was not pushed; a delivery's reason is one of these too.
PushReason = Annotated[str, _enum(REASONS)]
# A delivery's final outcome: `retry` is never one (delivery retries, then gives up).
DeliveryOutcome = Annotated[str, _enum(o.value for o in Outcome if o is not Outcome.RETRY)]
