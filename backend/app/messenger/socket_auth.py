"""Keeping this node's sockets signed in: each closes with 4401 when its access token
expires (unless an `auth` frame brought a fresh one first), and within a poll of its
session being revoked, on whichever node that was done.

The frame path never touches the database: a socket's deadline is a timer, and the
revocations of all sessions come from one query per poll (none while no socket is open).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from app.auth import AccessClaims, InvalidToken
from app.config import Settings
from app.db import utcnow
from app.messenger.hub import Connection
from app.sessions import SessionStore

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
# Each poll looks this far behind its previous one: a revocation stamped by a node whose
# clock runs a little behind, or committed a little after its stamp, is still seen.
OVERLAP = timedelta(seconds=15)


class _Watch:
    __slots__ = ("claims", "conn", "timer", "token")

    def __init__(
        self, conn: Connection, claims: AccessClaims, token: str, timer: asyncio.TimerHandle
    ) -> None:
        self.conn = conn
        self.claims = claims
        self.token = token
        self.timer = timer


class SocketAuth:
    """The sessions and token deadlines of this node's sockets."""

    def __init__(self, store: SessionStore, settings: Settings) -> None:
        self._store = store
        self._poll_seconds = settings.session_revocation_poll_seconds
        self._watches: dict[str, _Watch] = {}  # by connection id
        self._by_session: dict[str, set[str]] = {}  # session id: connection ids
        self._task: asyncio.Task[None] | None = None

    async def verify(self, token: str) -> AccessClaims | None:
        """The claims of a valid token whose session stands; None otherwise."""
        try:
            return await self._store.verify(token)
        except InvalidToken:
            return None

    def watch(self, conn: Connection, claims: AccessClaims, token: str) -> None:
        """Close this socket when the token expires or its session is revoked."""
        self._unwatch(conn.id)
        delay = max(0.0, claims.expires_at - time.time())
        timer = asyncio.get_running_loop().call_later(delay, self._expired, conn.id)
        self._watches[conn.id] = _Watch(conn, claims, token, timer)
        self._by_session.setdefault(claims.session_id, set()).add(conn.id)

    async def renew(self, conn: Connection, token: str) -> AccessClaims:
        """An `auth` frame: the socket now lives as long as this token, which must be the
        same user's; InvalidToken otherwise (the socket keeps its current token)."""
        watch = self._watches.get(conn.id)
        if watch is not None and watch.token == token:
            return watch.claims  # the same token again: nothing to look up
        claims = await self._store.verify(token)
        if claims.user_id != conn.user_id:
            raise InvalidToken("another user's token")
        if conn.id in self._watches:  # not closed meanwhile
            self.watch(conn, claims, token)
        return claims

    def forget(self, conn: Connection) -> None:
        self._unwatch(conn.id)

    def _unwatch(self, conn_id: str) -> _Watch | None:
        watch = self._watches.pop(conn_id, None)
        if watch is None:
            return None
        watch.timer.cancel()
        session_id = watch.claims.session_id
        conns = self._by_session.get(session_id)
        if conns is not None:
            conns.discard(conn_id)
            if not conns:
                del self._by_session[session_id]
        return watch

    def _expired(self, conn_id: str) -> None:
        watch = self._unwatch(conn_id)
        if watch is not None:
            log.info("socket token expired user=%s conn=%s", watch.conn.user_id, conn_id)
            watch.conn.close(CLOSE_UNAUTHORIZED, "access token expired")

    def close_session(self, session_id: str) -> int:
        """Close this node's sockets of a revoked session; how many."""
        closed = 0
        for conn_id in tuple(self._by_session.get(session_id, ())):
            watch = self._unwatch(conn_id)
            if watch is not None:
                log.info(
                    "socket closed, session revoked user=%s session=%s conn=%s",
                    watch.conn.user_id,
                    session_id,
                    conn_id,
                )
                watch.conn.close(CLOSE_UNAUTHORIZED, "session revoked")
                closed += 1
        return closed

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="session-revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for watch in self._watches.values():
            watch.timer.cancel()

    async def _poll(self) -> None:
        since = utcnow() - OVERLAP
        failing = False
        while True:
            await asyncio.sleep(self._poll_seconds)
            started = utcnow()
            if not self._by_session:
                since = started - OVERLAP
                continue
            try:
                revoked = await self._store.revoked_since(since)
            except Exception as exc:
                # The database is away: the next poll looks from the same point.
                if not failing:
                    log.warning("revoked sessions check failed: %s", type(exc).__name__)
                failing = True
                continue
            if failing:
                log.info("revoked sessions check works again")
                failing = False
            since = started - OVERLAP
            for session_id in revoked:
                self.close_session(session_id)
