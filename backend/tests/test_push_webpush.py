"""WebPushProvider against a fake push service that checks VAPID and decrypts the payload."""

from __future__ import annotations

import json
import os
import time
import uuid
from email.utils import formatdate

import http_ece
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.config import ConfigError, Settings
from app.messenger.push import webpush
from app.messenger.push.base import Outcome, collapse_id
from app.messenger.push.endpoints import EndpointPolicy
from app.messenger.push.retry_after import parse_retry_after
from app.messenger.push.webpush import WebPushConfig, WebPushProvider
from app.messenger.push.webpush_crypto import RECORD_SIZE, Receiver, encrypt
from tests.fakes import Mode, free_port, provider_maker, sample_device, sample_notification
from tests.fakes.webpush import FakePushService, VapidKeys, b64url, make_vapid_keys

SUBJECT = "mailto:ops@example.com"


@pytest.fixture(scope="module")
def vapid() -> VapidKeys:
    return make_vapid_keys()


@pytest.fixture(scope="module")
async def push_service(vapid: VapidKeys):
    async with FakePushService(vapid.public) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_fake(push_service: FakePushService) -> None:
    push_service.reset()


@pytest.fixture
async def make_provider(vapid: VapidKeys):
    def build(**overrides) -> WebPushProvider:
        fields = {
            "private_key": vapid.private_raw,
            "public_key": vapid.public,
            "subject": SUBJECT,
            "timeout_seconds": 2.0,
            # The fake listens on http://127.0.0.1:<port>: staging's "any endpoint".
            "endpoints": EndpointPolicy(allow_any=True),
            **overrides,
        }
        return WebPushProvider(WebPushConfig(**fields))

    async with provider_maker(build) as make:
        yield make


async def test_delivers_encrypted_payload_with_vapid(make_provider, push_service) -> None:
    provider = await make_provider()
    token = push_service.subscribe()
    note = sample_notification()

    result = await provider.send(sample_device("web_push", token), note)

    assert result.outcome is Outcome.DELIVERED and result.status == 201
    [got] = push_service.received_for(token)
    assert got.payload == {
        "type": "message",
        "title": note.title,
        "body": note.body,
        "data": note.data,  # JSON types kept: sender_id and seq stay numbers
        "tag": note.conversation_id,
        "url": note.url,
        "badge": 3,
        "count": 1,
        "preview": "full",
        "lang": "en",
        "actions": [
            {"action": "reply", "title": "Reply"},
            {"action": "read", "title": "Mark as read"},
        ],
    }  # no action_token: this provider has no key to sign one
    assert isinstance(got.payload["data"]["seq"], int)
    assert got.headers["Urgency"] == "high"
    assert got.headers["Topic"] == uuid.UUID(note.conversation_id).hex
    assert got.headers["TTL"] == "86400"
    assert got.claims["sub"] == SUBJECT
    assert got.claims["aud"] == push_service.base_url


async def test_pem_key_file_and_reuse_of_claims(
    make_provider, push_service, vapid, tmp_path
) -> None:
    pem = tmp_path / "vapid.pem"
    pem.write_bytes(vapid.pem)
    provider = await make_provider(private_key=str(pem), ttl_seconds=60)
    token = push_service.subscribe()
    device = sample_device("web_push", token)

    for _ in range(2):  # a second send must not carry the first one's claims
        result = await provider.send(device, sample_notification())
        assert result.outcome is Outcome.DELIVERED
    assert [r.headers["TTL"] for r in push_service.received_for(token)] == ["60", "60"]


@pytest.mark.parametrize("mode", [Mode.DEAD, Mode.BAD_TOKEN])
async def test_gone_subscription_is_dead(make_provider, push_service, mode) -> None:
    provider = await make_provider()
    token = push_service.subscribe(mode)

    result = await provider.send(sample_device("web_push", token), sample_notification())

    assert result.outcome is Outcome.DEAD_TOKEN and result.status == 410


async def test_unknown_subscription_and_malformed_token_are_dead(
    make_provider, push_service
) -> None:
    provider = await make_provider()
    unknown = json.loads(push_service.subscribe())
    unknown["endpoint"] = f"{push_service.base_url}/push/no-such-subscription"

    result = await provider.send(
        sample_device("web_push", json.dumps(unknown)), sample_notification()
    )
    assert (result.outcome, result.status) == (Outcome.DEAD_TOKEN, 404)

    for token in ("not json", '{"endpoint": "https://x.test/1"}', '{"endpoint": 1, "keys": {}}'):
        result = await provider.send(sample_device("web_push", token), sample_notification())
        assert result.outcome is Outcome.DEAD_TOKEN


async def test_throttled_then_delivered(make_provider, push_service) -> None:
    provider = await make_provider()
    token = push_service.subscribe(Mode.THROTTLED, Mode.OK)
    device = sample_device("web_push", token)

    first = await provider.send(device, sample_notification())
    second = await provider.send(device, sample_notification())

    assert (first.outcome, first.status, first.retry_after) == (Outcome.RETRY, 429, 7.0)
    assert second.outcome is Outcome.DELIVERED
    assert [r.status for r in push_service.received_for(token)] == [429, 201]


