"""Images and files in pushes: the body of a message of attachments (en, de), the
thumbnail each provider's protocol-true fake receives (FCM `image`, APNs
`mutable-content` + `image_url`, Web Push `image`), nothing of it under preview
"sender" or "none", and the signed link that serves the thumbnail without a session:
refused when forged, expired, or for anything but a sent message's thumbnail."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from app.logs import redact
from app.messenger.models import Upload
from app.messenger.push.base import Device, Outcome, Provider
from app.messenger.push.image_links import (
    PATH,
    TTL_SECONDS,
    ImageLinks,
    InvalidImageToken,
    decode_image_token,
    first_image,
    is_image,
    issue_image_token,
)
from app.messenger.push.notification import Recipient, message_notification
from app.messenger.push.providers import start_providers
from tests.fakes import sample_device
from tests.helpers import SECRET, Client, Node, User, eventually, make_settings, start_node
from tests.push_world import PushWorld, start_push_world

BASE = "http://127.0.0.1:8000"
IMAGE_URL = f"{BASE}{PATH}/{uuid.uuid4()}.{'A' * 22}.{int(time.time()) + 60}"
D = "/api/v1/messenger/devices"
UPLOADS = "/api/v1/messenger/uploads"


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PushWorld]:
    async with AsyncExitStack() as stack:
        yield await start_push_world(stack, tmp_path_factory.mktemp("images"))


@pytest.fixture(autouse=True)
def _fresh_world(world: PushWorld) -> None:
    world.reset()


@pytest.fixture
async def providers(world: PushWorld) -> AsyncIterator[dict[str, Provider]]:
    made = await start_providers(make_settings("sqlite+aiosqlite:///unused.db", **world.settings))
    yield made
    for provider in made.values():
        await provider.close()


def attachment(name: str, content_type: str, thumbnail: bool = False) -> dict[str, Any]:
    upload_id = str(uuid.uuid4())
    described = {
        "id": upload_id,
        "name": name,
        "content_type": content_type,
        "size": 1234,
        "url": f"{UPLOADS}/{upload_id}/content",
    }
    if thumbnail:
        described["thumbnail_url"] = f"{UPLOADS}/{upload_id}/thumbnail"
    return described


PHOTO = attachment("beach.jpg", "image/jpeg", thumbnail=True)
PHOTO2 = attachment("dunes.png", "image/png", thumbnail=True)
PDF = attachment("report.pdf", "application/pdf")
NOTES = attachment("notes.txt", "text/plain")
# An image type without a thumbnail (stored before such types became plain files, or
# bytes that did not decode): a file, not a photo.
SCAN = attachment("scan.tiff", "image/tiff")


def a_message(content: str, attachments: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "conversation_id": str(uuid.uuid4()),
        "sender_id": 42,
        "seq": 3,
        "content": content,
        "attachments": attachments,
    }


async def push_everywhere(
    world: PushWorld,
    providers: dict[str, Provider],
    message: dict[str, Any],
    recipient: Recipient,
    image: str | None,
) -> dict[str, Any]:
    """The message's notification through each provider: what each fake accepted."""
    targets: dict[str, Device] = {
        "web_push": sample_device("web_push", world.webpush.subscribe()),
        "fcm": sample_device("fcm", world.fcm_token()),
        "apns": sample_device("apns", world.apns_token()),
    }
    got: dict[str, Any] = {}
    for name, device in targets.items():
        notification = message_notification(
            message, "Alice", "Trip", BASE, recipient, device, image
        )
        result = await providers[name].send(device, notification)
        assert result.outcome is Outcome.DELIVERED, (name, result)
        got[name] = world.accepted(name, device.token)[-1]
    return got


def bodies(got: dict[str, Any]) -> dict[str, str]:
    return {
        "web_push": got["web_push"].payload["body"],
        "fcm": got["fcm"].message["notification"]["body"],
        "apns": got["apns"].payload["aps"]["alert"]["body"],
    }


