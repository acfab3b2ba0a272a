"""Redis SIGKILLed under a steady load of sends: the node notices once, stops waiting on
Redis, serves its own sockets at no less than half the rate it had before, and heals
(fan-out and presence across two nodes) once Redis is back.

A behaviour check with a generous margin, not a speed target: acks are counted over two
equal windows, one before the kill and one from the kill on."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest

from tests.cluster import Cluster, RedisServer, connect, send_frame
from tests.helpers import Client, Socket, eventually

pytest_plugins = ["tests.cluster_fixtures"]

SETTINGS = {
    "presence_heartbeat_seconds": 0.5,
    "presence_ttl_seconds": 3,
    "send_rate_per_second": 100_000,
    "send_burst": 100_000,
}
PAIRS = 4  # senders, each in a conversation with a reader on the same node
IN_FLIGHT = 4  # messages each sender keeps in flight: the next goes when one is answered
WINDOW = 2.0  # seconds over which acks are counted, before and during the outage


@dataclass
class Load:
    """Closed-loop senders; the time of every ack, and every error frame."""

    acks: list[float] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    running: bool = True

    def start(self, senders: list[tuple[Socket, str]], readers: list[Socket]) -> None:
        self.tasks = [asyncio.create_task(self._send(s, c)) for s, c in senders]
        self.tasks += [asyncio.create_task(self._read(r)) for r in readers]

    async def _send(self, socket: Socket, conversation: str) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(IN_FLIGHT):
            await socket.send(send_frame(conversation, "load"))
        while self.running:
            frame = await socket.recv(timeout=10)
            if frame["type"] == "message.ack":
                self.acks.append(loop.time())
            elif frame["type"] == "error":
                self.errors.append(frame)
            else:
                continue
            await socket.send(send_frame(conversation, "load"))

    async def _read(self, socket: Socket) -> None:
        while self.running:
            await socket.recv(timeout=10)

    def acked(self, start: float, end: float) -> int:
        return sum(1 for t in self.acks if start <= t < end)

    async def stop(self) -> None:
        self.running = False
        for task in self.tasks:
            task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        failed = [r for r in results if isinstance(r, Exception)]  # (not the cancels)
        assert not failed, failed


def breaker_records(caplog: pytest.LogCaptureFixture, node_id: str) -> list[logging.LogRecord]:
    """What the node said about Redis coming and going: the breaker's lines, and any other
    warning of the messenger's Redis parts."""
    return [
        r
        for r in caplog.records
        if f"node={node_id}" in r.getMessage()
        and (
            r.name == "app.messenger.redis_breaker"
            or (r.levelno >= logging.WARNING and r.name.startswith("app.messenger."))
        )
    ]


async def test_a_node_under_load_keeps_its_rate_without_redis_and_heals(
    cluster: Cluster, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.redis_url = own_redis.url
    n1, n2 = await cluster.node(**SETTINGS), await cluster.node(**SETTINGS)
    n1_id = n1.services.settings.node_id
    api = Client(n1)
    senders, readers = [], []
    for _ in range(PAIRS):
        a, b = await api.user(), await api.user()
        conversation = (await api.conversation(a, b))["id"]
        senders.append((await connect(n1, a), conversation))
        readers.append(await connect(n1, b))
    # Two more users, one on each node, to see the cluster heal.
    alice, bob = await api.user(), await api.user()
    across = (await api.conversation(alice, bob))["id"]
    here, there = await connect(n1, alice), await connect(n2, bob)

    loop = asyncio.get_running_loop()
    load = Load()
    load.start(senders, readers)
    await eventually(lambda: len(load.acks) >= 100, what="the load to run")
    before_start = loop.time()
    await asyncio.sleep(WINDOW)

    own_redis.stop()  # SIGKILL, under load
    during_start = loop.time()
    await asyncio.sleep(WINDOW)
    before = load.acked(before_start, before_start + WINDOW)
    during = load.acked(during_start, during_start + WINDOW)
    assert n1.services.redis_breaker.is_open
    assert during >= before / 2, f"acked {before} in {WINDOW} s before, {during} during"
    assert load.errors == []  # sends keep working: every one acked

    await own_redis.start()  # empty: the nodes must claim their users again
    await eventually(lambda: not n1.services.redis_breaker.is_open, what="n1 to heal")
    await load.stop()

    async def rejoined() -> bool:
        seen_by_n2 = await n2.services.presence.online([alice.id])
        seen_by_n1 = await n1.services.presence.online([bob.id])
        return seen_by_n2 == {alice.id} and seen_by_n1 == {bob.id}

    await eventually(rejoined, within=15.0, what="presence across the nodes again")
    await eventually(lambda: cluster.subscribed(n1, n2), what="both nodes subscribed again")
    await here.send(send_frame(across, "after the outage", "after"))
    new = await there.expect("message.new")
    assert new["message"]["content"] == "after the outage"

    # Said once when Redis went, once when it came back, and nothing else.
    said = breaker_records(caplog, n1_id)
    lines = [r.getMessage() for r in said]
    assert [r.levelno for r in said] == [logging.WARNING, logging.INFO], lines
    assert lines[0].startswith("redis unreachable") and lines[1].startswith("redis back"), lines

    for socket in [s for s, _ in senders] + readers + [here, there]:
        await socket.close()
    await api.close()
