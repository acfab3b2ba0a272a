"""Bot accounts and a group's incoming webhooks."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class BotCreated(BaseModel):
    """A new bot; its token is shown this once."""

    id: int
    username: str
    token: str


class Bot(BaseModel):
    id: int
    username: str
    display_name: str
    created_at: datetime
    last_used_at: datetime | None
    is_bot: bool


class BotList(BaseModel):
    """The caller's bots."""

    bots: list[Bot]


class BotToken(BaseModel):
    """The bot's new token (the old ones stop working)."""

    id: int
    token: str


class WebhookCreated(BaseModel):
    """A new webhook: POST to `url` (it holds the secret, shown this once)."""

    id: str
    name: str
    url: str


class Webhook(BaseModel):
    id: str
    conversation_id: str
    name: str
    bot_id: int
    created_by: int | None
    created_at: datetime


class WebhookList(BaseModel):
    """The group's standing webhooks (never their secrets)."""

    webhooks: list[Webhook]


class WebhookPost(BaseModel):
    """What to post: JSON `{content}` (or Slack's `{text}`); a form with `content`,
    `text` or `payload`, or text/plain, are taken too."""

    content: str | None = None
    text: str | None = None


class WebhookPosted(BaseModel):
    """The message is posted as the webhook's bot."""

    ok: bool
    message_id: str
