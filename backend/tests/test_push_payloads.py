"""What a push carries, read back from each provider's protocol-true fake: the preview
setting and language applied, one notification per conversation with its count, the
badge, clearing pushes, the Web Push action token, and payloads kept within limits."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import jwt
import pytest
from pywebpush import WebPusher
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from app.cli import send_test_push
from app.locales import SUPPORTED_LOCALES
from app.messenger.action_tokens import decode_action_token
from app.messenger.models import DeviceToken
from app.messenger.push import texts
from app.messenger.push.apns import apns_id
from app.messenger.push.base import Device, Notification, Outcome, Provider, collapse_id
from app.messenger.push.notification import (
    TITLE_LENGTH,
    Recipient,
    clear_notification,
    message_notification,
    operator_test_notification,
)
from app.messenger.push.providers import start_providers
from app.messenger.push.webpush import MAX_BODY_BYTES, MAX_PAYLOAD_BYTES
from app.models import NotificationSettings, User
from tests.fakes import Mode, sample_device
from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import InvalidArgument, _validate
from tests.helpers import SECRET, make_settings
from tests.push_world import PushWorld, start_push_world

BASE = "http://127.0.0.1:8000"
TEXT = "See you at 10\n— don't be late"
LINE = "See you at 10 — don't be late"  # the preview: one line


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("payloads"))


@pytest.fixture(autouse=True)
def _fresh_world(world: PushWorld) -> None:
    world.reset()


@pytest.fixture
async def providers(world: PushWorld) -> AsyncIterator[dict[str, Provider]]:
    """The three providers as a node makes them (the Web Push one signs action tokens
    with the node's key)."""
    made = await start_providers(make_settings("sqlite+aiosqlite:///unused.db", **world.settings))
    assert set(made) == {"web_push", "fcm", "apns"}
    yield made
    for provider in made.values():
        await provider.close()


def devices(world: PushWorld) -> dict[str, Device]:
    return {
        "web_push": sample_device("web_push", world.webpush.subscribe()),
        "fcm": sample_device("fcm", world.fcm_token()),
        "apns": sample_device("apns", world.apns_token()),
    }


def a_message(conversation_id: str | None = None, seq: int = 9) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "conversation_id": conversation_id or str(uuid.uuid4()),
        "sender_id": 42,
        "seq": seq,
        "content": TEXT,
    }


async def push(
    world: PushWorld,
    providers: dict[str, Provider],
    targets: dict[str, Device],
    build: Any,
) -> dict[str, Any]:
    """Send build(device) to each device through its provider; what each fake took."""
    got: dict[str, Any] = {}
    for name, device in targets.items():
        result = await providers[name].send(device, build(device))
        assert result.outcome is Outcome.DELIVERED, (name, result)
        got[name] = world.accepted(name, device.token)[-1]
    return got


def everything(got: dict[str, Any]) -> dict[str, str]:
    """All a fake received from each provider, headers included (but for APNs' provider
    JWT), as text."""
    return {
        "web_push": json.dumps([got["web_push"].payload, got["web_push"].headers]),
        "fcm": json.dumps(got["fcm"].message, ensure_ascii=False),
        "apns": json.dumps(
            [
                got["apns"].payload,
                {k: v for k, v in got["apns"].headers.items() if k != "authorization"},
            ],
            ensure_ascii=False,
        ),
    }


# (preview, locale, unread here) -> (title, body)
TEXTS = {
    ("full", "en", 1): ("Alice • Project chat", LINE),
    ("full", "en", 3): ("Alice • Project chat", f"3 new messages: {LINE}"),
    ("full", "de", 1): ("Alice • Project chat", LINE),
    ("full", "de", 3): ("Alice • Project chat", f"3 neue Nachrichten: {LINE}"),
    ("sender", "en", 1): ("Alice • Project chat", "New message"),
    ("sender", "en", 3): ("Alice • Project chat", "3 new messages"),
    ("sender", "de", 1): ("Alice • Project chat", "Neue Nachricht"),
    ("sender", "de", 3): ("Alice • Project chat", "3 neue Nachrichten"),
    ("none", "en", 1): ("New message", "You have a new message"),
    ("none", "en", 3): ("New messages", "You have 3 new messages"),
    ("none", "de", 1): ("Neue Nachricht", "Du hast eine neue Nachricht"),
    ("none", "de", 3): ("Neue Nachrichten", "Du hast 3 neue Nachrichten"),
}


