"""Each push provider's in-flight limit: its own, and held for one attempt at a time.

A provider that throttles (429 with a long Retry-After) keeps its retries waiting,
but a waiting retry holds no slot: neither the provider's other devices nor another
provider's pushes wait behind it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from app.messenger.push.base import Device, Notification, Outcome, Result
from app.messenger.push.delivery import RetryPolicy, deliver
from tests.fakes import Mode, sample_device, sample_notification
from tests.helpers import Client, Node, eventually, make_settings, start_node
from tests.push_world import PushWorld, start_push_world

D = "/api/v1/messenger/devices/register"
LIMIT = 2  # PUSH_CONCURRENCY of the node below: each provider's, on its own
FCM_DEVICES = 2 * LIMIT


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        world = await start_push_world(stack, tmp_path_factory.mktemp("push-limits"))
        world.fcm.retry_after = "60"
        yield world


@pytest.fixture(scope="module")
async def push_node(world: PushWorld, postgresql_url: str) -> AsyncIterator[Node]:
    settings = {
        **world.settings,
        "push_concurrency": LIMIT,
        # Long enough to honour FCM's Retry-After rather than give up at once.
        "push_backoff_max_seconds": 120.0,
        # A hanging call holds its slot this long: longer than any test here waits.
        "push_timeout_seconds": 30.0,
    }
    node = await start_node(make_settings(postgresql_url, **settings))
    yield node
    await node.stop()


async def test_a_throttling_provider_does_not_delay_another(
    push_node: Node, world: PushWorld
) -> None:
    api = Client(push_node)
    try:
        alice, bob, carol = await api.user(), await api.user(), await api.user()
        to_bob = await api.conversation(alice, bob)
        to_carol = await api.conversation(alice, carol)
        world.fcm.modes.default = Mode.THROTTLED  # 429, Retry-After: 60, to every call
        fcm_tokens = [world.fcm_token() for _ in range(FCM_DEVICES)]
        for token in fcm_tokens:
            r = await api.http.post(
                D,
                json={"device_token": token, "platform": "android", "provider": "fcm"},
                headers=bob.headers,
            )
            assert r.status_code == 201, r.text
        web = world.webpush.subscribe()
        r = await api.http.post(
            D,
            json={"device_token": web, "platform": "web", "provider": "web_push"},
            headers=carol.headers,
        )
        assert r.status_code == 201, r.text

        assert (await api.send(alice, to_bob["id"], "for bob's phones")).status_code == 201
        # As many FCM calls as the limit are made (and throttled) before carol's message.
        await eventually(lambda: len(world.fcm.received) >= LIMIT, what="FCM calls")
        assert (await api.send(alice, to_carol["id"], "for carol's browser")).status_code == 201

        await eventually(
            lambda: world.accepted("web_push", web), within=5.0, what="carol's Web Push"
        )
        # Every FCM device had its attempt too: throttled retries wait without a slot.
        await eventually(
            lambda: all(world.fcm.received_for(t) for t in fcm_tokens), what="every FCM device"
        )
        # And each waits out Retry-After: none is tried again yet.
        assert all(len(world.fcm.received_for(t)) == 1 for t in fcm_tokens)
        assert {r.status for r in world.fcm.received} == {429}
    finally:
        world.reset()
        await api.close()


async def test_a_hanging_provider_fills_only_its_own_slots(
    push_node: Node, world: PushWorld
) -> None:
    """FCM's slots all held by calls that never answer: a Web Push still goes at once."""
    api = Client(push_node)
    try:
        alice, bob, carol = await api.user(), await api.user(), await api.user()
        to_bob = await api.conversation(alice, bob)
        to_carol = await api.conversation(alice, carol)
        world.fcm.modes.default = Mode.HANG
        for _ in range(FCM_DEVICES):
            r = await api.http.post(
                D,
                json={"device_token": world.fcm_token(), "platform": "android", "provider": "fcm"},
                headers=bob.headers,
            )
            assert r.status_code == 201, r.text
        web = world.webpush.subscribe()
        r = await api.http.post(
            D,
            json={"device_token": web, "platform": "web", "provider": "web_push"},
            headers=carol.headers,
        )
        assert r.status_code == 201, r.text

        assert (await api.send(alice, to_bob["id"], "for bob's phones")).status_code == 201
        # Every FCM slot is taken by a call that hangs; the rest of bob's devices wait.
        await eventually(lambda: len(world.fcm.received) >= LIMIT, what="hanging FCM calls")
        assert len(world.fcm.received) == LIMIT
        assert (await api.send(alice, to_carol["id"], "for carol's browser")).status_code == 201
        await eventually(
            lambda: world.accepted("web_push", web), within=5.0, what="carol's Web Push"
        )
        assert len(world.fcm.received) == LIMIT  # FCM's own slots are still all held
    finally:
        world.reset()
        await api.close()


