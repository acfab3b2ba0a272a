"""FCM's async transport against the fake FCM: connections kept alive and reused, one
OAuth token for many sends."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from app.messenger.push.base import Outcome
from app.messenger.push.fcm import FCMConfig, FCMProvider
from tests.fakes import provider_maker, sample_device, sample_notification
from tests.fakes.fcm import FakeFCM


class CountingFCM(FakeFCM):
    """The fake FCM, noting the client port of each send: one port, one connection."""

    def __init__(self, project_id: str) -> None:
        super().__init__(project_id)
        self.peers: list[tuple[str, int]] = []

    async def _send(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(tuple(peer[:2]) if peer else ("", 0))
        return await super()._send(request)


@pytest.fixture(scope="module")
async def fcm_fake():
    async with CountingFCM(project_id="fake-project") as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_fake(fcm_fake: CountingFCM) -> None:
    fcm_fake.reset()
    fcm_fake.peers.clear()


@pytest.fixture(scope="module")
def service_account(fcm_fake: CountingFCM, tmp_path_factory) -> str:
    return str(fcm_fake.write_service_account(tmp_path_factory.mktemp("fcm")))


@pytest.fixture
async def make_provider(fcm_fake: CountingFCM, service_account: str):
    def build(**overrides) -> FCMProvider:
        fields = {
            "service_account_file": service_account,
            "endpoint": fcm_fake.base_url,
            "timeout_seconds": 2.0,
            **overrides,
        }
        return FCMProvider(FCMConfig(**fields))

    async with provider_maker(build) as make:
        yield make


async def test_sends_one_after_another_share_one_connection(make_provider, fcm_fake) -> None:
    provider = await make_provider()

    for i in range(5):
        result = await provider.send(sample_device("fcm", f"seq-{i}"), sample_notification())
        assert result.outcome is Outcome.DELIVERED

    assert len(fcm_fake.peers) == 5
    assert len(set(fcm_fake.peers)) == 1  # kept alive: no new connection per push
    assert len(fcm_fake.token_requests) == 1
    assert provider.transport.token_refreshes == 1


async def test_concurrent_sends_stay_within_the_connection_limit(make_provider, fcm_fake) -> None:
    provider = await make_provider(max_connections=3)
    devices = [sample_device("fcm", f"burst-{i}") for i in range(30)]

    results = await asyncio.gather(*(provider.send(d, sample_notification()) for d in devices))

    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert len(fcm_fake.peers) == 30
    # 30 sends over at most 3 connections, each reused about ten times.
    assert 1 <= len(set(fcm_fake.peers)) <= 3
    # One token for all of them: a burst waits for the one refresh, never makes its own.
    assert len(fcm_fake.token_requests) == 1


async def test_an_expired_token_is_refreshed_once_and_reused(make_provider, fcm_fake) -> None:
    provider = await make_provider()
    device = sample_device("fcm", "renewed")
    assert (await provider.send(device, sample_notification())).outcome is Outcome.DELIVERED

    fcm_fake.expire_tokens()
    results = [await provider.send(device, sample_notification()) for _ in range(3)]

    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 3
    assert len(fcm_fake.token_requests) == 2  # one refresh, then the new token reused
    assert provider.transport.token_refreshes == 2
    bearers = {r.headers["Authorization"] for r in fcm_fake.received_for("renewed")[-3:]}
    assert len(bearers) == 1


async def test_an_answer_longer_than_any_of_fcm_is_cut_off(make_provider) -> None:
    """A server that answers a megabyte is not read to the end (the token still comes
    from the fake's OAuth endpoint)."""
    sent = 0

    async def huge(request: web.Request) -> web.Response:
        nonlocal sent
        sent += 1
        return web.Response(status=500, body=b"x" * 1_000_000)

    app = web.Application()
    app.router.add_post("/v1/projects/{project}/messages:send", huge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        provider = await make_provider(endpoint=f"http://127.0.0.1:{port}")
        result = await provider.send(sample_device("fcm", "huge"), sample_notification())
    finally:
        await runner.cleanup()

    assert result.outcome is Outcome.RETRY and result.status == 500 and sent == 1
    assert result.error is not None and len(result.error) <= 200
