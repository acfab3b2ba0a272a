"""What counts as an email address here: one the node may put in an SMTP envelope.

Deliberately plain (no quoted local parts, no IP literals, no comments): the address
goes into headers and the RCPT command, so anything that could break out of them
(whitespace, CR/LF, angle brackets, commas) is refused before it is stored.
"""

from __future__ import annotations

import re

MAX_LENGTH = 254
# Matched with fullmatch and \Z: `$` would also match before a trailing newline.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}\Z")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def normalise_email(value: str) -> str | None:
    """The address with its domain lower-cased, or None if it is not one we accept."""
    if not isinstance(value, str) or not 3 <= len(value) <= MAX_LENGTH or not value.isascii():
        return None
    # CR, LF or any other control character anywhere could end a header or a command.
    if not value.isprintable():
        return None
    local, at, domain = value.rpartition("@")
    if not at or not _LOCAL.fullmatch(local) or local.startswith(".") or local.endswith("."):
        return None
    if ".." in local:
        return None
    labels = domain.lower().split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if labels[-1].isdigit():  # an IP address, not a domain
        return None
    return f"{local}@{'.'.join(labels)}"


def same_address(a: str | None, b: str | None) -> bool:
    """Whether two stored addresses are one mailbox as far as a user means it: compared
    case-insensitively (Ana@x.com and ana@x.com are not a new address to verify)."""
    if a is None or b is None:
        return a is b
    return a.lower() == b.lower()