FILES = {"photo": PHOTO, "photo2": PHOTO2, "pdf": PDF, "notes": NOTES, "scan": SCAN}
# (attachments by name, locale, unread here) -> the body of a message without text
BODIES = {
    ("photo", "en", 1): "Photo",
    ("photo", "de", 1): "Foto",
    ("photo photo2", "en", 1): "2 photos",
    ("photo photo2", "de", 1): "2 Fotos",
    ("pdf", "en", 1): "File: report.pdf",
    ("pdf", "de", 1): "Datei: report.pdf",
    ("photo pdf", "en", 1): "File: report.pdf and 1 more",
    ("photo pdf", "de", 1): "Datei: report.pdf und eine weitere",
    ("pdf notes photo", "en", 1): "File: report.pdf and 2 more",
    ("pdf notes photo", "de", 1): "Datei: report.pdf und 2 weitere",
    ("scan", "en", 1): "File: scan.tiff",
    ("scan photo", "en", 1): "File: scan.tiff and 1 more",
    ("photo", "en", 4): "4 new messages: Photo",
    ("pdf", "de", 4): "4 neue Nachrichten: Datei: report.pdf",
}


def test_the_first_attachment_with_a_thumbnail_is_the_pushed_image() -> None:
    assert first_image(a_message("", [SCAN, PDF, PHOTO2, PHOTO])) == PHOTO2["id"]
    assert first_image(a_message("", [SCAN, PDF])) is None
    assert not is_image(SCAN) and is_image(PHOTO)


@pytest.mark.parametrize(("files", "locale", "count"), list(BODIES))
async def test_body_of_a_message_without_text_on_every_provider(
    world: PushWorld, providers: dict[str, Provider], files: str, locale: str, count: int
) -> None:
    message = a_message("", [FILES[name] for name in files.split()])
    recipient = Recipient(7, badge=1, unread_here=count, locale=locale)
    got = await push_everywhere(world, providers, message, recipient, None)
    expected = BODIES[(files, locale, count)]
    assert bodies(got) == {"web_push": expected, "fcm": expected, "apns": expected}


async def test_text_stays_the_body_and_the_thumbnail_goes_to_every_provider(
    world: PushWorld, providers: dict[str, Provider]
) -> None:
    message = a_message("Look at this\nsunset", [PHOTO, PDF])
    got = await push_everywhere(world, providers, message, Recipient(7, badge=2), IMAGE_URL)

    assert set(bodies(got).values()) == {"Look at this sunset"}
    web = got["web_push"].payload
    assert web["image"] == IMAGE_URL
    fcm = got["fcm"].message
    assert fcm["notification"]["image"] == IMAGE_URL  # HTTP v1: Android shows it
    assert fcm["apns"]["fcm_options"] == {"image": IMAGE_URL}  # iOS through FCM
    assert fcm["apns"]["payload"]["aps"]["mutable-content"] == 1
    apns = got["apns"].payload
    assert apns["aps"]["mutable-content"] == 1
    assert apns["image_url"] == IMAGE_URL
    assert got["apns"].headers["apns-push-type"] == "alert"


async def test_an_image_message_without_text_says_photo_and_shows_it(
    world: PushWorld, providers: dict[str, Provider]
) -> None:
    message = a_message("", [PHOTO])
    got = await push_everywhere(world, providers, message, Recipient(7, locale="de"), IMAGE_URL)
    assert set(bodies(got).values()) == {"Foto"}
    assert got["web_push"].payload["image"] == IMAGE_URL
    assert got["fcm"].message["notification"]["image"] == IMAGE_URL
    assert got["apns"].payload["image_url"] == IMAGE_URL


@pytest.mark.parametrize("mode", ["sender", "none"])
async def test_no_image_and_no_file_name_without_a_full_preview(
    world: PushWorld, providers: dict[str, Provider], mode: str
) -> None:
    message = a_message("", [PDF, PHOTO])
    got = await push_everywhere(world, providers, message, Recipient(7, preview=mode), IMAGE_URL)

    sent = {
        "web_push": json.dumps(got["web_push"].payload),
        "fcm": json.dumps(got["fcm"].message),
        "apns": json.dumps(got["apns"].payload),
    }
    for provider, text in sent.items():
        assert PATH not in text, provider
        assert "report.pdf" not in text and "beach" not in text, provider
        assert "mutable-content" not in text, provider
    expected = "New message" if mode == "sender" else "You have a new message"
    assert set(bodies(got).values()) == {expected}
    assert "image" not in got["fcm"].message["notification"]
    assert "fcm_options" not in got["fcm"].message["apns"]


