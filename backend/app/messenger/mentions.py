"""Mentions: which participants a message's content names.

`@username` names that participant (usernames are stored lower-cased, so the match
ignores case); a name that is no participant's is plain text. `@all` in a group names
every participant, but only from a group admin (roles.py).

Sends are many and mentions few: content without an "@" is never looked at, and the
names looked up are cached (usernames never change), so a send pays a query only for
a name this node has not seen (and `@all` one for the sender's role).
A name nobody holds is remembered too, but only for a few seconds (someone may take it),
and a message's first MAX_NAMES names count: one frame costs at most one small query.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import one_of
from app.messenger.roles import is_group_admin
from app.models import User

K = TypeVar("K")
V = TypeVar("V")

_users = User.__table__

EVERYONE = "all"
# The @names of a message that count (the first ones); the rest are plain text. Each is
# looked up as typed and, ending in "." or "-", without it: at most twice as many names
# in one query.
MAX_NAMES = 20
# How long a name nobody holds is taken as nobody's, and how many such names a node
# remembers: a user who registers it is mentionable within this time.
UNKNOWN_NAME_SECONDS = 5.0
MAX_UNKNOWN_NAMES = 10_000
# An "@" right after a letter, digit or one of ".+-_" is part of an e-mail address or a
# word (bob@ann.com), not a mention. A name runs as far as a username's characters do.
_MENTION = re.compile(r"(?<![\w.+@-])@([A-Za-z0-9_.-]{1,64})")
# What a sentence may put right after a name ("@ann." "@bob-"): not part of it.
_TRAILING = ".-"


def mentioned_names(content: str) -> list[tuple[str, ...]]:
    """What each `@name` token in the content could stand for, lower-cased, each token
    once: the token itself and, when it ends in punctuation a username may also hold
    ("@ann." at the end of a sentence), the token without it, in that order."""
    tokens: dict[tuple[str, ...], None] = {}
    for token in _MENTION.findall(content):
        name = token.lower()
        bare = name.rstrip(_TRAILING)
        tokens[(name, bare) if bare and bare != name else (name,)] = None
        if len(tokens) >= MAX_NAMES:
            break
    return list(tokens)


class Mentions:
    """Resolves the mentions of a send (see the module's note)."""

    def __init__(
        self,
        engine: AsyncEngine,
        max_cached: int = 100_000,
        unknown_seconds: float = UNKNOWN_NAME_SECONDS,
        max_unknown: int = MAX_UNKNOWN_NAMES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._max_cached = max_cached
        self._unknown_seconds = unknown_seconds
        self._max_unknown = max_unknown
        self._clock = clock
        self._user_ids: OrderedDict[str, int] = OrderedDict()
        # name nobody held when looked up -> until when it is taken as nobody's
        self._unknown: OrderedDict[str, float] = OrderedDict()

    async def resolve(
        self, sender_id: int, conversation_id: str, content: str, participants: frozenset[int]
    ) -> list[int] | None:
        """The participants the content names, ascending; None when it names nobody."""
        if "@" not in content:
            return None
        tokens = mentioned_names(content)
        if not tokens:
            return None
        everyone = any(EVERYONE in token for token in tokens)
        if everyone and await self._may_mention_everyone(sender_id, conversation_id):
            return sorted(participants)
        # `@all` is no one's name (from anyone but an admin it is plain text).
        tokens = [tuple(n for n in token if n != EVERYONE) for token in tokens]
        ids = await self._user_ids_of({name for token in tokens for name in token})
        mentioned: set[int] = set()
        for token in tokens:
            # The longest name that is a participant's: "@ann." is "ann." if that is
            # someone here, else "ann".
            for name in token:
                user_id = ids.get(name)
                if user_id is not None and user_id in participants:
                    mentioned.add(user_id)
                    break
        return sorted(mentioned) or None

    async def _may_mention_everyone(self, sender_id: int, conversation_id: str) -> bool:
        """Whether the sender is an admin of this group (roles change, so this is asked
        each time; only a send naming `@all` asks). A direct conversation has no `@all`."""
        async with self._engine.connect() as conn:
            return await is_group_admin(conn, conversation_id, sender_id)

    async def _user_ids_of(self, names: Collection[str]) -> dict[str, int]:
        """The ids of the users with these names (unknown names are left out)."""
        ids: dict[str, int] = {}
        missing: list[str] = []
        now = self._clock()
        for name in names:
            user_id = self._user_ids.get(name)
            if user_id is not None:
                self._user_ids.move_to_end(name)
                ids[name] = user_id
            elif self._unknown.get(name, now) <= now:
                self._unknown.pop(name, None)
                missing.append(name)
        if missing:
            async with self._engine.connect() as conn:
                rows = await conn.execute(
                    select(_users.c.id, _users.c.username).where(
                        one_of(_users.c.username, missing, self._dialect)
                    )
                )
                for row in rows:
                    ids[row.username] = row.id
                    _remember(self._user_ids, row.username, row.id, self._max_cached)
            # Nobody's, for a few seconds only: someone may take the name.
            until = now + self._unknown_seconds
            for name in missing:
                if name not in ids:
                    _remember(self._unknown, name, until, self._max_unknown)
        return ids


def _remember(cache: OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > limit:
        cache.popitem(last=False)