@pytest.mark.parametrize(("mode", "locale", "count"), list(TEXTS))
async def test_preview_locale_count_and_badge_on_every_provider(
    world: PushWorld, providers: dict[str, Provider], mode: str, locale: str, count: int
) -> None:
    title, body = TEXTS[(mode, locale, count)]
    m = a_message()
    cid = m["conversation_id"]
    recipient = Recipient(7, badge=5, unread_here=count, preview=mode, locale=locale)

    got = await push(
        world,
        providers,
        devices(world),
        lambda device: message_notification(m, "Alice", "Project chat", BASE, recipient, device),
    )

    data: dict[str, Any] = {
        "type": "message.new",
        "conversation_id": cid,
        "message_id": m["id"],
        "sender_id": 42,
        "seq": 9,
    }
    if mode == "none":
        del data["sender_id"]  # ids only
    web = got["web_push"].payload
    assert (web["type"], web["title"], web["body"], web["data"]) == ("message", title, body, data)
    assert (web["tag"], web["url"]) == (cid, f"{BASE}/?conversation={cid}")
    assert (web["badge"], web["count"], web["lang"], web["preview"]) == (5, count, locale, mode)
    assert [a["action"] for a in web["actions"]] == ["reply", "read"]

    fcm = got["fcm"].message
    assert fcm["notification"] == {"title": title, "body": body}
    assert fcm["data"] == {k: str(v) for k, v in {**data, "badge": 5}.items()}
    assert fcm["android"]["notification"] == {"tag": cid, "notification_count": 5}
    assert fcm["apns"]["payload"]["aps"]["badge"] == 5

    apns = got["apns"].payload
    assert apns["aps"] == {
        "alert": {"title": title, "body": body},
        "thread-id": cid,
        "sound": "default",
        "badge": 5,
    }
    assert {k: v for k, v in apns.items() if k != "aps"} == data

    for provider, sent in everything(got).items():
        assert ("See you" in sent) is (mode == "full"), provider
        assert ("Alice" in sent) is (mode != "none"), provider
        assert ("Project chat" in sent) is (mode != "none"), provider
        assert ("sender_id" in sent) is (mode != "none"), provider


async def test_one_notification_per_conversation_on_every_provider(
    world: PushWorld, providers: dict[str, Provider]
) -> None:
    targets = devices(world)
    first, second = a_message(seq=1), a_message(seq=2)
    second["conversation_id"] = cid = first["conversation_id"]
    other = a_message()
    for m, unread in ((first, 1), (second, 2), (other, 1)):
        recipient = Recipient(7, badge=3, unread_here=unread)
        await push(
            world,
            providers,
            targets,
            lambda d, m=m, r=recipient: message_notification(m, "Alice", None, BASE, r, d),
        )

    def ids(name: str, record: Any) -> tuple[Any, ...]:
        if name == "web_push":
            return (record.headers["Topic"], record.payload["tag"])
        if name == "fcm":
            msg = record.message
            return (
                msg["android"]["collapse_key"],
                msg["android"]["notification"]["tag"],
                msg["apns"]["headers"]["apns-collapse-id"],
                msg["apns"]["payload"]["aps"]["thread-id"],
                msg["webpush"]["headers"]["Topic"],
            )
        return (record.headers["apns-collapse-id"], record.payload["aps"]["thread-id"])

    expected = {
        "web_push": (collapse_id(cid), cid),
        "fcm": (cid, cid, collapse_id(cid), cid, collapse_id(cid)),
        "apns": (collapse_id(cid), cid),
    }
    for name, device in targets.items():
        one, two, elsewhere = world.accepted(name, device.token)
        assert ids(name, one) == ids(name, two) == expected[name]
        assert ids(name, elsewhere) != ids(name, one)
    # The second says how many, with the latest line; the title has no conversation
    # title, so the sender's name stands for it.
    web = world.accepted("web_push", targets["web_push"].token)[1].payload
    assert (web["title"], web["body"], web["count"]) == (
        "Alice • Alice",
        f"2 new messages: {LINE}",
        2,
    )
    # APNs: a notification of its own per message (apns-id), shown in one place.
    apns_ids = [r.headers["apns-id"] for r in world.accepted("apns", targets["apns"].token)]
    assert apns_ids[:2] == [apns_id(m["id"], targets["apns"].id) for m in (first, second)]


