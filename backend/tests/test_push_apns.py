"""APNsProvider against a fake APNs speaking HTTP/2 over TLS (h2), with token auth."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from typing import Any

import pytest
from aioapns.connection import APNsBaseClientProtocol, APNsTLSClientProtocol
from h2.settings import ChangedSetting, SettingCodes

from app.config import ConfigError, Settings
from app.messenger.push import apns, apns_compat
from app.messenger.push.apns import APNsConfig, APNsProvider, apns_id
from app.messenger.push.base import Outcome, collapse_id
from tests.fakes import Mode, free_port, provider_maker, sample_device, sample_notification
from tests.fakes.apns import FakeAPNs


@pytest.fixture(scope="module")
async def apns_fake():
    async with FakeAPNs(
        team_id="TEAM123456", key_id="KEY1234567", topic="com.example.messenger"
    ) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_fake(apns_fake: FakeAPNs) -> None:
    apns_fake.reset()


@pytest.fixture(autouse=True)
def _fresh_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's aioapns (patched or not) is checked anew, and says so anew."""
    monkeypatch.setattr(apns_compat, "_verdicts", {})
    monkeypatch.setattr(apns_compat, "_said", set())


@pytest.fixture(scope="module")
def key_file(apns_fake: FakeAPNs, tmp_path_factory) -> str:
    return str(apns_fake.write_key(tmp_path_factory.mktemp("apns")))


@pytest.fixture
async def make_provider(apns_fake: FakeAPNs, key_file: str):
    def build(**overrides) -> APNsProvider:
        fields = {
            "key_file": key_file,
            "key_id": apns_fake.key_id,
            "team_id": apns_fake.team_id,
            "topic": apns_fake.topic,
            "use_sandbox": True,
            "endpoint": apns_fake.endpoint,
            "ca_file": str(apns_fake.ca_file),
            "timeout_seconds": 2.0,
            **overrides,
        }
        return APNsProvider(APNsConfig(**fields))

    async with provider_maker(build) as make:
        yield make


def device_token() -> str:
    return secrets.token_hex(32)


async def test_delivers_alert_with_thread_badge_and_data(make_provider, apns_fake) -> None:
    provider = await make_provider()
    token = device_token()
    device = sample_device("apns", token)
    note = sample_notification(badge=5)

    result = await provider.send(device, note)

    assert result.outcome is Outcome.DELIVERED and result.status == 200
    [got] = apns_fake.received_for(token)
    assert got.payload == {
        "aps": {
            "alert": {"title": note.title, "body": note.body},
            "thread-id": note.conversation_id,
            "sound": "default",
            "badge": 5,
        },
        **note.data,  # beside "aps", JSON types kept
    }
    assert isinstance(got.payload["seq"], int)
    h = got.headers
    assert h[":path"] == f"/3/device/{token}"
    assert h["apns-topic"] == "com.example.messenger"
    assert h["apns-push-type"] == "alert"
    assert h["apns-priority"] == "10"
    assert h["apns-id"] == apns_id(note.message_id, device.id)
    # One notification per conversation: the next message's (or a second delivery of
    # this one) replaces it.
    assert (
        h["apns-collapse-id"]
        == collapse_id(note.conversation_id)
        == note.conversation_id.replace("-", "")
    )
    assert int(h["apns-expiration"]) > time.time()
    assert got.jwt_header["kid"] == "KEY1234567" and got.jwt_claims["iss"] == "TEAM123456"


async def test_no_badge_when_none(make_provider, apns_fake) -> None:
    provider = await make_provider()
    token = device_token()

    result = await provider.send(sample_device("apns", token), sample_notification(badge=None))

    assert result.outcome is Outcome.DELIVERED
    assert "badge" not in apns_fake.received_for(token)[0].payload["aps"]


async def test_concurrent_sends_share_a_connection_and_a_jwt(make_provider, apns_fake) -> None:
    provider = await make_provider()
    tokens = [device_token() for _ in range(20)]

    results = await asyncio.gather(
        *(provider.send(sample_device("apns", t), sample_notification()) for t in tokens)
    )

    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert len({r.headers["authorization"] for r in apns_fake.received}) == 1


async def test_a_burst_fits_the_flow_control_window_of_each_connection(
    make_provider, apns_fake, caplog: pytest.LogCaptureFixture
) -> None:
    """100 pushes of about 3 KB at once on a connection already open: 300 KB, four
    times the window a connection starts with. aioapns would put them all on that one
    connection (the fake, as APNs, allows 1,000 streams), and each request finding the
    window spent would wait a second before trying again."""
    caplog.set_level(logging.DEBUG, logger="aioapns")
    provider = await make_provider()
    note = sample_notification(body="x" * 3000)
    assert (await provider.send(sample_device("apns", device_token()), note)).outcome is (
        Outcome.DELIVERED
    )
    tokens = [device_token() for _ in range(100)]

    results = await asyncio.gather(*(provider.send(sample_device("apns", t), note) for t in tokens))

    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert not [r for r in caplog.records if "FlowControlError" in r.getMessage()]
    connections = provider._client.pool.connections  # type: ignore[union-attr]
    assert len(connections) > 1
    assert {c.free_channels.bound for c in connections} == {apns_compat.STREAMS_PER_CONNECTION}


