"""Who gets a push, decided alone (no provider involved), on SQLite and PostgreSQL:
attention first, then `decide`, as the push service calls them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from app.db import utcnow
from app.messenger.models import Participant, PushAttempt
from app.messenger.presence import LocalPresence
from app.messenger.push.decision import (
    Candidate,
    Decided,
    PlannedPush,
    decide,
    inattentive_recipients,
    recipients,
    unread_totals,
)
from app.messenger.push.history import message_notification_id
from app.messenger.push.notification import preview
from tests.helpers import Client, User

D = "/api/v1/messenger/devices/register"
C = "/api/v1/messenger/conversations"
BASE_URL = "https://chat.example"


async def decided_for(
    client: Client,
    attention: LocalPresence,
    messages: list[dict[str, Any]],
    participants: dict[str, frozenset[int]],
    skip_done: bool = False,
) -> Decided:
    """The decision as the push service makes it for one batch: attention first, then
    the database, for each recipient not looking."""
    away = await inattentive_recipients(attention, recipients(messages, participants))
    candidates = [
        Candidate(m, user_id, skip_done)
        for m in messages
        for user_id in sorted(participants[m["conversation_id"]])
        if (m["conversation_id"], user_id) in away
    ]
    async with client.node.services.engine.connect() as conn:
        return await decide(conn, candidates, BASE_URL)


async def plan(
    client: Client,
    attention: LocalPresence,
    message: dict[str, Any],
    participants: dict[str, frozenset[int]],
    skip_done: bool = False,
) -> list[PlannedPush]:
    decided = await decided_for(client, attention, [message], participants, skip_done)
    return [p for _, p in decided.pushes]


async def register(client: Client, user: User, token: str, provider: str = "apns") -> str:
    platform = {"apns": "ios", "fcm": "android", "web_push": "web"}[provider]
    r = await client.http.post(
        D,
        json={"device_token": token, "platform": platform, "provider": provider},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["device_token_id"])


async def test_recipients_not_looking_and_their_devices(client: Client) -> None:
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
    attention = LocalPresence()
    await attention.socket_opened(online.id)
    participants = {conv["id"]: frozenset(conv["participant_ids"])}
    # Neither the sender nor a user with an active socket is a recipient; muting is
    # decided later.
    assert await inattentive_recipients(attention, recipients([message], participants)) == {
        (conv["id"], muted.id),
        (conv["id"], plain.id),
    }
    plans = await plan(client, attention, message, participants)

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
        "notification_id": message_notification_id(plain.id, message["id"]),
    }
    assert plans[0].notification_id == note.data["notification_id"]
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
                conversation_id=conv["id"],
                seq=message["seq"],
            )
        )
    redo = await plan(client, attention, message, participants, skip_done=True)
    assert {p.device.id for p in redo} == {second.json()["device_token_id"]}

    # Read already (on a socket that has gone since): nothing to push.
    async with engine.begin() as conn:
        await conn.execute(
            update(Participant)
            .where(Participant.conversation_id == conv["id"], Participant.user_id == plain.id)
            .values(last_read_seq=1)
        )
    assert await plan(client, attention, message, participants) == []

    # Once the user is looking, nobody is left to push.
    await attention.socket_opened(plain.id)
    assert await inattentive_recipients(attention, recipients([message], participants)) == {
        (conv["id"], muted.id)
    }
    assert await plan(client, attention, message, participants) == []


def test_preview_is_one_line_and_short() -> None:
    assert preview("a\n\n b\tc") == "a b c"
    long = preview("word " * 100)
    assert len(long) == 200 and long.endswith("…")


async def test_a_batch_pushes_each_device_the_newest_message_of_a_conversation(
    client: Client,
) -> None:
    alice, bob = await client.user(display_name="Alice"), await client.user()
    conv = await client.conversation(alice, bob, title="Burst")
    other = await client.conversation(alice, bob, title="Elsewhere")
    phone = await register(client, bob, f"{bob.id:02d}" * 32)
    tablet = await register(client, bob, f"tok-{bob.id}-" + "y" * 20, "fcm")
    burst = [(await client.send(alice, conv["id"], text)).json() for text in ("one", "two", "3")]
    aside = (await client.send(alice, other["id"], "aside")).json()
    participants = {
        conv["id"]: frozenset(conv["participant_ids"]),
        other["id"]: frozenset(other["participant_ids"]),
    }
    attention = LocalPresence()

    decided = await decided_for(client, attention, [*burst, aside], participants)

    # One push per device and conversation: the newest message's, saying how many.
    pushes = sorted(
        (p.device.id, p.message_id, p.notification.count, p.notification.body)
        for _, p in decided.pushes
    )
    assert pushes == sorted(
        [
            (phone, burst[2]["id"], 3, "3 new messages: 3"),
            (tablet, burst[2]["id"], 3, "3 new messages: 3"),
            (phone, aside["id"], 1, "aside"),
            (tablet, aside["id"], 1, "aside"),
        ]
    )
    # The older ones are decided all the same: sent, covered by the newest's push.
    assert sorted((d.seq, d.conversation_id, d.reason) for d in decided.decisions) == sorted(
        [(m["seq"], m["conversation_id"], "sent") for m in (*burst, aside)]
    )

    # Taken up again (a recovered job): a device with an outcome for a newer message of
    # the conversation is not pushed an older one, which would land after it.
    async with client.node.services.engine.begin() as conn:
        await conn.execute(
            PushAttempt.__table__.insert().values(
                message_id=burst[1]["id"],
                device_id=phone,
                user_id=bob.id,
                provider="apns",
                outcome="delivered",
                attempts=1,
                created_at=utcnow(),
                conversation_id=conv["id"],
                seq=burst[1]["seq"],
            )
        )
    redo = await decided_for(client, attention, burst[:2], participants, skip_done=True)
    assert [(p.device.id, p.message_id) for _, p in redo.pushes] == [(tablet, burst[1]["id"])]
    redo = await decided_for(client, attention, burst, participants, skip_done=True)
    assert sorted((p.device.id, p.message_id) for _, p in redo.pushes) == sorted(
        [(phone, burst[2]["id"]), (tablet, burst[2]["id"])]
    )


async def test_the_badge_leaves_out_muted_and_silenced_conversations(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    now = utcnow()
    settings: dict[str, dict[str, Any]] = {
        "plain": {},
        "muted": {"muted": True},
        "snoozed": {"mute_until": (now + timedelta(hours=1)).isoformat()},
        "snooze over": {"mute_until": (now - timedelta(minutes=1)).isoformat()},
        "notify none": {"notify": "none"},
        "notify mentions": {"notify": "mentions"},
    }
    convs = {}
    for name, body in settings.items():
        convs[name] = await client.conversation(alice, bob, title=name)
        if body:
            r = await client.http.put(
                f"{C}/{convs[name]['id']}/settings", json=body, headers=bob.headers
            )
            assert r.status_code == 200, r.text
        await client.send(alice, convs[name]["id"], "unread")
    latest = (await client.send(alice, convs["plain"]["id"], "unread too")).json()
    await register(client, bob, f"{bob.id:02d}" * 32)

    # Plain (2), the snooze that is over (1) and notify mentions (1); not the others.
    async with client.node.services.engine.connect() as conn:
        assert await unread_totals(conn, [bob.id]) == {bob.id: 4}
    participants = {convs["plain"]["id"]: frozenset(convs["plain"]["participant_ids"])}
    [push] = await plan(client, LocalPresence(), latest, participants)
    assert push.notification.badge == 4
