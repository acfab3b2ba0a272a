"""Attachments: the uploads a message is sent with.

A send names its uploads by id (at most MAX_ATTACHMENTS, none twice). Before the send
is queued they are looked up in one query, and only for a send that names any: each
must be the sender's, made less than UPLOAD_UNATTACHED_HOURS ago and not sent yet (or
sent by this very send: a repeat then answers its original, as any repeat does). The
writer then claims them in the transaction that inserts the message (`claim`), so of
two sends naming one upload exactly one gets it, and the other is refused whole.

Someone else's upload, one that never was, and one sent already get the same answer,
so upload ids cannot be probed through sends.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.config import Settings
from app.db import one_of, utcnow
from app.errors import ApiError
from app.messenger.models import Message, Upload
from app.messenger.uploads import describe

_uploads = Upload.__table__
_messages = Message.__table__

# The most ids a send may carry before the setting is even read (the setting's own cap).
MAX_IDS = 100
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Claimable(Protocol):
    """A send being written: its new message's id and the uploads it carries."""

    id: str
    conversation_id: str
    sender_id: int
    attachments: list[dict[str, Any]] | None


class AttachmentTaken(Exception):
    """An upload of this send was claimed by another message meanwhile: the
    transaction is void, and this send is refused."""

    def __init__(self, send: Claimable) -> None:
        super().__init__("an attachment was sent with another message")
        self.send = send


def invalid_attachment() -> ApiError:
    return ApiError(
        422, "invalid_attachment", "an attachment is not an upload of yours that can be sent"
    )


class Attachments:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._max = settings.max_attachments
        self._window = timedelta(hours=settings.upload_unattached_hours)

    def check_shape(self, upload_ids: Sequence[str]) -> None:
        """422 for a list no send may carry, before any query: too long, an id twice,
        or something that is no upload id."""
        if len(upload_ids) > self._max:
            raise ApiError(
                422, "too_many_attachments", f"a message may carry at most {self._max} files"
            )
        if len(set(upload_ids)) != len(upload_ids):
            raise ApiError(422, "invalid_attachment", "an upload is named twice")
        if not all(_UUID.fullmatch(upload_id) for upload_id in upload_ids):
            raise invalid_attachment()

    async def describe(
        self,
        sender_id: int,
        conversation_id: str,
        client_msg_id: str | None,
        upload_ids: Sequence[str],
    ) -> list[dict[str, Any]]:
        """The uploads as the message will show them, in the order named; one query.
        422 `invalid_attachment` unless every one may be sent with this send."""
        self.check_shape(upload_ids)
        since = utcnow() - self._window
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        _uploads,
                        _messages.c.conversation_id.label("sent_in"),
                        _messages.c.client_msg_id.label("sent_as"),
                    )
                    .outerjoin(_messages, _messages.c.id == _uploads.c.message_id)
                    .where(
                        one_of(_uploads.c.id, upload_ids, conn.dialect.name),
                        _uploads.c.uploader_id == sender_id,
                    )
                )
            ).all()
        found = {row.id: row for row in rows}
        described = []
        for upload_id in upload_ids:
            row = found.get(upload_id)
            if row is None:
                raise invalid_attachment()
            if row.message_id is None:
                if row.created_at < since:
                    raise invalid_attachment()  # the cleanup may take it any moment
            elif not (
                client_msg_id is not None
                and row.sent_in == conversation_id
                and row.sent_as == client_msg_id
            ):
                raise invalid_attachment()
            described.append(describe(row))
        return described


async def claim(conn: AsyncConnection, send: Claimable) -> None:
    """In the transaction that inserts the send's message: mark its uploads as sent with
    it. AttachmentTaken when any of them is no longer free (another send won it)."""
    ids = [a["id"] for a in send.attachments or ()]
    if not ids:
        return
    claimed = await conn.execute(
        update(_uploads)
        .where(
            one_of(_uploads.c.id, ids, conn.dialect.name),
            _uploads.c.uploader_id == send.sender_id,
            _uploads.c.message_id.is_(None),
        )
        .values(message_id=send.id, conversation_id=send.conversation_id)
    )
    if claimed.rowcount != len(ids):
        raise AttachmentTaken(send)
