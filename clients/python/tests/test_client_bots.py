"""Bot accounts through the client: make, list, rotate and delete; a bot token used as
it is on REST, never renewed."""

from __future__ import annotations

import httpx2
import pytest
from client_testkit import Node, me, new_username, signed_in

from messenger_client import (
    AuthError,
    BadRequest,
    Client,
    Conflict,
    Forbidden,
    NotFound,
    SessionEnded,
)


class Recording(httpx2.AsyncBaseTransport):
    """The real transport, noting the path of every request that goes through it."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.paths.append(request.url.path)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_create_list_rotate_delete(server: Node) -> None:
    owner = await signed_in(server.url)
    try:
        name = new_username()
        bot, token = await owner.create_bot(name.upper(), display_name="  CI bot ")
        assert bot.username == name  # usernames are kept in lower case
        assert bot.display_name == "CI bot"
        assert token.startswith("mbot_")
        assert "token" not in bot.raw  # the secret is returned once, not kept in the model

        async with Client(server.url, token=token) as runner:
            user = await runner.me()
            assert (user.id, user.username, user.is_bot) == (bot.id, name, True)

        listed = await owner.bots()
        assert [(b.id, b.username, b.display_name) for b in listed] == [(bot.id, name, "CI bot")]
        assert listed[0].created_at is not None
        assert listed[0].last_used_at is not None  # the call above used its token

        new_token = await owner.rotate_bot_token(bot.id)
        assert new_token.startswith("mbot_") and new_token != token
        # The old token is refused at once, and the client does not try to renew it.
        recording = Recording()
        async with Client(server.url, token=token, transport=recording) as old:
            with pytest.raises(SessionEnded) as refused:
                await old.me()
            assert isinstance(refused.value, AuthError)
            assert (refused.value.status, refused.value.code) == (401, "invalid_token")
            with pytest.raises(SessionEnded):
                await old.refresh()
        assert recording.paths == ["/api/v1/me"]
        async with Client(server.url, token=new_token) as runner:
            assert (await runner.me()).id == bot.id

        await owner.delete_bot(bot.id)
        assert await owner.bots() == []
        async with Client(server.url, token=new_token) as runner:
            with pytest.raises(AuthError):
                await runner.me()
        with pytest.raises(NotFound) as gone:
            await owner.delete_bot(bot.id)
        assert gone.value.code == "bot_not_found"
        # Its row stays, so its messages still name it; its username stays taken.
        assert (await owner.get_user(bot.id)).is_bot
        with pytest.raises(Conflict) as taken:
            await owner.create_bot(name)
        assert taken.value.code == "username_taken"
    finally:
        await owner.close()


async def test_only_the_owner_and_only_people_manage_bots(server: Node) -> None:
    owner = await signed_in(server.url)
    mallory = await signed_in(server.url)
    try:
        bot, token = await owner.create_bot(new_username())
        assert await mallory.bots() == []
        with pytest.raises(NotFound):
            await mallory.rotate_bot_token(bot.id)
        with pytest.raises(NotFound):
            await mallory.delete_bot(bot.id)
        with pytest.raises(NotFound):
            await owner.rotate_bot_token(me(mallory).id)  # a person is nobody's bot
        with pytest.raises(BadRequest):
            await owner.create_bot("no spaces allowed")
        with pytest.raises(BadRequest):
            await owner.create_bot(new_username(), display_name="   ")
        async with Client(server.url, token=token) as runner:
            with pytest.raises(Forbidden) as refused:
                await runner.create_bot(new_username())
            assert refused.value.code == "not_for_bots"
            with pytest.raises(Forbidden):
                await runner.rotate_bot_token(bot.id)
            # Still standing: a refused call ends nothing.
            assert (await runner.me()).id == bot.id
        assert [b.id for b in await owner.bots()] == [bot.id]
    finally:
        await owner.close()
        await mallory.close()
