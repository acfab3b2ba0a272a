"""The send path: one way in for WebSocket and REST sends.

A send is checked (content, membership), its flood check is started (content with an
"@" waits for its answer, then has its mentions looked up), and it is handed to the
writer, which commits it with whatever else is queued (see writer).
Once committed, its frame goes to every socket of the participants; the writer has
already handed the commit to the push service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from app import metrics
from app.config import Settings
from app.errors import ApiError
from app.jsonutil import dumps
from app.messenger.attachments import Attachments
from app.messenger.blocks import Blocks
from app.messenger.fanout import Fanout
from app.messenger.mentions import Mentions
from app.messenger.message_text import check_message_length
from app.messenger.participants import ParticipantCache
from app.messenger.writer import MessageWriter, Written
from app.ratelimit import RateLimiter


class Accepted(NamedTuple):
    """A send that passed its checks: its conversation's participants, and the writer's
    answer to come."""

    participants: frozenset[int]
    written: asyncio.Future[Written]


async def _let_through(flood_check: asyncio.Future[float]) -> bool:
    """Whether the flood check lets the send through (an error is the writer's to tell)."""
    try:
        return await asyncio.shield(flood_check) <= 0
    except asyncio.CancelledError:
        if flood_check.cancelled():
            return False
        raise  # this send's own task is cancelled
    except Exception:
        return False


class Sender:
    def __init__(
        self,
        settings: Settings,
        participants: ParticipantCache,
        limiter: RateLimiter,
        writer: MessageWriter,
        fanout: Fanout,
        blocks: Blocks,
        mentions: Mentions,
        reply_exists: Callable[[str, str, int], Awaitable[bool]] | None = None,
        attachments: Attachments | None = None,
    ) -> None:
        self._max_length = settings.max_message_length
        self._rate = settings.send_rate_per_second
        self._burst = settings.send_burst
        self._participants = participants
        self._limiter = limiter
        self._writer = writer
        self._fanout = fanout
        self._blocks = blocks
        self._mentions = mentions
        # (conversation_id, message_id) -> whether a reply may quote that message.
        self._reply_exists = reply_exists
        self._attachments = attachments

    async def accept(
        self,
        sender_id: int,
        conversation_id: str,
        content: str,
        client_msg_id: str | None,
        reply_to: str | None = None,
        attachments: list[str] | None = None,
    ) -> Accepted:
        """Check a send and queue it for the writer.

        Sends are committed in the order they are accepted, so a socket may accept its
        next send before the last is committed (many in one batch) without reordering.
        """
        if not content.strip() and not attachments:
            raise ApiError(422, "empty_content", "the message is empty")
        if attachments:
            if self._attachments is None:
                raise ApiError(422, "invalid_attachment", "this server takes no attachments")
            self._attachments.check_shape(attachments)
        check_message_length(content, self._max_length)
        participants = await self._participants.of_sender(sender_id, conversation_id)
        await self._blocks.check_send(sender_id, conversation_id, participants)
        self._writer.check_room()  # before the flood check takes a token
        # The flood check goes to Redis without waiting here: the writer waits for its
        # answer just before writing, so a socket's next frame is read meanwhile.
        flood_check = self._limiter.start_hit(f"send:{sender_id}", self._rate, self._burst)
        # Only content with an "@" can name anyone: the rest never awaits the lookup. The
        # lookup may cost a query, so it waits for the flood check: a refused send costs
        # none (the writer answers the refusal, as for any send).
        mentions = None
        if "@" in content and await _let_through(flood_check):
            mentions = await self._mentions.resolve(
                sender_id, conversation_id, content, participants
            )
        # A reply costs one query, after the flood check as mentions do; other sends none.
        if reply_to is not None and await _let_through(flood_check):
            if self._reply_exists is None or not await self._reply_exists(
                conversation_id, reply_to, sender_id
            ):
                raise ApiError(
                    404, "reply_to_not_found", "reply_to is no message of this conversation"
                )
        # Files cost one query, after the flood check as replies do; other sends none.
        described = None
        if attachments and self._attachments and await _let_through(flood_check):
            described = await self._attachments.describe(
                sender_id, conversation_id, client_msg_id, attachments
            )
        written = self._writer.submit(
            conversation_id,
            sender_id,
            content,
            client_msg_id,
            participants,
            flood_check,
            mentions=mentions,
            reply_to=reply_to,
            attachments=described,
        )
        return Accepted(participants, written)

    async def finish(
        self, accepted: Accepted, exclude_connection: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Once committed: deliver to the sockets. (message, created)."""
        message, created = await accepted.written
        if created:
            metrics.messages_sent.inc()
            # Encoded once, for every socket on every node.
            frame = dumps({"type": "message.new", "message": message})
            await self._fanout.publish(accepted.participants, frame, exclude=exclude_connection)
        return message, created

    async def send(
        self,
        sender_id: int,
        conversation_id: str,
        content: str,
        client_msg_id: str | None,
        reply_to: str | None = None,
        attachments: list[str] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Check, persist, then deliver. (message, created)."""
        accepted = await self.accept(
            sender_id, conversation_id, content, client_msg_id, reply_to, attachments
        )
        return await self.finish(accepted)
