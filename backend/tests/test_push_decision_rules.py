"""Who is pushed, who is not, and why: every rule of the push decision as one table,
run against a real node on SQLite and on PostgreSQL with the three fake providers.
Each row sets up a recipient, has a message sent to them, and checks the reason
recorded in push_decisions and whether their device got the push."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from app.db import utcnow
from app.messenger.models import PushAttempt, PushDecision, PushJob
from tests.helpers import Client, Node, Socket, User, eventually, make_settings, start_node
from tests.push_world import PushWorld, start_push_world

C = "/api/v1/messenger/conversations"
DELAY = 2  # seconds, for the rows with a push delay
ZONE = "Asia/Kathmandu"  # UTC+05:45: quiet hours are read in the user's zone


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("push-rules"))


@pytest.fixture(scope="module")
async def node(world: PushWorld, db_url: str) -> AsyncIterator[Node]:
    # Recovery every hour: a delayed push must go out because its node wakes for it.
    n = await start_node(make_settings(db_url, **world.settings))
    yield n
    await n.stop()


@pytest.fixture
async def api(node: Node, world: PushWorld) -> AsyncIterator[Client]:
    world.reset()
    client = Client(node)
    yield client
    await client.close()


@dataclass
class Case:
    """The recipient of the message, and what the row needs to undo afterwards."""

    api: Client
    recipient: User
    conversation_id: str
    sockets: list[Socket]
    sender: User

    async def block_sender(self) -> None:
        r = await self.api.http.put(
            f"/api/v1/me/blocks/{self.sender.id}", headers=self.recipient.headers
        )
        assert r.status_code == 200, r.text

    async def conversation_settings(self, **body: Any) -> None:
        r = await self.api.http.put(
            f"{C}/{self.conversation_id}/settings", json=body, headers=self.recipient.headers
        )
        assert r.status_code == 200, r.text

    async def settings(self, **body: Any) -> None:
        r = await self.api.http.put(
            "/api/v1/me/notification-settings", json=body, headers=self.recipient.headers
        )
        assert r.status_code == 200, r.text

    async def quiet(self, now: bool, allow_mentions: bool = False) -> None:
        """Quiet hours around the present moment (or hours away from it) in ZONE."""
        local = utcnow().astimezone(ZoneInfo(ZONE))
        start, end = (local - timedelta(hours=1), local + timedelta(hours=1))
        if not now:
            start, end = local + timedelta(hours=3), local + timedelta(hours=4)
        await self.settings(
            time_zone=ZONE,
            quiet_hours={
                "start": start.strftime("%H:%M"),
                "end": end.strftime("%H:%M"),
                "allow_mentions": allow_mentions,
            },
        )

    async def socket(self, activity: str = "active") -> None:
        sock = await Socket.connect(self.api.node, self.recipient)
        self.sockets.append(sock)
        await self.activity(activity)

    async def activity(self, state: str) -> None:
        """Every socket of the recipient says so; wait until attention counts it (a
        change may wait out attention's interval)."""
        for sock in self.sockets:
            await sock.send({"type": "activity", "state": state})

        async def counted() -> bool:
            looking = await self.api.node.services.attention.online([self.recipient.id])
            return (self.recipient.id in looking) is (state == "active")

        await eventually(counted, what=f"attention to count the recipient {state}")


Setup = Callable[[Case], Awaitable[None]]


async def nothing(case: Case) -> None:
    pass


@dataclass(frozen=True)
class Row:
    setup: Setup
    reason: str
    pushed: bool
    mention: bool = False
    device: bool = True
    read_at_once: bool = False  # the recipient reads the message right after it is sent


ROWS: dict[str, Row] = {
    "plain": Row(nothing, "sent", True),
    "looking": Row(lambda c: c.socket(), "online", False),
    "idle tab only": Row(lambda c: c.socket("idle"), "sent", True),
    "back from idle": Row(lambda c: _then(c.socket("idle"), c.activity("active")), "online", False),
    # A group both are in stays open to a blocked sender; their messages push nothing.
    "blocked the sender": Row(lambda c: c.block_sender(), "blocked", False),
    "blocked the sender, mentioned, notify mentions": Row(
        lambda c: _then(c.block_sender(), c.conversation_settings(notify="mentions")),
        "blocked",
        False,
        mention=True,
    ),
    "blocked the sender, mentioned, mentions let through quiet hours": Row(
        lambda c: _then(c.block_sender(), c.quiet(now=True, allow_mentions=True)),
        "blocked",
        False,
        mention=True,
    ),
    "muted": Row(lambda c: c.conversation_settings(muted=True), "muted", False),
    "snoozed": Row(
        lambda c: c.conversation_settings(mute_until=(utcnow() + timedelta(hours=1)).isoformat()),
        "muted",
        False,
    ),
    "snooze over": Row(
        lambda c: c.conversation_settings(mute_until=(utcnow() - timedelta(minutes=1)).isoformat()),
        "sent",
        True,
    ),
    "push disabled": Row(lambda c: c.conversation_settings(push_enabled=False), "muted", False),
    "muted and mentioned": Row(
        lambda c: c.conversation_settings(muted=True), "muted", False, mention=True
    ),
    "notify none": Row(lambda c: c.conversation_settings(notify="none"), "notify_level", False),
    "notify none, mentioned": Row(
        lambda c: c.conversation_settings(notify="none"), "notify_level", False, mention=True
    ),
    "notify mentions, not mentioned": Row(
        lambda c: c.conversation_settings(notify="mentions"), "notify_level", False
    ),
    "notify mentions, mentioned": Row(
        lambda c: c.conversation_settings(notify="mentions"), "sent", True, mention=True
    ),
    "quiet hours now": Row(lambda c: c.quiet(now=True), "quiet_hours", False),
    "quiet hours now, mentioned, not let through": Row(
        lambda c: c.quiet(now=True), "quiet_hours", False, mention=True
    ),
    "quiet hours now, mentions let through, mentioned": Row(
        lambda c: c.quiet(now=True, allow_mentions=True), "sent", True, mention=True
    ),
    "quiet hours now, mentions let through, not mentioned": Row(
        lambda c: c.quiet(now=True, allow_mentions=True), "quiet_hours", False
    ),
    "quiet hours later": Row(lambda c: c.quiet(now=False), "sent", True),
    "quiet hours now, with a delay": Row(
        lambda c: _then(c.quiet(now=True), c.settings(push_delay_seconds=DELAY)),
        "quiet_hours",
        False,
    ),
    "delay, still unread": Row(lambda c: c.settings(push_delay_seconds=DELAY), "sent", True),
    "delay, read before it is due": Row(
        lambda c: c.settings(push_delay_seconds=DELAY),
        "read_before_delay",
        False,
        read_at_once=True,
    ),
    "no device": Row(nothing, "no_device", False, device=False),
    "no device, with a delay": Row(
        lambda c: c.settings(push_delay_seconds=DELAY), "no_device", False, device=False
    ),
}


async def _then(*steps: Awaitable[None]) -> None:
    for step in steps:
        await step


async def decision_for(node: Node, user_id: int, conversation_id: str, seq: int) -> Any:
    async with node.services.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(PushDecision).where(
                    PushDecision.user_id == user_id,
                    PushDecision.conversation_id == conversation_id,
                    PushDecision.first_seq <= seq,
                    PushDecision.last_seq >= seq,
                )
            )
        ).all()
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


