"""The languages push texts and settings speak: one list, for whoever needs it."""

from __future__ import annotations

# A user's `locale` must be one of these; push texts exist for each.
SUPPORTED_LOCALES: tuple[str, ...] = ("en", "de")
DEFAULT_LOCALE = "en"