def test_a_link_token_names_its_upload_and_expiry_and_nothing_forged_passes() -> None:
    upload_id = str(uuid.uuid4())
    now = time.time()
    links = ImageLinks(lambda: SECRET, BASE + "/", clock=lambda: now)
    url = links.url(upload_id)
    assert url.startswith(f"{BASE}{PATH}/{upload_id}.")
    token = url.rsplit("/", 1)[1]
    claims = decode_image_token(token, SECRET)
    assert (claims.upload_id, claims.expires_at) == (upload_id, int(now) + TTL_SECONDS)

    _, signature, expiry = token.split(".")
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    forged = [
        f"{upload_id}.{flipped}.{expiry}",  # signature changed
        f"{uuid.uuid4()}.{signature}.{expiry}",  # another upload
        f"{upload_id}.{signature}.{int(expiry) + 3600}",  # a later expiry
        issue_image_token(SECRET + "x", upload_id, int(expiry)),  # another node's key
        issue_image_token(SECRET, upload_id, int(now) - 1),  # expired
        token + "x",
        "",
        "../../etc/passwd",
    ]
    for bad in forged:
        with pytest.raises(InvalidImageToken):
            decode_image_token(bad, SECRET)
    # An access log's request line keeps the upload id, never the signature.
    logged = redact(f'"GET {PATH}/{token} HTTP/1.1" 200')
    assert upload_id in logged and signature not in logged
    # An expired link is refused even though its signature is good.
    with pytest.raises(InvalidImageToken, match="expired"):
        decode_image_token(token, SECRET, now=now + TTL_SECONDS + 1)


# -- end to end: a real node on PostgreSQL, real uploads and sends ----------------------


@pytest.fixture(scope="module")
async def image_node(
    world: PushWorld, postgresql_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Node]:
    settings = make_settings(
        postgresql_url,
        upload_dir=str(tmp_path_factory.mktemp("image-uploads")),
        upload_rate_per_minute=100_000,
        upload_burst=100_000,
        **world.settings,
    )
    node = await start_node(settings)
    yield node
    await node.stop()


@pytest.fixture
async def api(image_node: Node) -> AsyncIterator[Client]:
    client = Client(image_node)
    yield client
    await client.close()


def png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


