"""Attachments in the web client, between two people on a real node: files picked, dropped
or pasted upload at once with a progress bar and wait as chips; images arrive as a grid of
thumbnails that opens a viewer, other files as cards whose download gives the same bytes.
Every file is fetched with the token in a header and shown through blob: URLs."""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.async_api import Page, Request, expect

from tests.browser.support import (
    NewContext,
    free_port,
    node_settings,
    open_conversation,
    shoot,
    sign_in,
    stored_session,
)
from tests.helpers import Client, Node, eventually, start_node
from tests.push_world import PushWorld

UPLOADS = "/api/v1/messenger/uploads"
SMALL_LIMIT = 64 * 1024
OPEN_UPLOADS = {"upload_rate_per_minute": 100_000, "upload_burst": 100_000}
THUMBNAIL = 160  # smaller than the images sent, so a thumbnail and the original differ

# Chromium fires upload progress on a timer while the body goes out: a throttled link
# makes several of them, and keeps an upload running long enough to cancel it.
SLOW_UPLOAD = {
    "offline": False,
    "latency": 0,
    "downloadThroughput": -1,
    "uploadThroughput": 256 * 1024,
}
FAST = {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}


def png(width: int, height: int, seed: int = 1) -> bytes:
    """A PNG of noise (it does not compress, so the upload takes a while on a slow link)."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def file(name: str, mime: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "mimeType": mime, "buffer": data}


@pytest.fixture(scope="module")
async def files_node(
    postgresql_url: str, push_world: PushWorld, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Node]:
    """A node of its own keeping uploads in a temporary folder."""
    port = free_port()
    settings = node_settings(
        postgresql_url,
        push_world,
        port,
        upload_dir=str(tmp_path_factory.mktemp("browser-uploads")),
        thumbnail_size=THUMBNAIL,
        **OPEN_UPLOADS,
    )
    node = await start_node(settings, port)
    yield node
    await node.stop()


class Requests:
    """Every request a page makes: the token must never be in a URL, only in a header."""

    def __init__(self, page: Page) -> None:
        self.seen: list[Request] = []
        page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        self.seen.append(request)

    def to(self, prefix: str) -> list[Request]:
        return [r for r in self.seen if prefix in r.url]

    async def assert_token_only_in_headers(self, page: Page) -> None:
        token = (await stored_session(page) or {}).get("access_token")
        assert token
        assert not [r.url for r in self.seen if token in r.url]


async def two_people(
    api: Client, new_context: NewContext, node: Node
) -> tuple[Page, Page, str, Any, Any]:
    ann, bob = await api.user(), await api.user()
    cid = (await api.conversation(ann, bob))["id"]
    a = await sign_in(await new_context(notifications=False), node.url, ann)
    b = await sign_in(await new_context(notifications=False), node.url, bob)
    await open_conversation(a, cid)
    await open_conversation(b, cid)
    return a, b, cid, ann, bob


async def record_progress(page: Page) -> None:
    """Keeps every value the chips' progress bars show, in window.__progress."""
    await page.evaluate(
        """() => {
          window.__progress = [];
          new MutationObserver(() => {
            for (const bar of document.querySelectorAll('#composer-files progress')) {
              window.__progress.push([Number(bar.value), Number(bar.max)]);
            }
          }).observe(document.getElementById('composer-files'),
                     { subtree: true, childList: true, attributes: true });
        }"""
    )


async def image_loaded(page: Page, selector: str) -> dict[str, Any]:
    """Waits until the image drawn at `selector` has loaded; its src and natural size."""
    await page.wait_for_function(
        """(selector) => {
          const img = document.querySelector(selector);
          return Boolean(img && img.complete && img.naturalWidth > 0);
        }""",
        arg=selector,
    )
    return await page.eval_on_selector(
        selector, "img => ({src: img.src, width: img.naturalWidth, height: img.naturalHeight})"
    )


async def is_revoked(page: Page, blob_url: str) -> bool:
    # Loaded as an image: the page's CSP lets blob: URLs be images (and not be fetched).
    return await page.evaluate(
        """(url) => new Promise((resolve) => {
          const probe = new Image();
          probe.onload = () => resolve(false);
          probe.onerror = () => resolve(true);
          probe.src = url;
        })""",
        blob_url,
    )


