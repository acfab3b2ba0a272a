"""A client that loses its node (a network drop, or the node killed) reconnects to another
and gets everything it missed through ?after_seq=: history and live frames together miss
no seq, and no message comes live twice."""

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


async def live_until_pong(socket: Socket) -> list[dict]:
    """The messages that come live on the socket before the answer to a ping sent now."""
    await socket.send({"type": "ping"})
    messages = []
    while (frame := await socket.recv(timeout=10))["type"] != "pong":
        if frame["type"] == "message.new":
            messages.append(frame["message"])
    return messages


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
    acked = asyncio.Event()

    async def send(n: int) -> None:
        for i in range(n):
            await sender.send(send_frame(conversation, f"m{i}", f"{loss}-{i}-{n}"))
            await sender.expect("message.ack", client_msg_id=f"{loss}-{i}-{n}")
            acked.set()

    seen: dict[int, str] = {}  # seq -> message id, as the client knows it
    live: list[int] = []
    await send(BEFORE)
    await drain(receiver, BEFORE, seen, live)
    assert live == list(range(1, BEFORE + 1))
    last = max(seen)

    if loss == "node killed":
        lost.kill()
    else:
        await receiver.ws.close()  # the client's network drops; its node lives on

    # Alice keeps sending while bob reconnects elsewhere and asks for the gap: at least one
    # message is committed while he is away, the rest may come during his reconnect.
    acked.clear()
    sending = asyncio.create_task(send(DURING))
    await acked.wait()
    receiver = await connect(survivor, bob)
    gap = await api.messages(bob, conversation, after_seq=last)
    await sending
    total = BEFORE + DURING

    # History answers the gap in order, each message once, starting right after `last`.
    gap_seqs = [m["seq"] for m in gap]
    assert gap_seqs == list(range(last + 1, last + 1 + len(gap)))
    assert gap_seqs, "the message sent while bob was away is in history"
    for m in gap:
        assert seen.setdefault(m["seq"], m["id"]) == m["id"]
    # Live frames fill in the rest. A message committed between the socket opening and the
    # history query comes both ways (the client keeps one per seq); none comes live twice.
    # Sender and receiver share a node, which queued every live frame before its ack: all
    # of them come before the pong.
    messages = await live_until_pong(receiver)
    again = [m["seq"] for m in messages]
    assert len(again) == len(set(again)), again
    for m in messages:
        assert seen.setdefault(m["seq"], m["id"]) == m["id"]
    assert sorted(seen) == list(range(1, total + 1))
    rest = await api.messages(bob, conversation, after_seq=total)
    assert rest == []

    await sender.close()
    await receiver.close()
    await api.close()