@pytest.mark.parametrize(("before", "after"), [(1000, 1000), (1000, 100), (1, 1000), (1000, 5)])
async def test_the_stream_limit_counts_the_streams_in_use_when_the_server_changes_it(
    before: int, after: int
) -> None:
    """The server's SETTINGS may come with every stream of the connection taken (a burst
    right after the handshake): once they are all given back, the connection has its
    whole limit free, never less (busy for good) nor more (past the window)."""
    protocol = apns_compat._protocol_class(APNsTLSClientProtocol, None, None)("topic")
    channels = protocol.free_channels
    protocol.on_remote_settings_changed(_streams_setting(1000, before))
    limit = min(before, apns_compat.STREAMS_PER_CONNECTION)
    taken = [await channels.acquire() for _ in range(limit)]
    assert protocol.is_busy

    protocol.on_remote_settings_changed(_streams_setting(before, after))
    for _ in taken:
        channels.release()

    now = min(after, apns_compat.STREAMS_PER_CONNECTION)
    assert (channels.bound, channels._value, protocol.is_busy) == (now, now, False)


def _streams_setting(old: int, new: int) -> dict[SettingCodes, ChangedSetting]:
    code = SettingCodes.MAX_CONCURRENT_STREAMS
    return {code: ChangedSetting(code, old, new)}


@pytest.mark.parametrize(
    ("mode", "status", "reason"),
    [(Mode.DEAD, 410, "Unregistered"), (Mode.BAD_TOKEN, 400, "BadDeviceToken")],
)
async def test_dead_tokens(make_provider, apns_fake, mode, status, reason) -> None:
    provider = await make_provider()
    token = device_token()
    apns_fake.script(token, mode)

    result = await provider.send(sample_device("apns", token), sample_notification())

    assert (result.outcome, result.status, result.error) == (Outcome.DEAD_TOKEN, status, reason)


async def test_malformed_token_is_dead(make_provider) -> None:
    provider = await make_provider()

    result = await provider.send(sample_device("apns", "not-hex"), sample_notification())

    assert (result.outcome, result.error) == (Outcome.DEAD_TOKEN, "BadDeviceToken")


async def test_throttled_then_delivered_with_the_same_apns_id(make_provider, apns_fake) -> None:
    provider = await make_provider()
    token = device_token()
    apns_fake.script(token, Mode.THROTTLED, Mode.OK)
    device = sample_device("apns", token)
    note = sample_notification()

    first = await provider.send(device, note)
    second = await provider.send(device, note)

    assert (first.outcome, first.status, first.error) == (Outcome.RETRY, 429, "TooManyRequests")
    assert second.outcome is Outcome.DELIVERED
    ids = [r.headers["apns-id"] for r in apns_fake.received_for(token)]
    assert ids == [apns_id(note.message_id, device.id)] * 2
    collapse = [r.headers["apns-collapse-id"] for r in apns_fake.received_for(token)]
    assert collapse == [collapse_id(note.conversation_id)] * 2


async def test_down_for_good_is_retry(make_provider, apns_fake) -> None:
    provider = await make_provider()
    token = device_token()
    apns_fake.script(token, Mode.DOWN)

    for _ in range(2):
        result = await provider.send(sample_device("apns", token), sample_notification())
        assert (result.outcome, result.status) == (Outcome.RETRY, 503)


async def test_connection_refused_is_retry(make_provider) -> None:
    provider = await make_provider(endpoint=f"127.0.0.1:{free_port()}", timeout_seconds=5.0)

    result = await provider.send(sample_device("apns", device_token()), sample_notification())

    assert result.outcome is Outcome.RETRY
    assert "MaxAttemptsExceeded" in (result.error or "")


async def test_hanging_service_times_out_and_the_connection_recovers(
    make_provider, apns_fake
) -> None:
    provider = await make_provider(timeout_seconds=0.5)
    hung, fine = device_token(), device_token()
    apns_fake.script(hung, Mode.HANG)

    result = await provider.send(sample_device("apns", hung), sample_notification())
    assert (result.outcome, result.error) == (Outcome.RETRY, "timeout")

    # The next send is not stuck behind the abandoned one.
    result = await provider.send(sample_device("apns", fine), sample_notification())
    assert result.outcome is Outcome.DELIVERED
    assert apns_fake.connections_made == 2  # the hung connection was dropped
    # and the new connection signs with the same provider JWT
    assert len({r.headers["authorization"] for r in apns_fake.received}) == 1


async def test_wrong_topic_is_failed_not_dead(make_provider) -> None:
    provider = await make_provider(topic="com.example.other")

    result = await provider.send(sample_device("apns", device_token()), sample_notification())

    assert (result.outcome, result.status, result.error) == (Outcome.FAILED, 400, "TopicDisallowed")


