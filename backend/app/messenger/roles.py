"""Who may do what in a conversation. Every rule that asks for a role asks here.

A group has one owner (its creator, until they hand it on), admins and members; both
sides of a direct conversation are members, and a direct conversation has no members
to manage. Roles live in participants.role.

- rename, add members: admins and the owner;
- remove a member: admins and the owner; remove an admin: the owner; the owner: nobody
  (the owner leaves, and ownership passes on);
- change roles: the owner;
- `@all`, deleting others' messages: admins and the owner.
A deployment may let members rename and add too, and keep admins from deleting others'
messages (GroupPolicy, from the GROUP_* settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.messenger.models import Participant

OWNER, ADMIN, MEMBER = "owner", "admin", "member"
ROLES = (OWNER, ADMIN, MEMBER)

_participants = Participant.__table__


def is_admin(role: str | None) -> bool:
    """Whether this role runs a group (admins and the owner)."""
    return role in (OWNER, ADMIN)


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """What a deployment lets each role do beyond the fixed rules above."""

    members_may_rename: bool = False
    members_may_add: bool = False
    admins_may_delete_messages: bool = True

    @classmethod
    def from_settings(cls, settings: Any) -> GroupPolicy:
        return cls(
            members_may_rename=settings.group_members_may_rename,
            members_may_add=settings.group_members_may_add,
            admins_may_delete_messages=settings.group_admins_may_delete_messages,
        )

    def may_rename(self, role: str | None) -> bool:
        return is_admin(role) or (role == MEMBER and self.members_may_rename)

    def may_add(self, role: str | None) -> bool:
        return is_admin(role) or (role == MEMBER and self.members_may_add)

    def may_delete_others(self, role: str | None) -> bool:
        return is_admin(role) and self.admins_may_delete_messages


def may_remove(actor_role: str, target_role: str) -> bool:
    """Whether someone with actor_role may remove someone else with target_role."""
    if target_role == OWNER:
        return False
    if target_role == ADMIN:
        return actor_role == OWNER
    return is_admin(actor_role)


def may_set_roles(actor_role: str) -> bool:
    return actor_role == OWNER


async def role_of(conn: AsyncConnection, conversation_id: str, user_id: int) -> str | None:
    """The user's role in the conversation; None when they are not in it."""
    role: str | None = await conn.scalar(
        select(_participants.c.role).where(
            _participants.c.conversation_id == conversation_id,
            _participants.c.user_id == user_id,
        )
    )
    return role


async def is_group_admin(conn: AsyncConnection, conversation_id: str, user_id: int) -> bool:
    """Whether the user is an admin (or the owner) of this conversation; never in a
    direct one (its participants are members)."""
    return is_admin(await role_of(conn, conversation_id, user_id))
