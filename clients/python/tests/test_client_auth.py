"""Accounts and tokens: register, login, renewal before expiry and on a 401, the end
of a session, and error answers as typed exceptions."""

from __future__ import annotations

import dataclasses

import pytest
from client_testkit import (
    PASSWORD,
    QUICK,
    MakeNode,
    Node,
    Recorder,
    eventually,
    me,
    new_username,
    signed_in,
)

from messenger_client import (
    AuthError,
    BadRequest,
    Client,
    Conflict,
    Connected,
    ConnectionLost,
    Disconnected,
    RateLimited,
    SessionEnded,
)


async def test_register_login_and_me(server: Node) -> None:
    async with Client(server.url) as client:
        username = new_username()
        user = await client.register(username, PASSWORD, display_name="Ann Example")
        assert (user.username, user.display_name) == (username, "Ann Example")
        assert await client.login(username, PASSWORD) == user
        assert client.tokens is not None and client.tokens.refresh_token
        assert client.tokens.session_id and client.tokens.lifetime == 900
        assert await client.me() == user


async def test_wrong_password_taken_name_and_bad_field_raise_typed_errors(server: Node) -> None:
    async with Client(server.url) as client:
        username = new_username()
        await client.register(username, PASSWORD)
        with pytest.raises(AuthError) as wrong:
            await client.login(username, "not the password")
        assert (wrong.value.status, wrong.value.code) == (401, "invalid_credentials")
        with pytest.raises(Conflict) as taken:
            await client.register(username, PASSWORD)
        assert (taken.value.status, taken.value.code) == (409, "username_taken")
        with pytest.raises(BadRequest) as short:
            await client.register(new_username(), "short")
        assert short.value.status == 422 and short.value.message
        with pytest.raises(AuthError, match="not signed in"):
            await client.me()


async def test_access_token_is_renewed_before_it_expires(start_server: MakeNode) -> None:
    server = await start_server(access_token_ttl_seconds=2)
    async with await signed_in(server.url) as client:
        first = client.tokens
        assert first is not None and first.lifetime == 2

        async def renewed() -> bool:
            await client.me()  # each call renews the token once it is due
            return client.tokens is not None and client.tokens.access_token != first.access_token

        await eventually(renewed, what="the access token to be renewed")
        now = client.tokens
        assert now is not None
        assert now.session_id == first.session_id  # the same session, rotated tokens
        assert now.refresh_token != first.refresh_token
        assert (await client.me()).id == me(client).id


async def test_a_refused_access_token_is_renewed_once_and_the_call_repeated(server: Node) -> None:
    async with await signed_in(server.url) as client:
        assert client.tokens is not None
        client.tokens = dataclasses.replace(client.tokens, access_token="not-a-token")
        assert (await client.me()).id == me(client).id
        assert client.tokens.access_token != "not-a-token"


async def test_a_session_that_ended_raises_session_ended(server: Node) -> None:
    async with await signed_in(server.url) as client:
        assert client.tokens is not None
        # The access token is refused, and so is the refresh token that would renew it.
        client.tokens = dataclasses.replace(
            client.tokens, access_token="not-a-token", refresh_token="not-a-refresh-token"
        )
        with pytest.raises(SessionEnded) as ended:
            await client.me()
        assert ended.value.status == 401


async def test_logout_ends_the_session_for_every_holder_of_its_tokens(server: Node) -> None:
    async with await signed_in(server.url) as client:
        assert client.tokens is not None
        tokens = client.tokens
        async with Client(server.url, token=tokens.access_token) as copy:
            assert (await copy.me()).id == me(client).id
            await client.logout()
            with pytest.raises(SessionEnded):
                await copy.me()  # a token without a refresh token cannot be renewed


async def test_login_flood_answers_rate_limited_with_retry_after(start_server: MakeNode) -> None:
    server = await start_server(login_burst=2, login_rate_per_minute=1)
    async with Client(server.url) as client:
        username = new_username()
        await client.register(username, PASSWORD)
        await client.login(username, PASSWORD)
        await client.login(username, PASSWORD)
        with pytest.raises(RateLimited) as limited:
            await client.login(username, PASSWORD)
        assert (limited.value.status, limited.value.code) == (429, "rate_limited")
        assert limited.value.retry_after >= 1


async def test_socket_stays_signed_in_across_token_renewals(start_server: MakeNode) -> None:
    """The node closes a socket whose token ran out (4401) unless it is handed a fresh
    one: the stream does that, so one socket outlives several access tokens."""
    server = await start_server(access_token_ttl_seconds=2, session_revocation_poll_seconds=0.2)
    alice = await signed_in(server.url)
    bob = await signed_in(server.url)
    try:
        direct = await alice.create_direct(me(bob).id)
        recorder = await Recorder.start(bob)
        tokens = [bob.tokens.access_token if bob.tokens else ""]

        def rotated_twice() -> bool:
            now = bob.tokens.access_token if bob.tokens else ""
            if now != tokens[-1]:
                tokens.append(now)
            return len(tokens) >= 3

        await eventually(rotated_twice, within=15, what="two renewals of bob's token")
        await alice.send(direct.id, "still there?")
        await recorder.wait_contents(direct.id, ["still there?"])
        # One socket all along: signed in once, never dropped.
        assert [e for e in recorder.events if isinstance(e, (Connected, Disconnected))] == [
            Connected(reconnect=False)
        ]
        await recorder.stop()
    finally:
        await alice.close()
        await bob.close()


def test_backoff_grows_and_stays_within_its_cap() -> None:
    delays = [QUICK.delay(attempt) for attempt in range(12)]
    assert all(0.05 <= d <= 0.5 for d in delays)
    assert max(delays[6:]) > min(delays[:1])


async def test_connect_renews_a_refused_token_first(server: Node) -> None:
    async with await signed_in(server.url) as client:
        assert client.tokens is not None
        client.tokens = dataclasses.replace(client.tokens, access_token="not-a-token")
        await client.connect()  # the node closed with 4401; renewed, then signed in
        assert client.tokens.access_token != "not-a-token"


async def test_connect_raises_when_it_cannot_sign_in_or_reach(server: Node) -> None:
    async with await signed_in(server.url) as client:
        assert client.tokens is not None
        client.tokens = dataclasses.replace(
            client.tokens, access_token="not-a-token", refresh_token="not-a-refresh-token"
        )
        client.user = None
        with pytest.raises(SessionEnded):
            await client.connect()
    async with Client("http://127.0.0.1:9", token="anything") as nowhere:
        with pytest.raises(ConnectionLost):
            await nowhere.connect()


async def test_a_revoked_session_ends_the_event_stream(server: Node) -> None:
    phone = await signed_in(server.url)
    laptop = Client(server.url, backoff=QUICK)
    try:
        await laptop.login(me(phone).username, PASSWORD)
        events = await Recorder.start(phone)
        assert phone.tokens is not None and phone.tokens.session_id
        assert laptop.tokens is not None
        listed = {s["id"]: s["current"] for s in await laptop.sessions()}
        assert listed == {phone.tokens.session_id: False, laptop.tokens.session_id: True}
        await laptop.revoke_session(phone.tokens.session_id)
        await eventually(lambda: events.error is not None, what="the stream to end")
        assert isinstance(events.error, SessionEnded)
        with pytest.raises(SessionEnded):
            await phone.me()
    finally:
        await phone.close()
        await laptop.close()
