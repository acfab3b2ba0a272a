"""FCMProvider against a fake FCM v1 API and OAuth token endpoint."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from app.config import ConfigError, Settings
from app.messenger.push import fcm
from app.messenger.push.base import Outcome, collapse_id
from app.messenger.push.fcm import FCMConfig, FCMProvider, string_values
from tests.fakes import Mode, free_port, provider_maker, sample_device, sample_notification
from tests.fakes.fcm import SCOPE, FakeFCM


@pytest.fixture(scope="module")
async def fcm_fake():
    async with FakeFCM(project_id="fake-project") as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_fake(fcm_fake: FakeFCM) -> None:
    fcm_fake.reset()


@pytest.fixture(scope="module")
def service_account(fcm_fake: FakeFCM, tmp_path_factory) -> str:
    return str(fcm_fake.write_service_account(tmp_path_factory.mktemp("fcm")))


@pytest.fixture
async def make_provider(fcm_fake: FakeFCM, service_account: str):
    def build(**overrides) -> FCMProvider:
        fields = {
            "service_account_file": service_account,
            "endpoint": fcm_fake.base_url,
            "timeout_seconds": 2.0,
            "max_connections": 4,
            **overrides,
        }
        return FCMProvider(FCMConfig(**fields))

    async with provider_maker(build) as make:
        yield make


async def test_delivers_message_with_string_data(make_provider, fcm_fake) -> None:
    provider = await make_provider()
    note = sample_notification()
    device = sample_device("fcm", "android-token-1")

    result = await provider.send(device, note)

    assert result.outcome is Outcome.DELIVERED and result.status == 200
    assert result.extra["name"].startswith("projects/fake-project/messages/")
    [got] = fcm_fake.received_for("android-token-1")
    message = got.message
    assert message["notification"] == {"title": note.title, "body": note.body}
    assert message["data"] == {
        "type": "message.new",
        "conversation_id": note.conversation_id,
        "message_id": note.message_id,
        "sender_id": "42",
        "seq": "7",
        "badge": "3",
    }
    assert message["android"] == {
        "priority": "high",
        "ttl": "86400s",
        "collapse_key": note.conversation_id,
        "notification": {"tag": note.conversation_id, "notification_count": 3},
    }
    assert message["apns"]["payload"]["aps"] == {
        "thread-id": note.conversation_id,
        "sound": "default",
        "badge": 3,
    }
    # One notification per conversation everywhere: the next one (or a second
    # delivery of this one) replaces it.
    assert message["apns"]["headers"] == {
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-collapse-id": collapse_id(note.conversation_id),
    }
    assert message["webpush"]["headers"]["Topic"] == collapse_id(note.conversation_id)
    assert got.headers["Authorization"].startswith("Bearer ya29.fake-")
    # The OAuth assertion was signed with the service account's key, for FCM's scope.
    [claims] = fcm_fake.token_requests
    assert claims["iss"] == fcm_fake.client_email and SCOPE in claims["scope"]


async def test_one_token_for_many_concurrent_sends(make_provider, fcm_fake) -> None:
    provider = await make_provider()
    devices = [sample_device("fcm", f"token-{i}") for i in range(12)]

    results = await asyncio.gather(*(provider.send(d, sample_notification()) for d in devices))

    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert len(fcm_fake.token_requests) == 1


async def test_expired_access_token_is_refreshed(make_provider, fcm_fake) -> None:
    provider = await make_provider()
    device = sample_device("fcm", "token-x")
    assert (await provider.send(device, sample_notification())).outcome is Outcome.DELIVERED

    fcm_fake.expire_tokens()
    result = await provider.send(device, sample_notification())

    assert result.outcome is Outcome.DELIVERED
    assert len(fcm_fake.token_requests) == 2


async def test_unregistered_token_is_dead(make_provider, fcm_fake) -> None:
    provider = await make_provider()
    fcm_fake.script("gone", Mode.DEAD)

    result = await provider.send(sample_device("fcm", "gone"), sample_notification())

    assert (result.outcome, result.status) == (Outcome.DEAD_TOKEN, 404)


async def test_invalid_token_is_dead_but_invalid_payload_is_failed(make_provider, fcm_fake) -> None:
    provider = await make_provider()
    fcm_fake.script("garbage", Mode.BAD_TOKEN)

    result = await provider.send(sample_device("fcm", "garbage"), sample_notification())
    assert (result.outcome, result.status) == (Outcome.DEAD_TOKEN, 400)

    # A reserved data key is our bug, not the device's: FAILED, the token stays.
    note = sample_notification(data={"from": "me"})
    result = await provider.send(sample_device("fcm", "fine"), note)
    assert (result.outcome, result.status) == (Outcome.FAILED, 400)
    assert "INVALID_ARGUMENT" in (result.error or "")


async def test_throttled_then_delivered(make_provider, fcm_fake) -> None:
    provider = await make_provider()
    fcm_fake.script("busy", Mode.THROTTLED, Mode.OK)
    device = sample_device("fcm", "busy")

    first = await provider.send(device, sample_notification())
    second = await provider.send(device, sample_notification())

    assert (first.outcome, first.status, first.retry_after) == (Outcome.RETRY, 429, 7.0)
    assert second.outcome is Outcome.DELIVERED
    # pyfcm would have slept on Retry-After and re-sent by itself: we sent once each.
    assert [r.status for r in fcm_fake.received_for("busy")] == [429, 200]


async def test_a_retry_carries_the_same_collapse_ids(make_provider, fcm_fake) -> None:
    provider = await make_provider()
    fcm_fake.script("again", Mode.THROTTLED, Mode.OK)
    device, note = sample_device("fcm", "again"), sample_notification()

    assert (await provider.send(device, note)).outcome is Outcome.RETRY
    assert (await provider.send(device, note)).outcome is Outcome.DELIVERED

    tries = fcm_fake.received_for("again")
    assert [t.status for t in tries] == [429, 200]
    ids = {
        (
            t.message["android"]["collapse_key"],
            t.message["apns"]["headers"]["apns-collapse-id"],
            t.message["webpush"]["headers"]["Topic"],
        )
        for t in tries
    }
    assert ids == {
        (
            note.conversation_id,
            collapse_id(note.conversation_id),
            collapse_id(note.conversation_id),
        )
    }


async def test_down_for_good_is_retry_without_inner_retries(make_provider, fcm_fake) -> None:
    provider = await make_provider()
    fcm_fake.script("down", Mode.DOWN)

    result = await provider.send(sample_device("fcm", "down"), sample_notification())

    assert (result.outcome, result.status) == (Outcome.RETRY, 503)
    assert len(fcm_fake.received_for("down")) == 1  # no adapter retries on 503


async def test_connection_refused_is_retry(make_provider) -> None:
    provider = await make_provider(endpoint=f"http://127.0.0.1:{free_port()}")

    result = await provider.send(sample_device("fcm", "t"), sample_notification())

    assert result.outcome is Outcome.RETRY and result.status is None


async def test_hanging_service_times_out_as_retry(make_provider, fcm_fake) -> None:
    provider = await make_provider(timeout_seconds=0.5)
    fcm_fake.script("slow", Mode.HANG)

    result = await provider.send(sample_device("fcm", "slow"), sample_notification())

    assert result.outcome is Outcome.RETRY


async def test_unknown_project_is_failed(make_provider) -> None:
    provider = await make_provider(project_id="someone-elses-project")

    result = await provider.send(sample_device("fcm", "t"), sample_notification())

    assert (result.outcome, result.status) == (Outcome.FAILED, 403)


def _settings(**values) -> Settings:
    empty = {"fcm_service_account_file": "", "fcm_project_id": "", "fcm_endpoint": ""}
    return Settings(_env_file=None, **{**empty, **values})


def test_from_settings(service_account, tmp_path) -> None:
    assert fcm.from_settings(_settings()) is None
    with pytest.raises(ConfigError):
        fcm.from_settings(_settings(fcm_service_account_file=str(tmp_path / "missing.json")))

    provider = fcm.from_settings(_settings(fcm_service_account_file=service_account))
    assert provider is not None and provider.name == "fcm"
    assert provider.project_id == "fake-project"  # from the file

    provider = fcm.from_settings(
        _settings(fcm_service_account_file=service_account, fcm_project_id="other")
    )
    assert provider is not None and provider.project_id == "other"

    no_project = tmp_path / "sa.json"
    info = json.loads(Path(service_account).read_text())
    del info["project_id"]
    no_project.write_text(json.dumps(info))
    with pytest.raises(ConfigError):
        fcm.from_settings(_settings(fcm_service_account_file=str(no_project)))


def test_data_values_become_strings() -> None:
    assert string_values({"a": "x", "n": 5, "b": True, "z": None, "l": [1]}) == {
        "a": "x",
        "n": "5",
        "b": "true",
        "l": "[1]",
    }
