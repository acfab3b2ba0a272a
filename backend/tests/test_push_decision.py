"""Who gets a push, decided alone (no provider involved), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from app.db import utcnow
from app.messenger.hub import Hub
from app.messenger.models import Participant, PushAttempt
from app.messenger.presence import LocalPresence
from app.messenger.push.decision import plan_pushes, preview
from tests.helpers import Client

D = "/api/v1/messenger/devices/register"


async def test_plan_pushes(client: Client) -> None:
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
    presence = LocalPresence(Hub())
    await presence.socket_opened(online.id)
    participants = {conv["id"]: frozenset(conv["participant_ids"])}
    async with engine.connect() as conn:
        plans = await plan_pushes(conn, presence, [message], participants, "https://chat.example")

    assert {(p.device.user_id, p.device.provider) for p in plans} == {
        (plain.id, "apns"),
        (plain.id, "fcm"),
    }
    assert {p.device.id for p in plans} == {devices[plain.id], second.json()["device_token_id"]}
    note = plans[0].notification
    assert note.title == f"{sender.display_name} • Ops"
    assert note.url == f"https://chat.example/?conversation={conv['id']}"
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
    async with engine.connect() as conn:
        redo = await plan_pushes(
            conn, presence, [message], participants, "https://chat.example", skip_done=True
        )
    assert {p.device.id for p in redo} == {second.json()["device_token_id"]}

    # Once the user is online, nobody is left to push.
    await presence.socket_opened(plain.id)
    async with engine.connect() as conn:
        assert (
            await plan_pushes(conn, presence, [message], participants, "https://chat.example") == []
        )


def test_preview_is_one_line_and_short() -> None:
    assert preview("a\n\n b\tc") == "a b c"
    long = preview("word " * 100)
    assert len(long) == 200 and long.endswith("…")