async def upload(api: Client, user: User, name: str, content: bytes) -> dict[str, Any]:
    r = await api.http.post(UPLOADS, files={"file": (name, content)}, headers=user.headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def thumbnail_of(node: Node, upload_id: str) -> bytes:
    """The thumbnail the upload path stored for an image."""
    async with node.services.engine.connect() as conn:
        key = await conn.scalar(select(Upload.thumbnail_key).where(Upload.id == upload_id))
    assert key is not None, "the upload made no thumbnail"
    return b"".join([chunk async for chunk in await node.services.storage.open(key)])


async def add_device(api: Client, user: User, provider: str, token: str) -> None:
    platform = {"web_push": "web", "fcm": "android", "apns": "ios"}[provider]
    r = await api.http.post(
        f"{D}/register",
        json={"device_token": token, "platform": platform, "provider": provider},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text


async def test_a_sent_image_is_pushed_with_a_link_that_serves_only_its_thumbnail(
    api: Client, world: PushWorld
) -> None:
    alice = await api.user(display_name="Alice")
    bob = await api.user(display_name="Bob")
    conv = await api.conversation(alice, bob)
    web, fcm, apns = world.webpush.subscribe(), world.fcm_token(), world.apns_token()
    for provider, token in (("web_push", web), ("fcm", fcm), ("apns", apns)):
        await add_device(api, bob, provider, token)
    original = png(640, 480, (10, 120, 250))
    photo = await upload(api, alice, "sunset.png", original)
    thumbnail = await thumbnail_of(api.node, photo["id"])
    assert thumbnail != original

    r = await api.send(alice, conv["id"], "", attachments=[photo["id"]])
    assert r.status_code in (200, 201), r.text
    message = r.json()
    await eventually(
        lambda: (
            world.accepted("web_push", web)
            and world.accepted("fcm", fcm)
            and world.accepted("apns", apns)
        ),
        what="a push on each of bob's devices",
    )
    [w], [f], [a] = (
        world.accepted(p, t) for p, t in (("web_push", web), ("fcm", fcm), ("apns", apns))
    )
    link = w.payload["image"]
    # Signed once for the message: every device gets the same link.
    assert f.message["notification"]["image"] == link
    assert a.payload["image_url"] == link and a.payload["aps"]["mutable-content"] == 1
    assert w.payload["body"] == f.message["notification"]["body"] == "Photo"
    assert a.payload["aps"]["alert"]["body"] == "Photo"
    settings = api.node.services.settings
    assert link.startswith(f"{settings.public_base_url}{PATH}/{photo['id']}.")

    # A notification system fetches it with no session at all.
    path = link.removeprefix(settings.public_base_url)
    served = await api.http.get(path)
    assert served.status_code == 200, served.text
    assert served.content == thumbnail and served.content != original
    with Image.open(io.BytesIO(thumbnail)) as image:
        assert served.headers["content-type"] == image.get_format_mimetype()
    assert served.headers["x-content-type-options"] == "nosniff"
    cache = served.headers["cache-control"]
    assert cache.startswith("private, max-age=") and int(cache.split("=")[1].split(",")[0]) > 3600

    token = path.rsplit("/", 1)[1]
    upload_id, signature, expiry = token.split(".")
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    other = await upload(api, alice, "other.png", png(300, 200, (0, 0, 0)))
    refused = [
        f"{upload_id}.{flipped}.{expiry}",  # tampered
        f"{other['id']}.{signature}.{expiry}",  # another upload under this signature
        issue_image_token(SECRET, upload_id, int(time.time()) - 1),  # expired
        # Signed, but for an upload never sent: its thumbnail is nobody's to see yet.
        issue_image_token(SECRET, other["id"], int(time.time()) + 60),
        "nonsense",
    ]
    for bad in refused:
        r = await api.http.get(f"{PATH}/{bad}")
        assert r.status_code == 404, (bad, r.text)
        assert r.json()["error"]["code"] == "not_found"
        assert r.content != thumbnail and original not in r.content

    # The message is deleted: its links stop serving.
    deleted = await api.http.delete(
        f"/api/v1/messenger/conversations/{conv['id']}/messages/{message['id']}",
        headers=alice.headers,
    )
    assert deleted.status_code == 200, deleted.text
    gone = await api.http.get(path)
    assert gone.status_code == 404


async def test_a_file_message_names_the_file_and_its_link_never_serves_the_original(
    api: Client, world: PushWorld
) -> None:
    alice = await api.user(display_name="Alice")
    bob = await api.user(display_name="Bob")
    conv = await api.conversation(alice, bob)
    web = world.webpush.subscribe()
    await add_device(api, bob, "web_push", web)
    document = await upload(api, alice, "minutes.txt", b"the minutes of the meeting\n")

    r = await api.send(alice, conv["id"], "", attachments=[document["id"]])
    assert r.status_code in (200, 201), r.text
    await eventually(lambda: world.accepted("web_push", web), what="bob's push")
    [w] = world.accepted("web_push", web)
    assert w.payload["body"] == "File: minutes.txt"
    assert "image" not in w.payload

    # Even a correctly signed link to it serves nothing: it has no thumbnail, and an
    # original is never served this way.
    token = issue_image_token(SECRET, document["id"], int(time.time()) + 60)
    r = await api.http.get(f"{PATH}/{token}")
    assert r.status_code == 404
    assert b"minutes of the meeting" not in r.content


# Loads the service worker into a Node vm (its `self` stubbed, as sw.js describes) and
# prints the `image` of notificationFromPayload for each payload given.
SW_PROBE = """
const vm = require('vm');
const fs = require('fs');
const self = { addEventListener() {}, location: new URL('http://127.0.0.1:8000/') };
const ctx = vm.createContext({ self, URL, console });
vm.runInContext(fs.readFileSync(process.argv[1], 'utf8'), ctx);
const show = (p) => vm.runInContext(`notificationFromPayload(${JSON.stringify(p)})`, ctx);
const shown = JSON.parse(process.argv[2]).map((p) => show(p).options.image ?? null);
console.log(JSON.stringify(shown));
"""


def test_the_service_worker_shows_the_image() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node binary to run the service worker's helpers")
    sw = Path(__file__).resolve().parents[2] / "frontend" / "sw.js"
    payload = {"title": "Alice", "body": "Photo", "data": {"conversation_id": "c1"}, "tag": "c1"}
    payloads = [{**payload, "image": IMAGE_URL}, payload, {**payload, "image": "javascript:x"}]
    run = subprocess.run(
        [node, "-e", SW_PROBE, str(sw), json.dumps(payloads)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(run.stdout) == [IMAGE_URL, None, None]