async def test_untrusted_certificate_is_retry(make_provider) -> None:
    provider = await make_provider(ca_file="", timeout_seconds=0.5)  # system CAs only

    result = await provider.send(sample_device("apns", device_token()), sample_notification())

    assert result.outcome is Outcome.RETRY


def compat_notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == apns_compat.__name__]


async def test_without_the_shared_jwt_internals_each_connection_signs_its_own(
    make_provider, apns_fake, monkeypatch, caplog
) -> None:
    original = APNsBaseClientProtocol.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)  # no auth_provider parameter to be seen

    monkeypatch.setattr(APNsBaseClientProtocol, "__init__", __init__)
    provider = await make_provider(timeout_seconds=0.5)
    hung, fine = device_token(), device_token()
    apns_fake.script(hung, Mode.HANG)

    # A timeout drops the connection, so the next send comes on a new one.
    result = await provider.send(sample_device("apns", hung), sample_notification())
    assert result.outcome is Outcome.RETRY
    result = await provider.send(sample_device("apns", fine), sample_notification())
    assert result.outcome is Outcome.DELIVERED

    assert apns_fake.connections_made == 2
    assert len({r.headers["authorization"] for r in apns_fake.received}) == 2
    [note] = compat_notes(caplog)
    assert note.startswith(apns_compat.OWN_TOKENS) and "auth_provider" in note


async def test_without_the_endpoint_internals_apns_endpoint_is_refused(
    make_provider, monkeypatch
) -> None:
    monkeypatch.delattr(APNsTLSClientProtocol, "APNS_PORT")

    # Never Apple's host in place of the configured one: no start at all.
    with pytest.raises(ConfigError, match=r"APNS_ENDPOINT cannot be honoured.*APNS_PORT"):
        await make_provider()
    # Apple's own host needs no endpoint internals (nothing is sent here).
    await make_provider(endpoint="")


class RequestTable:
    """Pending requests as another aioapns might keep them: not a mapping."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future] = {}

    def __setitem__(self, notification_id: str, future: asyncio.Future) -> None:
        self._futures[notification_id] = future

    def pop(self, notification_id: str, default: Any = None) -> Any:
        return self._futures.pop(notification_id, default)

    def values(self) -> Any:
        return self._futures.values()


async def test_without_the_abandon_internals_a_timeout_is_retry_on_the_same_connection(
    make_provider, apns_fake, monkeypatch, caplog
) -> None:
    original = APNsBaseClientProtocol.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.requests = RequestTable()

    monkeypatch.setattr(APNsBaseClientProtocol, "__init__", __init__)
    provider = await make_provider(timeout_seconds=0.5)
    hung = [device_token(), device_token()]
    fine = device_token()
    for token in hung:
        apns_fake.script(token, Mode.HANG)

    for token in hung:
        result = await provider.send(sample_device("apns", token), sample_notification())
        assert (result.outcome, result.error) == (Outcome.RETRY, "timeout")
    result = await provider.send(sample_device("apns", fine), sample_notification())
    assert result.outcome is Outcome.DELIVERED

    assert apns_fake.connections_made == 1  # kept, hung streams and all
    assert len({r.headers["authorization"] for r in apns_fake.received}) == 1
    [note] = compat_notes(caplog)  # said once, not per timeout
    assert note.startswith(apns_compat.KEPT_ON_TIMEOUT) and "requests" in note


def _settings(**values) -> Settings:
    empty = {f: "" for f in ("apns_key_file", "apns_key_id", "apns_team_id", "apns_topic")}
    return Settings(_env_file=None, **{**empty, **values})


def test_from_settings(key_file, tmp_path) -> None:
    assert apns.from_settings(_settings()) is None
    with pytest.raises(ConfigError, match="APNS_TOPIC"):
        apns.from_settings(_settings(apns_key_file=key_file, apns_key_id="K", apns_team_id="T"))
    bad_key = tmp_path / "bad.p8"
    bad_key.write_text("not a key")
    full = {"apns_key_id": "K", "apns_team_id": "T", "apns_topic": "com.example.messenger"}
    with pytest.raises(ConfigError):
        apns.from_settings(_settings(apns_key_file=str(bad_key), **full))

    provider = apns.from_settings(_settings(apns_key_file=key_file, **full))
    assert provider is not None and provider.name == "apns"
    assert provider._config.max_connections == apns.MIN_CONNECTIONS
    # Enough connections for the pushes in flight, a few streams each.
    wide = apns.from_settings(_settings(apns_key_file=key_file, push_concurrency_apns=300, **full))
    assert wide is not None and wide._config.max_connections == 20


def test_apns_id_is_stable_per_message_and_device() -> None:
    assert apns_id("m1", "d1") == apns_id("m1", "d1")
    assert len({apns_id("m1", "d1"), apns_id("m1", "d2"), apns_id("m2", "d1")}) == 3