async def test_clearing_pushes_show_nothing_and_set_the_badge(
    world: PushWorld, providers: dict[str, Provider]
) -> None:
    targets = devices(world)
    cid = str(uuid.uuid4())
    world.apns.script(targets["apns"].token, Mode.THROTTLED, Mode.OK)
    clear = clear_notification(cid, 9, 2)
    assert (clear.kind, clear.seq, clear.badge) == ("clear", 9, 2)

    apns_first = await providers["apns"].send(targets["apns"], clear)
    assert apns_first.outcome is Outcome.RETRY
    got = await push(world, providers, targets, lambda _device: clear)

    web = got["web_push"]
    assert web.payload == {
        "type": "clear",
        "tag": cid,
        "conversation_id": cid,
        "seq": 9,
        "badge": 2,
        "title": "Read on another device",  # for a browser that must show something
        "lang": "en",
    }  # no action token, no text of any message
    # A Topic of its own: waiting at the push service, a clear replaces an older clear,
    # never the conversation's message push (which may be newer than the read).
    assert (web.headers["Topic"], web.headers["Urgency"]) == (
        collapse_id("clear:" + cid),
        "normal",
    )
    assert web.headers["Topic"] != collapse_id(cid)

    fcm = got["fcm"].message
    assert "notification" not in fcm  # a data message: nothing shown
    assert fcm["data"] == {"type": "clear", "conversation_id": cid, "seq": "9", "badge": "2"}
    assert fcm["android"] == {
        "priority": "normal",
        "ttl": "86400s",
        "collapse_key": collapse_id("clear:" + cid),
    }
    assert fcm["apns"] == {
        "headers": {"apns-push-type": "background", "apns-priority": "5"},
        "payload": {"aps": {"content-available": 1, "badge": 2}},
    }
    assert fcm["webpush"]["headers"]["Topic"] == collapse_id("clear:" + cid)

    apns = got["apns"]
    assert apns.payload == {
        "aps": {"content-available": 1, "badge": 2},
        "type": "clear",
        "conversation_id": cid,
        "seq": 9,
    }
    h = apns.headers
    assert (h["apns-push-type"], h["apns-priority"]) == ("background", "5")
    assert "apns-collapse-id" not in h
    # The retry carried the same apns-id, one of its own per conversation, mark and device.
    tries = world.apns.received_for(targets["apns"].token)
    assert [t.status for t in tries] == [429, 200]
    assert {t.headers["apns-id"] for t in tries} == {apns_id(f"clear:{cid}:9", targets["apns"].id)}

    # Without a badge to set: content-available alone, still a valid background push.
    world.reset()
    got = await push(world, providers, targets, lambda _d: clear_notification(cid, 10, None))
    assert got["apns"].payload["aps"] == {"content-available": 1}
    assert "badge" not in got["fcm"].message["data"] and "badge" not in got["web_push"].payload


async def test_a_deleted_messages_clear_names_it_everywhere(
    world: PushWorld, providers: dict[str, Provider]
) -> None:
    targets = devices(world)
    cid, mid = str(uuid.uuid4()), str(uuid.uuid4())
    clear = clear_notification(cid, 4, 1, deleted_message_id=mid)
    message = message_notification(
        {**a_message(cid, seq=5)}, "Alice", None, BASE, Recipient(7), targets["web_push"]
    )

    got = await push(world, providers, targets, lambda _device: clear)

    # Every provider's clear says which message went and why: a client closes only a
    # notification showing that message, and reads no read mark into its seq.
    web = got["web_push"]
    assert web.payload == {
        "type": "clear",
        "tag": cid,
        "conversation_id": cid,
        "seq": 4,
        "message_id": mid,
        "reason": "deleted",
        "badge": 1,
        "title": "Read on another device",
        "lang": "en",
    }
    assert got["fcm"].message["data"] == {
        "type": "clear",
        "conversation_id": cid,
        "seq": "4",
        "message_id": mid,
        "reason": "deleted",
        "badge": "1",
    }
    assert got["apns"].payload == {
        "aps": {"content-available": 1, "badge": 1},
        "type": "clear",
        "conversation_id": cid,
        "seq": 4,
        "message_id": mid,
        "reason": "deleted",
    }
    # A collapse id of its own too: neither a read's clear nor a message push replaces
    # it while the device is away, nor it them.
    topics = {collapse_id(message.topic), collapse_id("clear:" + cid)}
    assert web.headers["Topic"] == collapse_id("clear:" + mid) not in topics
    assert got["fcm"].message["android"]["collapse_key"] == collapse_id("clear:" + mid)
    assert got["apns"].headers["apns-id"] == apns_id(f"clear:{mid}", targets["apns"].id)
    assert "apns-collapse-id" not in got["apns"].headers


