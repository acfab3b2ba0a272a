"""The README's bot, run as it is with a bot account's token: it answers "!ping" with
"pong", and stops once its owner rotates the token."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import pytest
from client_testkit import Node, Recorder, me, new_username, signed_in

from messenger_client import Client, MessageNew, Presence, SessionEnded

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ping_bot.py"


def load_run() -> Callable[[str, str], Coroutine[Any, Any, None]]:
    spec = importlib.util.spec_from_file_location("ping_bot", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast(Callable[[str, str], Coroutine[Any, Any, None]], module.run)


async def test_ping_bot_answers_pong_as_a_bot(server: Node) -> None:
    owner = await signed_in(server.url)
    alice = await signed_in(server.url)
    bot_task: asyncio.Task[None] | None = None
    try:
        bot, token = await owner.create_bot(new_username(), display_name="Ping bot")
        group = await owner.create_group([me(alice).id, bot.id], title="ops")
        events = await Recorder.start(alice)
        bot_task = asyncio.create_task(load_run()(server.url, token))
        # Once the bot is online its stream has started: a ping now is answered.
        await events.wait_for(
            lambda e: isinstance(e, Presence) and e.user_id == bot.id and e.online, "the bot"
        )
        await alice.send(group.id, "hello bot")
        await alice.send(group.id, "!ping")
        pong = await events.wait_for(
            lambda e: isinstance(e, MessageNew) and e.message.sender_id == bot.id, "the pong"
        )
        assert isinstance(pong, MessageNew) and pong.message.content == "pong"
        assert pong.message.seq == 3  # answered the ping, and only the ping
        sender = await alice.get_user(pong.message.sender_id)
        assert sender.is_bot and sender.username == bot.username
        assert sender.display_name == "Ping bot"
        assert not (await alice.get_user(me(alice).id)).is_bot

        await owner.send(group.id, "!ping")
        await events.wait_for(
            lambda e: isinstance(e, MessageNew) and e.message.seq == 5, "the second pong"
        )
        assert [(m.sender_id, m.content) for m in events.messages(group.id)] == [
            (me(alice).id, "hello bot"),
            (me(alice).id, "!ping"),
            (bot.id, "pong"),
            (me(owner).id, "!ping"),
            (bot.id, "pong"),
        ]
        assert not bot_task.done()

        # A rotated token closes the bot's socket (4401): with nothing to renew it with,
        # its stream ends rather than reconnecting for ever.
        await owner.rotate_bot_token(bot.id)
        with pytest.raises(SessionEnded):
            await asyncio.wait_for(bot_task, 15)
        await events.wait_for(
            lambda e: isinstance(e, Presence) and e.user_id == bot.id and not e.online,
            "the bot gone",
        )
        await events.stop()
    finally:
        if bot_task is not None and not bot_task.done():
            bot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bot_task
        await alice.close()
        await owner.close()


async def test_bot_socket_sends_and_reads_events(server: Node) -> None:
    """A bot's token signs in the socket as it is: events, socket sends, no renewal."""
    owner = await signed_in(server.url)
    bot, token = await owner.create_bot(new_username())
    group = await owner.create_group([bot.id])
    async with Client(server.url, token=token) as runner:
        seen = await Recorder.start(runner)
        assert me(runner).id == bot.id and me(runner).is_bot
        await owner.send(group.id, "status?")
        await seen.wait_contents(group.id, ["status?"])
        sent = await runner.send(group.id, "all green", via="socket")
        assert sent.sender_id == bot.id and sent.seq == 2
        assert runner.tokens is not None and runner.tokens.renew_at is None
        await seen.stop()
        assert seen.error is None
    assert [m.content for m in await owner.history(group.id)] == ["status?", "all green"]
    await owner.close()
