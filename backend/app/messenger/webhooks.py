"""Incoming webhooks: an unguessable URL that posts into one group as a bot.

A group admin makes one with a name; it gets its own bot (is_bot, run by the admin who
made it, display name = the webhook's name), which joins the group as a member. The
URL is <base>/api/v1/hooks/<hook id>/<secret>: the secret is 32 random bytes, only its
SHA-256 is kept (as for bot tokens, a fast hash is enough for a random secret), and it
is compared in constant time. A POST to it is a send through the ordinary send path as
that bot (length limit, flood control, mentions, live delivery and pushes to people),
within WEBHOOK_RATE_PER_MINUTE per webhook and WEBHOOK_CONVERSATION_RATE_PER_MINUTE
across the conversation's webhooks. An unknown webhook, a wrong secret and a revoked
webhook all answer the same 404; each try, those included, first takes one of the
client address's WEBHOOK_ADDRESS_RATE_PER_MINUTE, so guessing costs the guesser.

Revoking a webhook takes its bot out of the group and from its owner: the bot's row
stays, so its messages still name it. Taking the bot out of the group (members.py)
revokes its webhook the same way (app/messenger/hook_bots.py).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.bots import add_bot, not_for_bots, take_creation
from app.config import Settings
from app.db import utcnow
from app.errors import ApiError
from app.jsonutil import JSONResponse, dumps
from app.messenger.conversations import MAX_GROUP_SIZE
from app.messenger.fanout import Fanout
from app.messenger.members import shared_view
from app.messenger.models import Conversation, IncomingWebhook, Participant
from app.messenger.participants import ParticipantCache
from app.messenger.roles import MEMBER, is_group_admin
from app.messenger.send import Sender
from app.messenger.webhook_body import read_limited, webhook_text
from app.models import User
from app.openapi import schemas
from app.openapi.api import documented
from app.ratelimit import RateLimiter, address_key, too_many_requests
from app.web import RequestReader

log = logging.getLogger(__name__)

_hooks = IncomingWebhook.__table__
_conversations = Conversation.__table__
_participants = Participant.__table__
_users = User.__table__
HOOK_PATH = "/api/v1/hooks"

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class WebhookBody(BaseModel):
    name: Name


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _not_found() -> ApiError:
    return ApiError(404, "webhook_not_found", "no such webhook")


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "conversation_id": row.conversation_id,
        "name": row.name,
        "bot_id": row.bot_id,
        "created_by": row.created_by,
        "created_at": row.created_at,
    }


class Webhooks:
    """Making, listing and revoking a group's webhooks, and posting through one."""

    def __init__(
        self,
        engine: AsyncEngine,
        participants: ParticipantCache,
        fanout: Fanout,
        sender: Sender,
        limiter: RateLimiter,
        settings: Settings,
    ) -> None:
        self._engine = engine
        self._participants = participants
        self._fanout = fanout
        self._sender = sender
        self._limiter = limiter
        self._settings = settings

    async def _admin_of_group(
        self, conn: AsyncConnection, conversation_id: str, user_id: int
    ) -> Any:
        """The group's row, locked (its last_seq is where a new member starts); 403 unless
        the user runs the group, 403 `webhooks_groups_only` for other conversations."""
        row = (
            await conn.execute(
                update(_conversations)
                .where(_conversations.c.id == conversation_id)
                .values(last_seq=_conversations.c.last_seq)
                .returning(_conversations.c.type, _conversations.c.last_seq)
            )
        ).first()
        if row is None:
            raise ApiError(404, "conversation_not_found", "no such conversation")
        if row.type != "group":
            raise ApiError(403, "webhooks_groups_only", "only a group can have webhooks")
        if not await is_group_admin(conn, conversation_id, user_id):
            raise ApiError(403, "not_allowed", "only a group admin may manage its webhooks")
        return row

    async def create(
        self, user_id: int, conversation_id: str, name: str, host: str | None
    ) -> tuple[str, str]:
        """A new webhook of the group (host: the caller's address): (its id, its secret)."""
        await self._participants.of_member(user_id, conversation_id)
        await take_creation(self._limiter, self._settings, user_id, host)
        hook_id, secret = str(uuid.uuid4()), secrets.token_urlsafe(32)
        async with self._engine.begin() as conn:
            conv = await self._admin_of_group(conn, conversation_id, user_id)
            cap = self._settings.max_webhooks_per_conversation
            standing = await conn.scalar(
                select(func.count()).where(
                    _hooks.c.conversation_id == conversation_id, _hooks.c.revoked_at.is_(None)
                )
            )
            if (standing or 0) >= cap:
                raise ApiError(409, "too_many_webhooks", f"a group has at most {cap} webhooks")
            members = await conn.scalar(
                select(func.count()).where(_participants.c.conversation_id == conversation_id)
            )
            if (members or 0) >= MAX_GROUP_SIZE:
                raise ApiError(
                    422, "too_many_members", f"a group has at most {MAX_GROUP_SIZE} members"
                )
            bot_id = await add_bot(conn, user_id, f"hook.{secrets.token_hex(8)}", name)
            if bot_id is None:  # 64 random bits taken: as likely as guessing the secret
                raise ApiError(409, "conflict", "try again")
            now = utcnow()
            await conn.execute(
                insert(_participants).values(
                    conversation_id=conversation_id,
                    user_id=bot_id,
                    joined_at=now,
                    role=MEMBER,
                    joined_seq=conv.last_seq,
                    last_read_seq=conv.last_seq,
                )
            )
            await conn.execute(
                insert(_hooks).values(
                    id=hook_id,
                    conversation_id=conversation_id,
                    bot_id=bot_id,
                    name=name,
                    secret_hash=_digest(secret),
                    created_by=user_id,
                    created_at=now,
                )
            )
        log.info(
            "webhook created user=%s conversation=%s hook=%s bot=%s",
            user_id,
            conversation_id,
            hook_id,
            bot_id,
        )
        await self._announce(conversation_id, extra={bot_id})
        return hook_id, secret

    async def standing(self, user_id: int, conversation_id: str) -> list[dict[str, Any]]:
        """The group's webhooks that are not revoked (never their secrets)."""
        await self._participants.of_member(user_id, conversation_id)
        async with self._engine.begin() as conn:
            await self._admin_of_group(conn, conversation_id, user_id)
            rows = (
                await conn.execute(
                    select(_hooks)
                    .where(
                        _hooks.c.conversation_id == conversation_id, _hooks.c.revoked_at.is_(None)
                    )
                    .order_by(_hooks.c.created_at, _hooks.c.id)
                )
            ).all()
        return [_view(row) for row in rows]

    async def revoke(self, user_id: int, conversation_id: str, hook_id: str) -> None:
        """Revoke the webhook; its bot leaves the group. 404 if it has no such webhook."""
        await self._participants.of_member(user_id, conversation_id)
        async with self._engine.begin() as conn:
            await self._admin_of_group(conn, conversation_id, user_id)
            bot_id = (
                await conn.execute(
                    update(_hooks)
                    .where(
                        _hooks.c.id == hook_id,
                        _hooks.c.conversation_id == conversation_id,
                        _hooks.c.revoked_at.is_(None),
                    )
                    .values(revoked_at=utcnow())
                    .returning(_hooks.c.bot_id)
                )
            ).scalar()
            if bot_id is None:
                raise _not_found()
            await conn.execute(
                delete(_participants).where(
                    _participants.c.conversation_id == conversation_id,
                    _participants.c.user_id == bot_id,
                )
            )
            await conn.execute(
                update(_users).where(_users.c.id == bot_id).values(bot_owner_id=None)
            )
        log.info(
            "webhook revoked user=%s conversation=%s hook=%s", user_id, conversation_id, hook_id
        )
        await self._announce(conversation_id, extra={bot_id})

    async def _announce(self, conversation_id: str, extra: set[int]) -> None:
        """After a commit: every node forgets the cached members, then the members (and
        the bot that joined or left) get `conversation.updated`."""
        await self._participants.changed(conversation_id)
        async with self._engine.connect() as conn:
            conversation = await shared_view(conn, conversation_id)
        frame = dumps({"type": "conversation.updated", "conversation": conversation})
        await self._fanout.publish(set(conversation["participant_ids"]) | extra, frame)

    async def take_address(self, host: str | None) -> None:
        """One post from this client address, before any lookup; 429 past its rate."""
        settings = self._settings
        retry_after = await self._limiter.hit(
            f"hook:addr:{address_key(host)}",
            settings.webhook_address_rate_per_minute / 60,
            settings.webhook_address_burst,
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many webhook posts from this address")

    async def admit(self, hook_id: str, secret: str) -> tuple[int, str]:
        """The webhook's (bot id, conversation id) if the secret is its own and it and
        its conversation have room in their rates; 404 or 429 otherwise."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(_hooks.c.bot_id, _hooks.c.conversation_id, _hooks.c.secret_hash).where(
                        _hooks.c.id == hook_id, _hooks.c.revoked_at.is_(None)
                    )
                )
            ).first()
        if row is None or not hmac.compare_digest(row.secret_hash, _digest(secret)):
            raise _not_found()
        settings = self._settings
        retry_after = await self._limiter.hit(
            f"hook:{hook_id}", settings.webhook_rate_per_minute / 60, settings.webhook_burst
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many posts to this webhook; slow down")
        # One group's webhooks together: ten hooks are not ten times the noise.
        retry_after = await self._limiter.hit(
            f"hook:conv:{row.conversation_id}",
            settings.webhook_conversation_rate_per_minute / 60,
            settings.webhook_conversation_burst,
        )
        if retry_after > 0:
            raise too_many_requests(retry_after, "too many webhook posts to this conversation")
        return row.bot_id, row.conversation_id

    async def send(self, hook_id: str, bot_id: int, conversation_id: str, text: str) -> str:
        """Post `text` as the webhook's bot, through the send path; the message's id."""
        message, _ = await self._sender.send(bot_id, conversation_id, text, None)
        log.info(
            "webhook posted hook=%s conversation=%s message=%s",
            hook_id,
            conversation_id,
            message["id"],
        )
        return str(message["id"])


class WebhookRoutes:
    """…/conversations/{id}/webhooks (group admins) and the webhooks' own URLs."""

    def __init__(self, webhooks: Webhooks, reader: RequestReader, settings: Settings) -> None:
        self._webhooks = webhooks
        self._reader = reader
        self._settings = settings

    @property
    def routes(self) -> list[Route]:
        base = "/api/v1/messenger/conversations/{conversation_id}/webhooks"
        return [
            Route(base, self.create, methods=["POST"]),
            Route(base, self.list_hooks, methods=["GET"]),
            Route(base + "/{hook_id}", self.revoke, methods=["DELETE"]),
            Route(HOOK_PATH + "/{hook_id}/{secret}", self.post, methods=["POST"]),
        ]

    def _url(self, request: Request, hook_id: str, secret: str) -> str:
        base = self._settings.web_base_url.rstrip("/") or str(request.base_url).rstrip("/")
        return f"{base}{HOOK_PATH}/{hook_id}/{secret}"

    @documented(
        "Make an incoming webhook for a group (group admins)",
        body=WebhookBody,
        responses={
            201: schemas.WebhookCreated,
            403: "not a group, or the caller is not one of its admins",
            404: "no such conversation",
            409: "the group has too many webhooks",
        },
        tags=["webhooks"],
    )
    async def create(self, request: Request) -> Response:
        caller = await self._reader.caller(request)
        not_for_bots(caller, "make webhooks")
        body = await self._reader.json(request, WebhookBody)
        conversation_id = request.path_params["conversation_id"]
        hook_id, secret = await self._webhooks.create(
            caller.user_id,
            conversation_id,
            body.name,
            request.client.host if request.client else None,
        )
        return JSONResponse(
            {"id": hook_id, "name": body.name, "url": self._url(request, hook_id, secret)}, 201
        )

    @documented(
        "A group's webhooks (group admins)",
        responses={
            200: schemas.WebhookList,
            403: "not a group, or the caller is not one of its admins",
            404: "no such conversation",
        },
        tags=["webhooks"],
    )
    async def list_hooks(self, request: Request) -> Response:
        caller = await self._reader.caller(request)
        hooks = await self._webhooks.standing(
            caller.user_id, request.path_params["conversation_id"]
        )
        return JSONResponse({"webhooks": hooks})

    @documented(
        "Revoke a webhook (group admins)",
        responses={
            200: schemas.Success,
            403: "not a group, or the caller is not one of its admins",
            404: "no such conversation or webhook",
        },
        tags=["webhooks"],
    )
    async def revoke(self, request: Request) -> Response:
        caller = await self._reader.caller(request)
        hook_id = request.path_params["hook_id"]
        if len(hook_id) > 36:
            raise _not_found()
        await self._webhooks.revoke(caller.user_id, request.path_params["conversation_id"], hook_id)
        return JSONResponse({"success": True})

    @documented(
        "Post to the group as the webhook's bot (the URL is the credential)",
        body=schemas.WebhookPost,
        responses={
            200: schemas.WebhookPosted,
            404: "no such webhook",
            415: "not JSON, a form or text/plain",
            429: "too many posts to this webhook, its group's webhooks or from this address",
        },
        tags=["webhooks"],
        auth=False,
    )
    async def post(self, request: Request) -> Response:
        await self._webhooks.take_address(request.client.host if request.client else None)
        hook_id, secret = request.path_params["hook_id"], request.path_params["secret"]
        if len(hook_id) > 36 or len(secret) > 64:
            raise _not_found()
        # The webhook first: an unknown one answers 404 whatever its body.
        bot_id, conversation_id = await self._webhooks.admit(hook_id, secret)
        body = await read_limited(request, self._settings.max_body_bytes)
        text = webhook_text(request.headers.get("content-type", ""), body)
        message_id = await self._webhooks.send(hook_id, bot_id, conversation_id, text)
        return JSONResponse({"ok": True, "message_id": message_id})