async def test_down_for_good_is_retry(make_provider, push_service) -> None:
    provider = await make_provider()
    token = push_service.subscribe(Mode.DOWN)
    device = sample_device("web_push", token)

    for _ in range(3):
        result = await provider.send(device, sample_notification())
        assert (result.outcome, result.status) == (Outcome.RETRY, 503)


async def test_connection_refused_is_retry(make_provider, push_service) -> None:
    provider = await make_provider()
    sub = json.loads(push_service.subscribe())
    sub["endpoint"] = f"http://127.0.0.1:{free_port()}/push/x"

    result = await provider.send(sample_device("web_push", json.dumps(sub)), sample_notification())

    assert result.outcome is Outcome.RETRY and result.status is None


async def test_hanging_service_times_out_as_retry(make_provider, push_service) -> None:
    provider = await make_provider(timeout_seconds=0.5)
    token = push_service.subscribe(Mode.HANG)

    result = await provider.send(sample_device("web_push", token), sample_notification())

    assert result.outcome is Outcome.RETRY


async def test_rejected_vapid_key_is_failed(make_provider, push_service) -> None:
    other = make_vapid_keys()  # not the key the subscription was made with
    provider = await make_provider(private_key=other.private_raw, public_key="")
    token = push_service.subscribe()

    result = await provider.send(sample_device("web_push", token), sample_notification())

    assert (result.outcome, result.status) == (Outcome.FAILED, 403)


def _settings(**values) -> Settings:
    empty = {
        "vapid_private_key": "",
        "vapid_public_key": "",
        "vapid_subject": "",
        "secret_key": "a-secret-key-long-enough-for-any-database-0123",
    }
    return Settings(_env_file=None, **{**empty, **values})


def test_from_settings(vapid) -> None:
    assert webpush.from_settings(_settings()) is None
    with pytest.raises(ConfigError):
        webpush.from_settings(_settings(vapid_private_key=vapid.private_raw))
    with pytest.raises(ConfigError):  # the public key of another pair
        webpush.from_settings(
            _settings(
                vapid_private_key=vapid.private_raw,
                vapid_public_key=make_vapid_keys().public,
                vapid_subject=SUBJECT,
            )
        )
    with pytest.raises(ConfigError):
        webpush.from_settings(
            _settings(vapid_private_key="/no/such/key.pem", vapid_subject=SUBJECT)
        )

    provider = webpush.from_settings(
        _settings(vapid_private_key=vapid.private_raw, vapid_subject=SUBJECT, push_ttl_seconds=120)
    )
    assert provider is not None and provider.name == "web_push"
    assert provider.public_key == vapid.public  # what the web client subscribes with


def test_topic_is_short_and_url_safe() -> None:
    cid = uuid.uuid4()
    assert collapse_id(cid) == collapse_id(str(cid)) == cid.hex
    for odd in ("12345", "conversation/with:odd chars" * 3):
        topic = collapse_id(odd)
        assert topic == collapse_id(odd)
        assert len(topic) == 32 and topic.replace("-", "").replace("_", "").isalnum()


def test_parse_retry_after() -> None:
    now = time.time()
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0


async def test_a_compressed_browser_key_is_refused_before_anything_is_sent(
    make_provider, push_service
) -> None:
    """RFC 8291 derives the keys from the 65-byte uncompressed point: a subscription
    with the 33-byte compressed form could never be decrypted, so it is a dead token."""
    provider = await make_provider()
    sub = json.loads(push_service.subscribe())
    point = webpush._b64decode(sub["keys"]["p256dh"])
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    compressed = key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    sub["keys"]["p256dh"] = b64url(compressed)

    result = await provider.send(sample_device("web_push", json.dumps(sub)), sample_notification())

    assert result.outcome is Outcome.DEAD_TOKEN
    assert "malformed subscription" in (result.error or "")
    assert push_service.received == []


async def test_a_payload_that_cannot_be_cut_to_fit_is_not_sent(make_provider, push_service) -> None:
    """Text is cut to fit; data alone past the limit leaves nothing to cut: the push
    fails as it is, never sent as a body no push service takes (or a record that would
    not decrypt)."""
    provider = await make_provider()
    token = push_service.subscribe()
    note = sample_notification()
    note.data["filler"] = "x" * webpush.MAX_PAYLOAD_BYTES

    result = await provider.send(sample_device("web_push", token), note)

    assert (result.outcome, result.error) == (Outcome.FAILED, "payload too large")
    assert push_service.received_for(token) == []


def test_encryption_fills_one_record_and_refuses_more() -> None:
    """The largest plaintext one 4096-byte record holds (less the delimiter and the GCM
    tag) decrypts with http_ece; one byte more is refused, not sent broken."""
    browser = ec.generate_private_key(ec.SECP256R1())
    point = browser.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    auth = os.urandom(16)
    to = Receiver.of(point, auth)
    largest = b"y" * (RECORD_SIZE - 17)

    body = encrypt(largest, to)

    plain = http_ece.decrypt(body, private_key=browser, auth_secret=auth, version="aes128gcm")
    assert plain == largest
    with pytest.raises(ValueError, match="too long"):
        encrypt(largest + b"y", to)
