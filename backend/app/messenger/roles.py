"""Who may do what in a conversation. Participants have no roles yet: a group's only
admin is its creator (conversations.created_by); a direct conversation has none. Every
rule that asks for a group admin (`@all`, deleting others' messages) asks here."""

from __future__ import annotations


def is_group_admin(kind: str, created_by: int, user_id: int) -> bool:
    """Whether the user is an admin of this conversation (of type `kind`)."""
    return kind == "group" and created_by == user_id
