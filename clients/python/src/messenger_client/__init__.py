"""A typed async client for the messenger: REST calls, and one socket whose events
survive reconnects (caught up by seq, never repeated, in order).

    async with Client("http://127.0.0.1:8000") as client:
        await client.login("alice", "secret")
        async for event in client.events():
            ...
"""

from messenger_client.backoff import Backoff
from messenger_client.client import Client, new_client_msg_id
from messenger_client.errors import (
    ApiError,
    AuthError,
    BadRequest,
    Conflict,
    ConnectionLost,
    Forbidden,
    MessengerError,
    NotFound,
    RateLimited,
    RetryLater,
    ServerError,
    SessionEnded,
    Unavailable,
)
from messenger_client.events import (
    Connected,
    ConversationNew,
    ConversationUpdated,
    Disconnected,
    ErrorEvent,
    Event,
    MessageNew,
    MessageUpdated,
    Presence,
    Read,
    Reminder,
    Typing,
    UnknownEvent,
)
from messenger_client.models import (
    Bot,
    Conversation,
    Device,
    DeviceRegistration,
    Message,
    User,
)
from messenger_client.tokens import Tokens

__all__ = [
    "ApiError",
    "AuthError",
    "Backoff",
    "BadRequest",
    "Bot",
    "Client",
    "Conflict",
    "Connected",
    "ConnectionLost",
    "Conversation",
    "ConversationNew",
    "ConversationUpdated",
    "Device",
    "DeviceRegistration",
    "Disconnected",
    "ErrorEvent",
    "Event",
    "Forbidden",
    "Message",
    "MessageNew",
    "MessageUpdated",
    "MessengerError",
    "NotFound",
    "Presence",
    "RateLimited",
    "Read",
    "Reminder",
    "RetryLater",
    "ServerError",
    "SessionEnded",
    "Tokens",
    "Typing",
    "Unavailable",
    "UnknownEvent",
    "User",
    "new_client_msg_id",
]
