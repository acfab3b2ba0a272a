"""A client that loses its node (a network drop, or the node killed) reconnects to another
and gets everything it missed through ?after_seq=, with no loss and no duplicate."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.cluster import Cluster, connect, send_frame
from tests.helpers import Client, Socket

pytest_plugins = ["tests.cluster_fixtures"]

FAST = {"presence_heartbeat_seconds": 1, "presence_ttl_seconds": 3}
BEFORE, DURING = 5, 30


async def drain(socket: Socket, until_seq: int, seen: dict[int, str], live: list[int]) -> None:
    """Collect message.new frames until one with until_seq has been seen."""
    while until_seq not in seen:
        frame = await socket.expect("message.new", timeout=10)
        message = frame["message"]
        live.append(message["seq"])
        assert seen.setdefault(message["seq"], message["id"]) == message["id"]


@pytest.mark.parametrize("loss", ["network drop", "node killed"])
async def test_reconnecting_to_another_node_gets_the_gap(cluster: Cluster, loss: str) -> None:
    survivor = await cluster.node(**FAST)
    lost: Any = await (
        cluster.process_node(**FAST) if loss == "node killed" else cluster.node(**FAST)
    )
    api = Client(survivor)
    alice, bob = await api.user(), await api.user()
    conversation = (await api.conversation(alice, bob))["id"]
    sender = await connect(survivor, alice)
    receiver = await connect(lost, bob)

    async def send(n: int) -> None:
        for i in range(n):
            await sender.send(send_frame(conversation, f"m{i}", f"{loss}-{i}-{n}"))
            await sender.expect("message.ack", client_msg_id=f"{loss}-{i}-{n}")

    seen: dict[int, str] = {}  # seq -> message id, as the client knows it
    live: list[int] = []
    await send(BEFORE)
    await drain(receiver, BEFORE, seen, live)
    last = max(seen)

    if loss == "node killed":
        lost.kill()
    else:
        await receiver.ws.close()  # the client's network drops; its node lives on

    # Alice keeps sending while bob reconnects elsewhere and asks for the gap.
    sending = asyncio.create_task(send(DURING))
    await asyncio.sleep(0.05)
    receiver = await connect(survivor, bob)
    gap = await api.messages(bob, conversation, after_seq=last)
    await sending
    total = BEFORE + DURING

    # History answers the gap in order, each message once, starting right after `last`.
    gap_seqs = [m["seq"] for m in gap]
    assert gap_seqs == list(range(last + 1, last + 1 + len(gap)))
    for m in gap:
        assert seen.setdefault(m["seq"], m["id"]) == m["id"]
    # Live frames fill in the rest; none twice, and together nothing is missing.
    if total not in seen:
        await drain(receiver, total, seen, live)
    await receiver.nothing("message.new", wait=0.3)
    assert len(live) == len(set(live))
    assert sorted(seen) == list(range(1, total + 1))
    rest = await api.messages(bob, conversation, after_seq=total)
    assert rest == []

    await sender.close()
    await receiver.close()
    await api.close()