async def attempts_for(node: Node, message_id: str) -> list[Any]:
    async with node.services.engine.connect() as conn:
        return list(
            await conn.execute(select(PushAttempt).where(PushAttempt.message_id == message_id))
        )


async def no_job_holds(node: Node, message_id: str) -> bool:
    async with node.services.engine.connect() as conn:
        jobs = (await conn.execute(select(PushJob))).all()
    return not any(message_id in job.message_ids for job in jobs)


@pytest.mark.parametrize("name", list(ROWS))
async def test_who_is_pushed_and_why(name: str, api: Client, world: PushWorld) -> None:
    row = ROWS[name]
    node = api.node
    sender = await api.user(display_name="Sender")
    recipient = await api.user(display_name="Recipient")
    conv = await api.conversation(sender, recipient, title="Rules")
    token = world.webpush.subscribe()
    if row.device:
        r = await api.http.post(
            "/api/v1/messenger/devices/register",
            json={"device_token": token, "platform": "web", "provider": "web_push"},
            headers=recipient.headers,
        )
        assert r.status_code == 201, r.text
    case = Case(api, recipient, conv["id"], [], sender)
    try:
        await row.setup(case)
        content = f"hello @{recipient.username}" if row.mention else "hello"
        r = await api.send(sender, conv["id"], content)
        assert r.status_code == 201, r.text
        message = r.json()
        if row.mention:
            assert message["mentions"] == [recipient.id]
        if row.read_at_once:
            read = await api.http.post(
                f"{C}/{conv['id']}/read", json={"seq": message["seq"]}, headers=recipient.headers
            )
            assert read.status_code == 200, read.text

        decision = await eventually(
            lambda: decision_for(node, recipient.id, conv["id"], message["seq"]),
            what=f"the decision for {name!r}",
        )
        assert decision.reason == row.reason
        assert decision.message_id == message["id"]
        assert decision.first_seq == decision.last_seq == message["seq"]

        # Once no job holds the message (the delayed one included), all is done.
        await eventually(lambda: no_job_holds(node, message["id"]), what="the jobs to end")
        attempts = await attempts_for(node, message["id"])
        if row.pushed:
            [attempt] = attempts
            assert (attempt.conversation_id, attempt.seq) == (conv["id"], message["seq"])
            assert attempt.outcome == "delivered" and attempt.user_id == recipient.id
            [push] = world.accepted("web_push", token)
            assert push.payload["data"]["message_id"] == message["id"]
            if "delay" in name:
                # Not before the delay, and promptly after it (the node woke for it).
                waited = attempt.created_at - datetime.fromisoformat(message["created_at"])
                assert timedelta(seconds=DELAY) <= waited < timedelta(seconds=DELAY + 3)
        else:
            assert attempts == []
            assert world.webpush.received_for(token) == []
    finally:
        for sock in case.sockets:
            await sock.close()
