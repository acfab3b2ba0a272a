"""Who gets a push, decided alone (no provider involved), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from app.db import utcnow
from app.messenger.models import Participant, PushAttempt
from app.messenger.presence import LocalPresence
from app.messenger.push.decision import (
    PlannedPush,
    offline_recipients,
    plan_for_offline,
    recipients,
)
from app.messenger.push.notification import preview
from tests.helpers import Client

D = "/api/v1/messenger/devices/register"
BASE_URL = "https://chat.example"


async def plan(
    client: Client,
    presence: LocalPresence,
    message: dict[str, Any],
    participants: dict[str, frozenset[int]],
    skip_done: bool = False,
) -> list[PlannedPush]:
    """The decision as the push service makes it: presence first, then the database."""
    offline = await offline_recipients(presence, recipients([message], participants))
    async with client.node.services.engine.connect() as conn:
        return await plan_for_offline(
            conn, [message], participants, offline, BASE_URL, skip_done=skip_done
        )


async def test_offline_recipients_and_their_devices(client: Client) -> None:
    sender, online, muted, plain = [await client.user() for _ in range(4)]
    conv = await client.conversation(sender, online, muted, plain, title="Ops")
    devices = {}
    for user in (sender, online, muted, plain):
        r = await client.http.post(
            D,
            json={"device_token": f"{user.id:02d}" * 32, "platform": "ios", "provider": "apns"},
            headers=user.headers,
        )
        devices[user.id] = r.json()["device_token_id"]
    second = await client.http.post(
        D,
        json={
            "device_token": f"tok-{plain.id}-" + "x" * 20,
            "platform": "android",
            "provider": "fcm",
        },
        headers=plain.headers,
    )
    message = (await client.send(sender, conv["id"], "deploy done")).json()
    engine = client.node.services.engine
    async with engine.begin() as conn:
        await conn.execute(
            update(Participant)
            .where(Participant.conversation_id == conv["id"], Participant.user_id == muted.id)
            .values(mute_until=utcnow() + timedelta(minutes=5))
        )
    presence = LocalPresence()
    await presence.socket_opened(online.id)
    participants = {conv["id"]: frozenset(conv["participant_ids"])}
    # Neither the sender nor a user with a socket is a recipient; muting is decided later.
    assert await offline_recipients(presence, recipients([message], participants)) == {
        (conv["id"], muted.id),
        (conv["id"], plain.id),
    }
    plans = await plan(client, presence, message, participants)

    assert {(p.device.user_id, p.device.provider) for p in plans} == {
        (plain.id, "apns"),
        (plain.id, "fcm"),
    }
    assert {p.device.id for p in plans} == {devices[plain.id], second.json()["device_token_id"]}
    note = plans[0].notification
    assert note.title == f"{sender.display_name} • Ops"
    assert note.url == f"{BASE_URL}/?conversation={conv['id']}"
    assert note.data == {
        "type": "message.new",
        "conversation_id": conv["id"],
        "message_id": message["id"],
        "sender_id": sender.id,
        "seq": 1,
    }
    assert note.badge == 1
    # A job taken up again skips the devices that already have an outcome.
    async with engine.begin() as conn:
        await conn.execute(
            PushAttempt.__table__.insert().values(
                message_id=message["id"],
                device_id=devices[plain.id],
                user_id=plain.id,
                provider="apns",
                outcome="delivered",
                attempts=1,
                created_at=utcnow(),
            )
        )
    redo = await plan(client, presence, message, participants, skip_done=True)
    assert {p.device.id for p in redo} == {second.json()["device_token_id"]}

    # Read already (on a socket that has gone since): nothing to push.
    async with engine.begin() as conn:
        await conn.execute(
            update(Participant)
            .where(Participant.conversation_id == conv["id"], Participant.user_id == plain.id)
            .values(last_read_seq=1)
        )
    assert await plan(client, presence, message, participants) == []

    # Once the user is online, nobody is left to push.
    await presence.socket_opened(plain.id)
    assert await offline_recipients(presence, recipients([message], participants)) == {
        (conv["id"], muted.id)
    }
    assert await plan(client, presence, message, participants) == []


def test_preview_is_one_line_and_short() -> None:
    assert preview("a\n\n b\tc") == "a b c"
    long = preview("word " * 100)
    assert len(long) == 200 and long.endswith("…")
