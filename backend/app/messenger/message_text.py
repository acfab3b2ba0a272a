"""The rules a message's text must meet, wherever it is written: sent, scheduled or edited."""

from __future__ import annotations

from app.errors import ApiError


def check_message_length(content: str, max_length: int) -> None:
    """422 message_too_long for text over `max_length` characters."""
    if len(content) > max_length:
        raise ApiError(422, "message_too_long", f"the message is over {max_length} characters")


def check_message_text(content: str, max_length: int) -> None:
    """422 empty_content for blank text, else as check_message_length."""
    if not content.strip():
        raise ApiError(422, "empty_content", "the message is empty")
    check_message_length(content, max_length)
