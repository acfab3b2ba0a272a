"""What an email says, in each language the app speaks; counts and the hidden preview
reuse the push catalogue's wording (push.texts), so a user reads the same words."""

from __future__ import annotations

from typing import Final

from app.messenger.push import texts as push_texts

_CATALOGUE: Final[dict[str, dict[str, str]]] = {
    "en": {
        "digest_intro": "Messages you have not read yet:",
        "open": "Open the conversation",
        "more": "and {n} more conversations",
        "unsubscribe": "Stop these emails",
        "why": "You get this email because you turned on email digests in the settings.",
        "verify_subject": "Confirm your email address",
        "verify_body": "Follow this link to get emails about messages you missed:",
        "verify_ignore": "If you did not ask for this, ignore this email.",
        "test_subject": "Test email",
        "test_body": "Email from the messenger reaches this address.",
    },
    "de": {
        "digest_intro": "Nachrichten, die du noch nicht gelesen hast:",
        "open": "Unterhaltung öffnen",
        "more": "und {n} weitere Unterhaltungen",
        "unsubscribe": "Diese E-Mails abbestellen",
        "why": "Du bekommst diese E-Mail, weil du E-Mail-Zusammenfassungen eingeschaltet hast.",
        "verify_subject": "Bestätige deine E-Mail-Adresse",
        "verify_body": "Folge diesem Link, um E-Mails über verpasste Nachrichten zu bekommen:",
        "verify_ignore": "Wenn du das nicht angefordert hast, ignoriere diese E-Mail.",
        "test_subject": "Test-E-Mail",
        "test_body": "E-Mails des Messengers erreichen diese Adresse.",
    },
}


def text(locale: str, key: str, **values: object) -> str:
    entry = _CATALOGUE[push_texts.locale_of(locale)][key]
    return entry.format(**values) if values else entry


def count_text(locale: str, key: str, n: int) -> str:
    """A plural text of the push catalogue ("new_messages", "hidden_body")."""
    return push_texts.text(push_texts.locale_of(locale), key, n)
