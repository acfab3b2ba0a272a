"""What a push says in each language the app speaks (app.locales).

A small catalogue rather than gettext: a dozen strings in two languages, chosen per
recipient at send time (never from the process's locale), with one plural rule that
fits both languages. gettext would add .po/.mo files and a build step for that much.
A locale not in the catalogue, or a region of one ("de-AT"), falls back sensibly.
"""

from __future__ import annotations

from typing import Final

from app.locales import DEFAULT_LOCALE, SUPPORTED_LOCALES

# Each entry: a plain string, or {"one": ..., "other": ...} for a count `n`.
_CATALOGUE: Final[dict[str, dict[str, str | dict[str, str]]]] = {
    "en": {
        # One notification, preview "sender" (the sender is in the title).
        "new_message": "New message",
        "new_messages": {"one": "{n} new message", "other": "{n} new messages"},
        # Preview "none": nothing of the conversation, just that there is something.
        "hidden_title": {"one": "New message", "other": "New messages"},
        "hidden_body": {"one": "You have a new message", "other": "You have {n} new messages"},
        # Several unread messages of one conversation in one notification.
        "grouped_body": "{count}: {text}",
        # The clearing push: a browser may insist on showing something for every push.
        "cleared_title": "Read on another device",
        "test_title": "Test notification",
        "test_body": "Push notifications work on this device.",
        "action_reply": "Reply",
        "action_read": "Mark as read",
        # A message of attachments and no text: its images, or its first other file.
        "photos": {"one": "Photo", "other": "{n} photos"},
        "file": "File: {name}",
        "file_and_more": {"one": "File: {name} and {n} more", "other": "File: {name} and {n} more"},
    },
    "de": {
        "new_message": "Neue Nachricht",
        "new_messages": {"one": "{n} neue Nachricht", "other": "{n} neue Nachrichten"},
        "hidden_title": {"one": "Neue Nachricht", "other": "Neue Nachrichten"},
        "hidden_body": {
            "one": "Du hast eine neue Nachricht",
            "other": "Du hast {n} neue Nachrichten",
        },
        "grouped_body": "{count}: {text}",
        "cleared_title": "Auf einem anderen Gerät gelesen",
        "test_title": "Testbenachrichtigung",
        "test_body": "Push-Benachrichtigungen funktionieren auf diesem Gerät.",
        "action_reply": "Antworten",
        "action_read": "Als gelesen markieren",
        "photos": {"one": "Foto", "other": "{n} Fotos"},
        "file": "Datei: {name}",
        "file_and_more": {
            "one": "Datei: {name} und eine weitere",
            "other": "Datei: {name} und {n} weitere",
        },
    },
}


def locale_of(value: str | None) -> str:
    """The supported locale for a user's setting (the catalogue has each one): "de",
    "de-AT" and "de_at" are "de"; anything unknown is the default."""
    language = (value or "").replace("_", "-").split("-", 1)[0].strip().lower()
    return language if language in SUPPORTED_LOCALES else DEFAULT_LOCALE


def text(locale: str, key: str, n: int | None = None, **values: object) -> str:
    """The text `key` in `locale` (any setting: see locale_of); with `n`, its plural
    form for that count, `{n}` filled in."""
    entries = _CATALOGUE.get(locale) or _CATALOGUE[locale_of(locale)]
    entry = entries[key]
    if isinstance(entry, dict):
        if n is None:
            raise ValueError(f"push text {key!r} needs a count")
        entry = entry[_plural(n)]
    return entry.format(n=n, **values) if (n is not None or values) else entry


def _plural(n: int) -> str:
    # English and German share CLDR's rule: "one" for exactly 1, "other" for the rest.
    return "one" if n == 1 else "other"
