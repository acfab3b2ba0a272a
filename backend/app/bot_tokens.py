"""Bot tokens: long-lived bearer tokens of bot accounts, "mbot_<token id>_<secret>".

The prefix lets the session store tell one from a JWT without trying to decode it, and
lets the log redaction find it (app/logs.py). The secret is 32 random bytes, and only
its SHA-256 is stored: argon2 is for secrets people choose, which are guessable; a hash
of 256 random bits cannot be brute-forced however fast it is, so a fast hash is enough
and every request can afford it.

A valid token's claims name the bot and a session "bot:<token id>", so everything that
asks whether a session stands, or closes the sockets of revoked sessions, treats bot
tokens like sessions: a revoked token is refused at once on REST and its sockets close
within SESSION_REVOCATION_POLL_SECONDS on every node (nothing caches a verification).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.auth import AccessClaims, InvalidToken
from app.db import utcnow
from app.models import MAX_ID, BotToken, User

PREFIX = "mbot_"
SESSION_PREFIX = "bot:"
_TOKEN = re.compile(r"mbot_([0-9]{1,10})_([A-Za-z0-9_-]{43})")
# A bot token never expires by itself; its claims say a year (a socket's token deadline
# timer wants a time), and a socket of a bot may renew it with the same token.
_CLAIMS_LIFE_SECONDS = 365 * 86400
# last_used_at is written at most this often per token: not a write per request.
_LAST_USED_EVERY = timedelta(seconds=60)

_tokens = BotToken.__table__
_users = User.__table__


def is_bot_token(token: str) -> bool:
    """Whether this bearer token is a bot's (by its prefix; not whether it is valid)."""
    return token.startswith(PREFIX)


def is_bot_session(session_id: str) -> bool:
    """Whether claims with this session id came from a bot token."""
    return session_id.startswith(SESSION_PREFIX)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def issue(conn: AsyncConnection, bot_id: int) -> str:
    """A new token for the bot, in the caller's transaction: shown once, kept hashed."""
    secret = secrets.token_urlsafe(32)
    token_id = (
        await conn.execute(
            insert(_tokens)
            .values(bot_id=bot_id, token_hash=_digest(secret), created_at=utcnow())
            .returning(_tokens.c.id)
        )
    ).scalar_one()
    return f"{PREFIX}{token_id}_{secret}"


async def revoke_all(conn: AsyncConnection, bot_id: int) -> int:
    """Revoke every standing token of the bot, in the caller's transaction; how many."""
    result = await conn.execute(
        update(_tokens)
        .where(_tokens.c.bot_id == bot_id, _tokens.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount)


async def revoke_session(engine: AsyncEngine, bot_id: int, session_id: str) -> bool:
    """Revoke the one token behind this "bot:<id>" session of the bot (its logout); False
    if it stood no more."""
    raw = session_id.removeprefix(SESSION_PREFIX)
    if not raw.isdigit() or len(raw) > 10 or int(raw) > MAX_ID:
        return False
    async with engine.begin() as conn:
        result = await conn.execute(
            update(_tokens)
            .where(
                _tokens.c.id == int(raw),
                _tokens.c.bot_id == bot_id,
                _tokens.c.revoked_at.is_(None),
            )
            .values(revoked_at=utcnow())
        )
    return int(result.rowcount) == 1


async def verify(engine: AsyncEngine, token: str) -> AccessClaims:
    """The bot's claims if the token is one of a standing bot's and not revoked; else
    InvalidToken (the same for a malformed, unknown, wrong or revoked token)."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise InvalidToken("malformed bot token")
    token_id, secret = int(match.group(1)), match.group(2)
    if token_id > MAX_ID:
        raise InvalidToken("no such bot token")
    now = utcnow()
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(_tokens.c.bot_id, _tokens.c.token_hash, _tokens.c.last_used_at)
                .join(_users, _users.c.id == _tokens.c.bot_id)
                .where(
                    _tokens.c.id == token_id,
                    _tokens.c.revoked_at.is_(None),
                    # A deleted bot has no owner: its tokens are dead even if one was missed.
                    _users.c.bot_owner_id.is_not(None),
                )
            )
        ).first()
        if row is None or not hmac.compare_digest(row.token_hash, _digest(secret)):
            raise InvalidToken("no such bot token")
        if row.last_used_at is None or now - row.last_used_at > _LAST_USED_EVERY:
            await conn.execute(
                update(_tokens).where(_tokens.c.id == token_id).values(last_used_at=now)
            )
            await conn.commit()
    return AccessClaims(
        row.bot_id, f"{SESSION_PREFIX}{token_id}", time.time() + _CLAIMS_LIFE_SECONDS
    )


async def stands(engine: AsyncEngine, user_id: int, session_id: str) -> bool:
    """Whether the bot token behind this "bot:<id>" session is the bot's and standing."""
    raw = session_id.removeprefix(SESSION_PREFIX)
    if not raw.isdigit() or len(raw) > 10 or int(raw) > MAX_ID:
        return False
    async with engine.connect() as conn:
        found = await conn.scalar(
            select(_tokens.c.id)
            .join(_users, _users.c.id == _tokens.c.bot_id)
            .where(
                _tokens.c.id == int(raw),
                _tokens.c.bot_id == user_id,
                _tokens.c.revoked_at.is_(None),
                _users.c.bot_owner_id.is_not(None),
            )
        )
    return found is not None


async def revoked_since(conn: AsyncConnection, since: datetime) -> list[str]:
    """The "bot:<id>" sessions of tokens revoked after `since` (by any node)."""
    ids = await conn.scalars(select(_tokens.c.id).where(_tokens.c.revoked_at > since))
    return [f"{SESSION_PREFIX}{token_id}" for token_id in ids]