class Scripted:
    """A provider that answers from a script (the last answer repeats), and notes whether
    the limit was held during each call."""

    name = "fcm"

    def __init__(self, limit: asyncio.Semaphore, *answers: Result) -> None:
        self._limit = limit
        self._answers = deque(answers)
        self.held: list[bool] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, device: Device, notification: Notification) -> Result:
        self.held.append(self._limit.locked())
        return self._answers.popleft() if len(self._answers) > 1 else self._answers[0]


async def test_deliver_holds_the_slot_for_each_attempt_and_not_through_backoff() -> None:
    limit = asyncio.Semaphore(1)
    policy = RetryPolicy(max_attempts=2, base_seconds=0.0, max_seconds=60.0, timeout_seconds=1.0)
    throttled = Scripted(limit, Result(Outcome.RETRY, retry_after=30.0, status=429))
    waiting = asyncio.create_task(
        deliver(throttled, sample_device("fcm", "a"), sample_notification(), policy, limit)
    )
    try:
        await eventually(lambda: throttled.held, what="the first attempt")
        assert throttled.held == [True]
        # The first is waiting out its 30 seconds; the one slot is free for another push.
        other = Scripted(limit, Result(Outcome.DELIVERED, status=200))
        delivery = await asyncio.wait_for(
            deliver(other, sample_device("fcm", "b"), sample_notification(), policy, limit), 2.0
        )
        assert (delivery.outcome, delivery.attempts, other.held) == (Outcome.DELIVERED, 1, [True])
        assert not waiting.done() and not limit.locked()
    finally:
        waiting.cancel()


async def test_a_retry_takes_a_slot_again_and_giving_up_is_an_outcome() -> None:
    limit = asyncio.Semaphore(1)
    policy = RetryPolicy(max_attempts=3, base_seconds=0.0, max_seconds=60.0, timeout_seconds=1.0)
    provider = Scripted(limit, Result(Outcome.RETRY, retry_after=0.01, status=429))
    delivery = await deliver(
        provider, sample_device("fcm", "c"), sample_notification(), policy, limit
    )
    assert provider.held == [True, True, True]
    assert delivery.outcome is Outcome.GAVE_UP and delivery.outcome.value == "gave_up"
    assert delivery.attempts == 3 and not limit.locked()


def test_each_provider_has_its_own_limit(
    postgresql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUSH_CONCURRENCY_WEB_PUSH", "7")
    settings = make_settings(postgresql_url, push_concurrency=50, push_concurrency_apns=3)
    assert settings.push_concurrency_for("fcm") == 50
    assert settings.push_concurrency_for("apns") == 3
    assert settings.push_concurrency_for("web_push") == 7
    # Unset, APNs takes PUSH_CONCURRENCY up to its own ceiling.
    assert make_settings(postgresql_url, push_concurrency=50).push_concurrency_for("apns") == 50
    assert make_settings(postgresql_url, push_concurrency=500).push_concurrency_for("apns") == 100