async def test_an_image_is_uploaded_sent_and_opened_in_the_viewer(
    new_context: NewContext, files_node: Node, api: Client, artifacts: Path
) -> None:
    a, b, cid, _ann, bob = await two_people(api, new_context, files_node)
    seen_by_b = Requests(b)
    photo = png(480, 360)

    # Ann picks a PNG on a slow link: the chip shows its progress bar until it is done.
    cdp = await a.context.new_cdp_session(a)
    await cdp.send("Network.emulateNetworkConditions", SLOW_UPLOAD)
    await record_progress(a)
    await expect(a.locator("#send")).to_be_disabled()
    await a.set_input_files("#attach-input", files=[file("sunset.png", "image/png", photo)])
    chip = a.locator("#composer-files li.upload-chip")
    await expect(chip.locator(".upload-name")).to_have_text("sunset.png")
    await expect(chip.locator(".upload-size")).to_have_text(f"{round(len(photo) / 1024)} KB")
    await expect(chip).to_have_attribute("data-state", "done", timeout=30_000)
    await cdp.send("Network.emulateNetworkConditions", FAST)
    progress = await a.evaluate("window.__progress")
    assert progress, "the progress bar never moved"
    values = [value for value, _ in progress]
    assert values == sorted(values)
    assert any(0 < value < len(photo) for value in values), progress
    assert progress[-1][0] >= len(photo), progress  # the body went out whole

    # Send with no text: Send is enabled by the finished upload alone.
    await expect(a.locator("#send")).to_be_enabled()
    await a.click("#send")
    await expect(a.locator("#composer-files")).to_be_hidden()

    # Bob sees the image as a lone tile, its thumbnail loaded through a blob: URL, no text.
    message_b = b.locator("#messages li.message.other").last
    await expect(
        message_b.locator(".attachment-grid.count-1 button.attachment-image")
    ).to_have_count(1)
    await expect(message_b.locator(".text")).to_have_count(0)
    tile_img = "#messages li.message.other .attachment-grid img"
    thumb = await image_loaded(b, tile_img)
    assert thumb["src"].startswith("blob:")
    [stored] = [m for m in await api.messages(bob, cid) if m["attachments"]]
    [attachment] = stored["attachments"]
    assert attachment["name"] == "sunset.png" and attachment["content_type"] == "image/png"
    assert attachment["width"] == 480 and attachment["height"] == 360
    shown_from = await b.get_attribute(tile_img, "data-src")
    assert shown_from == attachment["thumbnail_url"]
    assert (thumb["width"], thumb["height"]) == (THUMBNAIL, THUMBNAIL * 360 // 480)
    # The space was kept for it before it loaded: the tile's box has the image's ratio.
    box = await b.locator(tile_img).bounding_box()
    assert box and abs(box["width"] / box["height"] - 480 / 360) < 0.02

    # Bob opens the viewer: the full image (its true size), then Escape closes it and the
    # full image's blob URL is revoked.
    await message_b.locator("button.attachment-image").click()
    viewer = b.locator("#attachment-viewer")
    await expect(viewer).to_be_visible()
    await expect(b.locator("#viewer-caption")).to_have_text("sunset.png")
    await expect(b.locator("#viewer-prev")).to_be_hidden()
    full = await image_loaded(b, "#viewer-image")
    assert (full["width"], full["height"]) == (480, 360)
    assert full["src"].startswith("blob:")
    await shoot(b, artifacts, "attachments-viewer")
    await b.keyboard.press("Escape")
    await expect(viewer).to_be_hidden()
    await eventually(lambda: is_revoked(b, full["src"]), what="the full image's URL revoked")
    assert not await is_revoked(b, thumb["src"])  # still on screen

    # Every file request carried the token in its header, none in its URL.
    fetched = seen_by_b.to(UPLOADS)
    assert {r.url.split(files_node.url)[1] for r in fetched} >= {attachment["url"], shown_from}
    for request in fetched:
        assert (await request.all_headers())["authorization"].startswith("Bearer ")
    await seen_by_b.assert_token_only_in_headers(b)

    # Ann deletes it: Bob's copy shows no image any more, and its blob URL is released.
    a.on("dialog", lambda dialog: dialog.accept())
    message_a = a.locator("#messages li.message.own").last
    await message_a.hover()
    await message_a.locator('button[data-msg-action="delete"]').click()
    await expect(message_b.locator(".text")).to_have_text("This message was deleted.")
    await expect(b.locator("#messages .attachments")).to_have_count(0)
    await eventually(lambda: is_revoked(b, thumb["src"]), what="the thumbnail's URL revoked")


async def test_files_arrive_as_cards_and_download_the_same_bytes(
    new_context: NewContext, files_node: Node, api: Client, artifacts: Path
) -> None:
    a, b, _cid, _ann, _bob = await two_people(api, new_context, files_node)
    notes = ("Meeting notes\n" * 300).encode()
    pdf = b"%PDF-1.4\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 10 + b"%%EOF\n"  # < 1 KB

    await a.set_input_files(
        "#attach-input",
        files=[file("notes.txt", "text/plain", notes), file("report.pdf", "application/pdf", pdf)],
    )
    await expect(a.locator('#composer-files li.upload-chip[data-state="done"]')).to_have_count(2)
    await a.fill("#composer", "the notes and the report")
    await a.press("#composer", "Enter")

    message_b = b.locator("#messages li.message.other", has_text="the notes and the report")
    cards = message_b.locator(".attachment-file")
    await expect(cards).to_have_count(2)
    await expect(cards.nth(0).locator(".file-name")).to_have_text("notes.txt")
    await expect(cards.nth(0).locator(".file-size")).to_have_text(f"{len(notes) / 1024:.1f} KB")
    await expect(cards.nth(1).locator(".file-name")).to_have_text("report.pdf")
    await expect(cards.nth(1).locator(".file-size")).to_have_text(f"{len(pdf)} B")
    await expect(message_b.locator(".attachment-grid")).to_have_count(0)
    await shoot(b, artifacts, "attachments-files")

    for card, name, data in ((cards.nth(0), "notes.txt", notes), (cards.nth(1), "report.pdf", pdf)):
        async with b.expect_download() as info:
            await card.locator("button.file-download").click()
        download = await info.value
        assert download.suggested_filename == name
        saved = await download.path()
        assert await asyncio.to_thread(Path(saved).read_bytes) == data


async def test_drop_and_paste_add_chips_and_an_upload_can_be_cancelled(
    new_context: NewContext, files_node: Node, api: Client, artifacts: Path
) -> None:
    a, _b, _cid, _ann, _bob = await two_people(api, new_context, files_node)

    # A file dropped on the conversation and an image pasted into the composer.
    await a.evaluate(
        """() => {
          const dropped = new DataTransfer();
          dropped.items.add(new File(['dropped text'], 'dropped.txt', { type: 'text/plain' }));
          const pane = document.getElementById('chat-pane');
          for (const type of ['dragenter', 'dragover', 'drop']) {
            const init = { dataTransfer: dropped, bubbles: true, cancelable: true };
            pane.dispatchEvent(new DragEvent(type, init));
          }
        }"""
    )
    picture = png(40, 30, seed=2)
    await a.evaluate(
        """(bytes) => {
          const pasted = new DataTransfer();
          pasted.items.add(new File([new Uint8Array(bytes)], 'image.png', { type: 'image/png' }));
          const init = { clipboardData: pasted, bubbles: true, cancelable: true };
          document.getElementById('composer').dispatchEvent(new ClipboardEvent('paste', init));
        }""",
        list(picture),
    )
    chips = a.locator("#composer-files li.upload-chip")
    await expect(chips).to_have_count(2)
    await expect(chips.nth(0).locator(".upload-name")).to_have_text("dropped.txt")
    await expect(chips.nth(1).locator(".upload-name")).to_have_text("image.png")
    await expect(a.locator('#composer-files li.upload-chip[data-state="done"]')).to_have_count(2)
    await expect(a.locator("#chat-pane")).not_to_have_class("chat-pane drag-over")
    await expect(chips.nth(1).locator("img.upload-thumb")).to_have_count(1)  # a local preview
    await shoot(a, artifacts, "attachments-chips")

    # Removing a chip takes it off the message.
    await chips.nth(0).locator("button.upload-remove").click()
    await expect(chips).to_have_count(1)

    # An upload on a slow link is cancelled from its chip: the request is aborted.
    cdp = await a.context.new_cdp_session(a)
    await cdp.send(
        "Network.emulateNetworkConditions", {**SLOW_UPLOAD, "uploadThroughput": 16 * 1024}
    )
    failed: list[str] = []
    a.on("requestfailed", lambda r: failed.append(r.url) if UPLOADS in r.url else None)
    await a.set_input_files("#attach-input", files=[file("big.png", "image/png", png(300, 300))])
    uploading = a.locator('#composer-files li.upload-chip[data-state="uploading"]')
    await expect(uploading.locator("progress.upload-progress")).to_have_count(1)
    await uploading.locator("button.upload-remove").click()
    await expect(chips).to_have_count(1)
    await expect(chips.nth(0).locator(".upload-name")).to_have_text("image.png")
    await eventually(lambda: failed, what="the upload request to be aborted")
    await cdp.send("Network.emulateNetworkConditions", FAST)

    # What is left goes: the pasted image, as a lone tile.
    await a.locator("#send").click()
    await expect(a.locator("#messages li.message.own .attachment-grid img")).to_have_count(1)
    await image_loaded(a, "#messages li.message.own .attachment-grid img")


async def test_a_file_over_the_limit_shows_the_servers_message(
    new_context: NewContext,
    api: Client,
    postgresql_url: str,
    push_world: PushWorld,
    tmp_path: Path,
    artifacts: Path,
) -> None:
    port = free_port()
    node = await start_node(
        node_settings(
            postgresql_url,
            push_world,
            port,
            upload_dir=str(tmp_path),
            max_upload_bytes=SMALL_LIMIT,
            **OPEN_UPLOADS,
        ),
        port,
    )
    try:
        ann, bob = await api.user(), await api.user()
        cid = (await api.conversation(ann, bob))["id"]
        a = await sign_in(await new_context(notifications=False), node.url, ann)
        await open_conversation(a, cid)
        # One a little past the limit (read until it is past) and one far past it
        # (refused from its declared length), next to one that fits.
        await a.set_input_files(
            "#attach-input",
            files=[
                file("fits.txt", "text/plain", b"a" * 1000),
                file("just-over.bin", "application/octet-stream", b"\0" * (SMALL_LIMIT + 1)),
                file("far-over.bin", "application/octet-stream", b"\0" * (SMALL_LIMIT * 4)),
            ],
        )
        message = f"a file may be at most {SMALL_LIMIT} bytes"
        for name in ("just-over.bin", "far-over.bin"):
            chip = a.locator("#composer-files li.upload-chip", has_text=name)
            await expect(chip).to_have_attribute("data-state", "failed")
            await expect(chip.locator(".upload-error")).to_have_text(message)
        await expect(
            a.locator("#composer-files li.upload-chip", has_text="fits.txt")
        ).to_have_attribute("data-state", "done")
        await a.locator("#send").click()
        sent = a.locator("#messages li.message.own .attachment-file")
        await expect(sent).to_have_count(1)
        await expect(sent.locator(".file-name")).to_have_text("fits.txt")
        # The failed ones stay on the composer with their message until removed.
        await expect(
            a.locator('#composer-files li.upload-chip[data-state="failed"]')
        ).to_have_count(2)
        await shoot(a, artifacts, "attachments-too-large")
        await expect(a.locator("#send")).to_be_disabled()
    finally:
        await node.stop()


async def test_many_images_make_a_grid_with_more_and_the_viewer_steps_through_them(
    new_context: NewContext, files_node: Node, api: Client, artifacts: Path
) -> None:
    a, b, _cid, _ann, _bob = await two_people(api, new_context, files_node)
    names = [f"photo-{n}.png" for n in range(1, 7)]
    await a.set_input_files(
        "#attach-input",
        files=[file(name, "image/png", png(200 + n, 150, seed=n)) for n, name in enumerate(names)],
    )
    await expect(a.locator('#composer-files li.upload-chip[data-state="done"]')).to_have_count(6)
    await a.fill("#composer", "the whole album")
    await a.press("#composer", "Enter")

    # Four tiles in a 2x2 grid, the fourth saying how many more there are.
    message_b = b.locator("#messages li.message.other", has_text="the whole album")
    tiles = message_b.locator(".attachment-grid.count-4 button.attachment-image")
    await expect(tiles).to_have_count(4)
    await expect(tiles.nth(3).locator(".more")).to_have_text("+2")
    for n in range(4):
        await image_loaded(b, f'#messages li.message.other .attachment-image[data-index="{n}"] img')
    boxes = [await tiles.nth(n).bounding_box() for n in range(4)]
    assert all(box and box["width"] == box["height"] for box in boxes)
    assert boxes[0]["y"] == boxes[1]["y"] < boxes[2]["y"] == boxes[3]["y"]  # type: ignore[index]
    await shoot(b, artifacts, "attachments-grid")

    # The "+2" tile opens the viewer at its image; the keyboard and the buttons step on.
    await tiles.nth(3).click()
    caption = b.locator("#viewer-caption")
    await expect(caption).to_have_text("photo-4.png · 4 of 6")
    assert (await image_loaded(b, "#viewer-image"))["width"] == 203
    await b.keyboard.press("ArrowRight")
    await expect(caption).to_have_text("photo-5.png · 5 of 6")
    await b.click("#viewer-next")
    await expect(caption).to_have_text("photo-6.png · 6 of 6")
    await b.click("#viewer-next")
    await expect(caption).to_have_text("photo-1.png · 1 of 6")
    await b.keyboard.press("ArrowLeft")
    await expect(caption).to_have_text("photo-6.png · 6 of 6")
    full = await image_loaded(b, "#viewer-image")
    assert full["width"] == 205
    await b.click("#viewer-close")
    await expect(b.locator("#attachment-viewer")).to_be_hidden()
    await eventually(lambda: is_revoked(b, full["src"]), what="the full image's URL revoked")