async def test_action_token_only_in_web_push(
    world: PushWorld, providers: dict[str, Provider]
) -> None:
    targets = devices(world)
    m = a_message()
    recipient = Recipient(7, badge=1)

    got = await push(
        world,
        providers,
        targets,
        lambda d: message_notification(m, "Alice", "Project chat", BASE, recipient, d),
    )

    web_device = targets["web_push"]
    claims = decode_action_token(got["web_push"].payload["action_token"], SECRET)
    assert (claims.user_id, claims.device_id, claims.conversation_id) == (
        web_device.user_id,
        web_device.id,
        m["conversation_id"],
    )
    sent = everything(got)
    for name in ("fcm", "apns"):  # these pass through Google and Apple in the clear
        assert "action_token" not in sent[name] and "eyJ" not in sent[name]

    # Nothing to act on in a clear or a test push.
    world.reset()
    for note in (clear_notification(m["conversation_id"], 9, 0), operator_test_notification(BASE)):
        assert (await providers["web_push"].send(web_device, note)).outcome is Outcome.DELIVERED
    clear, test = (r.payload for r in world.accepted("web_push", web_device.token))
    assert "action_token" not in clear and "action_token" not in test
    assert test == {
        "type": "test",
        "title": "Test notification",
        "body": "Push notifications work on this device.",
        "data": {"type": "test"},
        "tag": "test",
        "url": f"{BASE}/",
        "lang": "en",
    }


async def test_long_texts_are_cut_to_fit_every_provider(
    world: PushWorld, providers: dict[str, Provider]
) -> None:
    targets = devices(world)
    cid = str(uuid.uuid4())
    # Far past 4 KB in UTF-8 (4-byte emoji) and in JSON escapes (control characters).
    note = Notification(
        title="🙂" * 2000,
        body="\x01é" * 3000,
        data={"type": "message.new", "conversation_id": cid, "message_id": "m", "seq": 1},
        conversation_id=cid,
        message_id=str(uuid.uuid4()),
        url=f"{BASE}/?conversation={cid}",
        badge=4,
        seq=1,
        count=2,
    )

    got = await push(world, providers, targets, lambda _d: note)

    web = got["web_push"].payload
    size = len(json.dumps(web, ensure_ascii=False, separators=(",", ":")).encode())
    assert size <= MAX_PAYLOAD_BYTES
    assert web["body"].endswith("…") or web["body"] == ""
    assert web["title"].startswith("🙂") and web["data"] == note.data and web["badge"] == 4
    assert decode_action_token(web["action_token"], SECRET).conversation_id == cid
    apns = got["apns"].payload
    assert len(json.dumps(apns, ensure_ascii=False).encode()) <= 4096
    assert apns["aps"]["thread-id"] == cid and apns["seq"] == 1
    fcm = got["fcm"].message
    assert len(json.dumps(fcm["notification"], ensure_ascii=False).encode()) <= 4096


def test_web_push_payload_limit_is_the_push_service_limit(world: PushWorld) -> None:
    subscription = json.loads(world.webpush.subscribe())
    body = WebPusher(subscription).encode(b"x" * MAX_PAYLOAD_BYTES, "aes128gcm")["body"]
    assert len(body) == MAX_BODY_BYTES


def test_builder_keeps_titles_short_and_text_flat() -> None:
    device = sample_device("fcm", "t")
    m = {**a_message(), "content": "line one\n\tline\x00 two\u200b" + "x" * 500}
    note = message_notification(m, "N" * 128, "T\n" * 100, BASE, Recipient(1), device)
    assert len(note.title) == TITLE_LENGTH and note.title.endswith("…")
    assert "\n" not in note.title
    assert note.body.startswith("line one line two") and len(note.body) == 200
    assert "\x00" not in note.body and "\u200b" not in note.body

    # Unknown settings fall back: preview to the most private, locale to English;
    # a region of a known language is that language.
    odd = Recipient(1, unread_here=0, preview="everything", locale="fr")
    note = message_notification(a_message(), "Alice", None, BASE, odd, device)
    assert (note.preview, note.locale, note.count) == ("none", "en", 1)
    assert (note.title, note.body) == ("New message", "You have a new message")
    assert "sender_id" not in note.data
    note = message_notification(
        a_message(), "Alice", None, BASE, Recipient(1, locale="de_AT"), device
    )
    assert note.locale == "de"


