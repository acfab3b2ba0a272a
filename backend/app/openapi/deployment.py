"""Limits of request bodies that are settings, not constants: the document states each
deployment's own value (pydantic's schema only knows the models' hard ceilings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.config import Settings


@dataclass(frozen=True)
class SettingLimit:
    """`keyword` of the property `field` of the component `schema` is the setting
    `setting` (a variable of the environment in upper case)."""

    schema: str
    field: str
    keyword: str
    setting: str


LIMITS = (SettingLimit("SendBody", "attachments", "maxItems", "max_attachments"),)


def apply_settings(components: dict[str, Any], settings: Settings | None) -> None:
    """Describe each limit by its setting and, where the settings are known, use the
    configured value."""
    for limit in LIMITS:
        prop = components.get(limit.schema, {}).get("properties", {}).get(limit.field)
        if prop is None:
            continue
        name = limit.setting.upper()
        if settings is None:
            default = Settings.model_fields[limit.setting].default
            prop["description"] = f"at most {name}, a setting ({default} by default)"
            continue
        value = getattr(settings, limit.setting)
        prop[limit.keyword] = value
        prop["description"] = f"at most {name}, {value} on this server"
