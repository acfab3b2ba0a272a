"""Operator commands: VAPID keys for .env, a test push to a user's devices."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.cli import main, send_test_push
from tests.helpers import Client, make_settings, start_node
from tests.push_world import PushWorld, start_push_world


def _unb64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def test_vapid_keys_are_a_matching_pair(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vapid-keys"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    private, public = lines["VAPID_PRIVATE_KEY"], lines["VAPID_PUBLIC_KEY"]
    assert len(private) == 43 and len(public) == 87
    key = ec.derive_private_key(int.from_bytes(_unb64(private), "big"), ec.SECP256R1())
    point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    assert _unb64(public) == point
    assert lines["VAPID_SUBJECT"].startswith("mailto:")


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("cli"))


async def test_test_push_reaches_every_device(
    postgresql_url: str, world: PushWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(postgresql_url, **world.settings)
    node = await start_node(settings)
    pg_client = Client(node)
    u = await pg_client.user()
    web, apns = world.webpush.subscribe(), world.apns_token()
    for token, platform, provider in ((web, "web", "web_push"), (apns, "ios", "apns")):
        r = await pg_client.http.post(
            "/api/v1/messenger/devices/register",
            json={"device_token": token, "platform": platform, "provider": provider},
            headers=u.headers,
        )
        assert r.status_code == 201
    await pg_client.close()
    await node.stop()
    assert await send_test_push(settings, u.username) == 0
    out = capsys.readouterr().out
    assert out.count("delivered") == 2
    assert world.accepted("web_push", web)[0].payload["title"] == "Test notification"
    assert world.accepted("apns", apns)

    assert await send_test_push(settings, "nobody-by-that-name") == 1
