"""A bot that answers "!ping" with "pong" in every conversation it is in.

It runs as a bot account with that bot's token (`Client.create_bot` or
`POST /api/v1/me/bots` makes one and shows its token once):

    MESSENGER_URL=http://127.0.0.1:8000 MESSENGER_TOKEN=mbot_... python examples/ping_bot.py

The token comes from the environment, not the command line (where `ps` shows it).
"""

from __future__ import annotations

import asyncio
import logging
import os

from messenger_client import Client, MessageNew


async def run(base_url: str, token: str) -> None:
    async with Client(base_url, token=token) as client:
        async for event in client.events():
            if isinstance(event, MessageNew) and event.message.content.strip() == "!ping":
                await client.send(event.message.conversation_id, "pong")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(
        run(
            os.environ.get("MESSENGER_URL", "http://127.0.0.1:8000"),
            os.environ["MESSENGER_TOKEN"],
        )
    )