def test_every_supported_locale_has_every_text() -> None:
    assert set(SUPPORTED_LOCALES) == set(texts._CATALOGUE)
    keys = {locale: set(texts._CATALOGUE[locale]) for locale in SUPPORTED_LOCALES}
    assert all(k == keys["en"] for k in keys.values())
    assert [texts.text("en", "new_messages", n) for n in (1, 2)] == [
        "1 new message",
        "2 new messages",
    ]
    assert [texts.text("de", "new_messages", n) for n in (1, 2)] == [
        "1 neue Nachricht",
        "2 neue Nachrichten",
    ]
    assert texts.text("xx", "test_title") == "Test notification"
    assert texts.text("de", "test_title") == "Testbenachrichtigung"
    assert clear_notification("c", 1, 0, "de").title == "Auf einem anderen Gerät gelesen"


def _signed_request(fake: FakeAPNs, key_file: str, **headers: str) -> dict[str, str]:
    with open(key_file) as f:
        token = jwt.encode(
            {"iss": fake.team_id, "iat": int(time.time())},
            f.read(),
            algorithm="ES256",
            headers={"kid": fake.key_id},
        )
    return {
        ":method": "POST",
        ":path": f"/3/device/{secrets.token_hex(32)}",
        "authorization": f"bearer {token}",
        "apns-topic": fake.topic,
        **headers,
    }


def test_the_fakes_refuse_what_apple_refuses_for_background_pushes(world: PushWorld) -> None:
    fake, key_file = world.apns, world.settings["apns_key_file"]
    quiet = json.dumps({"aps": {"content-available": 1, "badge": 1}}).encode()
    loud = json.dumps({"aps": {"content-available": 1, "alert": "hi"}}).encode()

    background = {"apns-push-type": "background"}
    assert fake.handle(
        _signed_request(fake, key_file, **background, **{"apns-priority": "5"}), quiet
    ) == (200, None)
    assert fake.handle(
        _signed_request(fake, key_file, **background, **{"apns-priority": "10"}), quiet
    ) == (
        400,
        "BadPriority",
    )
    assert fake.handle(_signed_request(fake, key_file, **background), quiet) == (400, "BadPriority")
    assert fake.handle(
        _signed_request(fake, key_file, **background, **{"apns-priority": "5"}), loud
    ) == (
        400,
        "BadPayload",
    )
    # A push that only wakes the app may not ask for priority 10 either.
    assert fake.handle(_signed_request(fake, key_file, **{"apns-priority": "10"}), quiet) == (
        400,
        "BadPriority",
    )

    def fcm_message(priority: str, **extra: Any) -> dict[str, Any]:
        return {
            "message": {
                "token": "t",
                "data": {"type": "clear"},
                "apns": {
                    "headers": {"apns-push-type": "background", "apns-priority": priority},
                    "payload": {"aps": {"content-available": 1}},
                },
                **extra,
            }
        }

    assert _validate(fcm_message("5"))["token"] == "t"
    for bad in (fcm_message("10"), fcm_message("5", notification={"title": "x"})):
        with pytest.raises(InvalidArgument):
            _validate(bad)
    with pytest.raises(InvalidArgument, match="notification_count"):
        _validate(
            {"message": {"token": "t", "android": {"notification": {"notification_count": "3"}}}}
        )


async def test_test_push_speaks_the_users_language(
    sqlite_url: str, world: PushWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    token = world.webpush.subscribe()
    username = "hilde-" + secrets.token_hex(4)
    engine = create_async_engine(sqlite_url)
    try:
        async with engine.begin() as conn:
            user_id = (
                await conn.execute(
                    insert(User)
                    .values(username=username, display_name="Hilde", password_hash="x")
                    .returning(User.id)
                )
            ).scalar_one()
            await conn.execute(insert(NotificationSettings).values(user_id=user_id, locale="de"))
            await conn.execute(
                insert(DeviceToken).values(
                    id=str(uuid.uuid4()),
                    user_id=user_id,
                    token=token,
                    token_key=token,
                    platform="web",
                    provider="web_push",
                )
            )
    finally:
        await engine.dispose()

    assert await send_test_push(make_settings(sqlite_url, **world.settings), username) == 0

    assert "delivered" in capsys.readouterr().out
    [got] = world.accepted("web_push", token)
    assert got.payload["type"] == "test" and got.payload["lang"] == "de"
    assert (got.payload["title"], got.payload["body"]) == (
        "Testbenachrichtigung",
        "Push-Benachrichtigungen funktionieren auf diesem Gerät.",
    )
