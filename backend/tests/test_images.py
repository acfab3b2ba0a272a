"""Images among uploads, on both databases and both stores: their upright size, a
thumbnail, an original others download without EXIF/XMP/GPS, animated images kept
whole, decompression bombs refused, and bytes that only claim to be an image kept as a
plain file."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx2
import pytest
from PIL import Image, PngImagePlugin
from sqlalchemy import select

from app.messenger.images import strip_jpeg, strip_png, strip_webp
from app.messenger.models import Upload
from tests import test_uploads
from tests.helpers import User
from tests.test_uploads import UPLOADS, World, start_world, upload, uploaded

# The fixtures of the upload tests (moto's S3 server; a node on each store), by name.
moto = test_uploads.moto
world = test_uploads.world

GPS_IFD = 0x8825
ORIENTATION = 0x0112
RED, BLUE = (230, 20, 20), (20, 20, 230)


def exif(orientation: int = 1) -> Image.Exif:
    """EXIF with a camera, an orientation and a position, as a phone writes it."""
    data = Image.Exif()
    data[0x010F] = "PhoneMaker"  # Make
    data[ORIENTATION] = orientation
    data[GPS_IFD] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}
    return data


def photo(width: int, height: int) -> Image.Image:
    """Blue, with a red block in the top-left corner (to see where it went)."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 4, height // 4))
    return image


def jpeg(image: Image.Image, orientation: int = 1, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif(orientation), **options)
    return out.getvalue()


def near(pixel: Any, colour: tuple[int, int, int]) -> bool:
    return all(abs(int(a) - b) < 40 for a, b in zip(pixel[:3], colour, strict=True))


async def get(w: World, user: User, url: str) -> httpx2.Response:
    return await w.client.http.get(url, headers=user.headers)


async def row(w: World, upload_id: str) -> Any:
    async with w.node.services.engine.connect() as conn:
        return (await conn.execute(select(Upload.__table__).where(Upload.id == upload_id))).one()


def has_no_metadata(data: bytes) -> None:
    """No EXIF, XMP or GPS, read by Pillow and by looking for their markers."""
    with Image.open(io.BytesIO(data)) as image:
        found = image.getexif()
        assert dict(found) == {}
        assert found.get_ifd(GPS_IFD) == {}
        assert "exif" not in image.info and "xmp" not in image.info
    for marker in (b"Exif\x00\x00", b"EXIF", b"eXIf", b"http://ns.adobe.com/xap", b"PhoneMaker"):
        assert marker not in data, marker


async def test_a_turned_photo_is_made_upright_without_its_exif(world: World) -> None:
    user = await world.client.user()
    original = jpeg(photo(1200, 600), orientation=6)  # taken holding the phone upright
    body = await uploaded(world, user, original, filename="IMG_1.jpg")
    assert body["content_type"] == "image/jpeg"
    assert (body["width"], body["height"]) == (600, 1200)
    assert body["thumbnail_url"] == f"{UPLOADS}/{body['id']}/thumbnail"

    r = await get(world, user, body["url"])
    assert r.status_code == 200
    assert body["size"] == len(r.content)
    has_no_metadata(r.content)
    with Image.open(io.BytesIO(r.content)) as stored:
        assert stored.size == (600, 1200)
        # Orientation 6 turns the picture clockwise: the top-left block is top-right.
        assert near(stored.getpixel((550, 50)), RED)
        assert near(stored.getpixel((50, 50)), BLUE)

    r = await get(world, user, body["thumbnail_url"])
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-disposition"].startswith("inline;")
    has_no_metadata(r.content)
    with Image.open(io.BytesIO(r.content)) as thumb:
        assert thumb.size == (240, 480)
        assert near(thumb.getpixel((220, 20)), RED)
    stored_row = await row(world, body["id"])
    assert (stored_row.thumbnail_width, stored_row.thumbnail_height) == (240, 480)
    assert stored_row.animated is False
    assert stored_row.thumbnail_key in await world.keys()


async def test_an_upright_jpeg_loses_its_metadata_and_nothing_else(world: World) -> None:
    user = await world.client.user()
    image = photo(300, 200)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    original = jpeg(image, xmp=b"http://ns.adobe.com/xap/1.0/\x00" + xmp)
    assert b"Exif\x00\x00" in original and b"http://ns.adobe.com/xap" in original
    body = await uploaded(world, user, original, filename="upright.jpg")
    assert (body["width"], body["height"]) == (300, 200)
    r = await get(world, user, body["url"])
    has_no_metadata(r.content)
    assert len(r.content) < len(original)
    # Segments removed, the compressed picture untouched: the same pixels.
    with Image.open(io.BytesIO(r.content)) as cleaned, Image.open(io.BytesIO(original)) as src:
        assert cleaned.tobytes() == src.tobytes()


async def test_png_with_alpha_keeps_it_in_its_thumbnail(world: World) -> None:
    user = await world.client.user()
    image = Image.new("RGBA", (1000, 500), (0, 0, 0, 0))
    image.paste((*RED, 255), (0, 0, 500, 250))
    text = PngImagePlugin.PngInfo()
    text.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="http://ns.adobe.com/xap/1.0/"/>')
    text.add_text("Comment", "taken at home")
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=text, exif=exif())
    original = out.getvalue()
    body = await uploaded(world, user, original, filename="logo.png")
    assert (body["content_type"], body["width"], body["height"]) == ("image/png", 1000, 500)
    r = await get(world, user, body["url"])
    has_no_metadata(r.content)
    assert b"taken at home" not in r.content
    with Image.open(io.BytesIO(r.content)) as cleaned:
        assert cleaned.tobytes() == image.tobytes()
    r = await get(world, user, body["thumbnail_url"])
    assert r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as thumb:
        assert thumb.format == "PNG"
        assert thumb.size == (480, 240)
        assert thumb.mode == "RGBA"
        assert thumb.getpixel((400, 200))[3] == 0  # transparent where it was
        assert thumb.getpixel((20, 20)) == (*RED, 255)


def frames(size: tuple[int, int]) -> list[Image.Image]:
    return [Image.new("RGB", size, colour) for colour in (RED, BLUE, (20, 200, 20))]


async def test_an_animated_gif_keeps_its_frames_and_gets_a_still_thumbnail(world: World) -> None:
    user = await world.client.user()
    first, *rest = frames((600, 300))
    out = io.BytesIO()
    first.save(out, "GIF", save_all=True, append_images=rest, duration=100, loop=0)
    original = out.getvalue()
    body = await uploaded(world, user, original, filename="dance.gif")
    assert (body["content_type"], body["width"], body["height"]) == ("image/gif", 600, 300)
    assert (await row(world, body["id"])).animated is True
    r = await get(world, user, body["url"])
    assert r.content == original
    r = await get(world, user, body["thumbnail_url"])
    with Image.open(io.BytesIO(r.content)) as thumb:
        assert not getattr(thumb, "is_animated", False)
        assert thumb.size == (480, 240)
        assert near(thumb.convert("RGB").getpixel((10, 10)), RED)


async def test_an_animated_webp_keeps_its_frames_and_loses_its_exif(world: World) -> None:
    user = await world.client.user()
    first, *rest = frames((640, 320))
    out = io.BytesIO()
    first.save(
        out, "WEBP", save_all=True, append_images=rest, duration=100, exif=exif(), lossless=True
    )
    original = out.getvalue()
    assert b"EXIF" in original
    body = await uploaded(world, user, original, filename="loop.webp")
    assert (body["content_type"], body["width"], body["height"]) == ("image/webp", 640, 320)
    assert (await row(world, body["id"])).animated is True
    r = await get(world, user, body["url"])
    has_no_metadata(r.content)
    with Image.open(io.BytesIO(r.content)) as cleaned:
        assert getattr(cleaned, "n_frames", 1) == 3
        cleaned.seek(2)
        assert near(cleaned.convert("RGB").getpixel((5, 5)), (20, 200, 20))
    r = await get(world, user, body["thumbnail_url"])
    with Image.open(io.BytesIO(r.content)) as thumb:
        assert thumb.format == "JPEG"
        assert thumb.size == (480, 240)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming a canvas of width x height, and a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4096, 9))
        + chunk(b"IEND", b"")
    )


async def test_decompression_bombs_are_refused_and_leave_nothing(world: World) -> None:
    user = await world.client.user()
    before = await world.keys()
    # Past Pillow's own limit, and past MAX_IMAGE_PIXELS (50 megapixels) only.
    for width, height in ((100_000, 100_000), (8_000, 8_000)):
        bomb = png_claiming(width, height)
        assert len(bomb) < 1000
        r = await upload(world, user, bomb, filename="bomb.png")
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "image_too_large"
    assert await world.rows(user) == 0
    assert await world.keys() == before


async def test_bytes_that_only_claim_an_image_are_a_plain_file(world: World) -> None:
    user = await world.client.user()
    text = await uploaded(world, user, b"just some words", filename="cat.jpg")
    assert text["content_type"] == "text/plain"
    # A real PNG's header, its data cut off halfway: the header reads, the pixels do not.
    out = io.BytesIO()
    Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3)).save(out, "PNG")
    truncated = out.getvalue()[: len(out.getvalue()) // 2]
    # A JPEG header and then noise.
    broken_jpeg = jpeg(photo(64, 64))[:300] + os.urandom(3000)
    for data, name in ((truncated, "cut.png"), (broken_jpeg, "noise.jpg")):
        body = await uploaded(world, user, data, filename=name)
        assert body["content_type"] == "application/octet-stream", name
        assert "thumbnail_url" not in body and "width" not in body
        r = await get(world, user, body["url"])
        assert r.content == data
        r = await get(world, user, f"{UPLOADS}/{body['id']}/thumbnail")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "thumbnail_not_found")
    stored = {(await row(world, text["id"])).thumbnail_key}
    assert stored == {None}


async def test_only_who_may_have_the_image_gets_its_thumbnail(world: World) -> None:
    owner, stranger = await world.client.user(), await world.client.user()
    body = await uploaded(world, owner, jpeg(photo(100, 80)), filename="mine.jpg")
    url = body["thumbnail_url"]
    assert (await get(world, owner, url)).status_code == 200
    denied = await get(world, stranger, url)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "forbidden"
    assert (await world.client.http.get(url)).status_code == 401
    unknown = await get(world, owner, f"{UPLOADS}/{'0' * 8}-0000-0000-0000-{'0' * 12}/thumbnail")
    assert unknown.status_code == 404


async def test_s3_thumbnails_may_redirect_to_a_presigned_url(
    sqlite_url: str, tmp_path: Path, moto: str | None
) -> None:
    if moto is None:
        pytest.skip("no S3 server")
    w = await start_world(sqlite_url, "s3", tmp_path, moto, s3_presigned_url_seconds=60)
    try:
        user = await w.client.user()
        body = await uploaded(w, user, jpeg(photo(900, 900), orientation=3), filename="p.jpg")
        r = await get(w, user, body["thumbnail_url"])
        assert r.status_code == 302
        assert r.headers["location"].startswith(moto)
        async with httpx2.AsyncClient() as http:
            fetched = await http.get(r.headers["location"])
        assert fetched.status_code == 200
        assert fetched.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(fetched.content)) as thumb:
            assert thumb.size == (480, 480)
            # Orientation 3 is half a turn: the red corner is now bottom-right.
            assert near(thumb.getpixel((470, 470)), RED)
    finally:
        await w.client.close()
        await w.node.stop()


def test_stripping_keeps_the_picture_and_drops_what_follows_it() -> None:
    # A JPEG with a trailer (as "motion photos" append a video holding their own EXIF).
    original = jpeg(photo(64, 64)) + b"\x00\x00ftypmp4 Exif\x00\x00 video"
    out = io.BytesIO()
    assert strip_jpeg(io.BytesIO(original), out) is True
    assert b"video" not in out.getvalue()
    has_no_metadata(out.getvalue())
    # Nothing to remove: nothing removed, the same bytes.
    clean = out.getvalue()
    again = io.BytesIO()
    assert strip_jpeg(io.BytesIO(clean), again) is False
    assert again.getvalue() == clean
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, "PNG")
    copy = io.BytesIO()
    assert strip_png(io.BytesIO(plain.getvalue()), copy) is False
    assert copy.getvalue() == plain.getvalue()
    webp = io.BytesIO()
    Image.new("RGB", (8, 8)).save(webp, "WEBP", exif=exif())
    copy = io.BytesIO()
    assert strip_webp(io.BytesIO(webp.getvalue()), copy) is True
    has_no_metadata(copy.getvalue())
    (size,) = struct.unpack("<I", copy.getvalue()[4:8])
    assert size == len(copy.getvalue()) - 8


async def test_a_header_longer_than_the_sniffed_bytes_is_still_read(world: World) -> None:
    user = await world.client.user()
    # 300 KiB of ICC profile in APP2 segments come before the frame header.
    original = jpeg(photo(200, 100), orientation=8, icc_profile=os.urandom(300 * 1024))
    body = await uploaded(world, user, original, filename="big-header.jpg")
    assert (body["content_type"], body["width"], body["height"]) == ("image/jpeg", 100, 200)
    r = await get(world, user, body["url"])
    has_no_metadata(r.content)
    assert "thumbnail_url" in body


def apng(*, with_exif: bool = True) -> bytes:
    """An animated PNG of two frames (red, then blue), with EXIF and GPS in an eXIf chunk."""
    first, second = Image.new("RGB", (64, 48), RED), Image.new("RGB", (64, 48), BLUE)
    out = io.BytesIO()
    options: dict[str, Any] = {"exif": exif().tobytes()} if with_exif else {}
    first.save(out, "PNG", save_all=True, append_images=[second], duration=100, **options)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


async def test_an_animated_png_is_a_png_without_its_exif_and_keeps_its_frames(
    world: World,
) -> None:
    user = await world.client.user()
    original = apng()
    assert b"eXIf" in original and b"acTL" in original
    body = await uploaded(world, user, original, filename="loop.png")
    assert (body["content_type"], body["width"], body["height"]) == ("image/png", 64, 48)
    assert "thumbnail_url" in body
    assert (await row(world, body["id"])).animated is True
    r = await get(world, user, body["url"])
    has_no_metadata(r.content)
    with Image.open(io.BytesIO(r.content)) as cleaned:
        assert cleaned.n_frames == 2
        cleaned.seek(1)
        assert near(cleaned.convert("RGB").getpixel((5, 5)), BLUE)


def gif_claiming(canvas: tuple[int, int], frame: tuple[int, int], count: int) -> bytes:
    """A GIF whose `count` frames each claim `frame` pixels (their data is one pixel's)."""
    header = b"GIF89a" + struct.pack("<HHBBB", *canvas, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    loop = b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    image = b"," + struct.pack("<HHHHB", 0, 0, *frame, 0) + b"\x02\x02\x44\x01\x00"
    return header + loop + image * count + b";"


async def test_animations_of_too_many_frames_or_pixels_are_refused(world: World) -> None:
    user = await world.client.user()
    before = await world.keys()
    # Each frame is small: there are too many of them. Then 201 frames of a megapixel
    # each: 201 MP, past four times MAX_IMAGE_PIXELS (50 MP), in a file of 3 KB.
    long_gif = gif_claiming((4, 4), (4, 4), 1001)
    heavy_gif = gif_claiming((1000, 1000), (1000, 1000), 201)
    # An APNG whose animation control chunk announces 1001 frames.
    data = apng(with_exif=False)
    start = data.index(b"acTL") - 4
    actl = png_chunk(b"acTL", struct.pack(">II", 1001, 0))
    long_apng = data[:start] + actl + data[start + len(actl) :]
    for hostile, name in ((long_gif, "long.gif"), (heavy_gif, "heavy.gif"), (long_apng, "a.png")):
        assert len(hostile) < 20_000
        r = await upload(world, user, hostile, filename=name)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "image_too_large"), name
    assert await world.rows(user) == 0
    assert await world.keys() == before


async def test_an_image_that_decodes_but_cannot_be_cleaned_is_refused(world: World) -> None:
    user = await world.client.user()
    before = await world.keys()
    # The first frame whole, the second cut off: it decodes, its chunks cannot be walked
    # to their end, and an animation is never re-encoded.
    data = apng()
    cut = data[: data.index(b"fdAT") + 10]
    r = await upload(world, user, cut, filename="cut.png")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "image_unprocessable")
    assert await world.rows(user) == 0
    assert await world.keys() == before


async def test_image_types_not_processed_are_plain_files(world: World) -> None:
    user = await world.client.user()
    tiff = io.BytesIO()
    photo(64, 48).save(tiff, "TIFF", tiffinfo={0x010F: "PhoneMaker"})
    assert b"PhoneMaker" in tiff.getvalue()
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"Exif\x00\x00PhoneMaker"
    for data, name in ((tiff.getvalue(), "scan.tiff"), (heic, "IMG_2.heic")):
        body = await uploaded(world, user, data, filename=name)
        assert body["content_type"] == "application/octet-stream", name
        assert "thumbnail_url" not in body and "width" not in body
        r = await get(world, user, body["url"])
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["content-disposition"].startswith("attachment;")


async def test_a_jpeg_of_too_many_scans_is_refused(world: World) -> None:
    user = await world.client.user()
    data = jpeg(photo(64, 64), progressive=True)
    last_scan = data.rindex(b"\xff\xda")
    # The last scan again and again: each one another pass over every pixel.
    many = data[:last_scan] + data[last_scan:-2] * 101 + b"\xff\xd9"
    r = await upload(world, user, many, filename="slow.jpg")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "image_too_large")
    assert await world.rows(user) == 0
    # A progressive JPEG of its usual ten or so scans is an image like any other.
    assert (await uploaded(world, user, data, filename="fine.jpg"))["content_type"] == "image/jpeg"


async def test_gif_comments_and_application_extensions_go(world: World) -> None:
    user = await world.client.user()
    first, *rest = frames((60, 30))
    out = io.BytesIO()
    first.save(out, "GIF", save_all=True, append_images=rest, duration=100, loop=0)
    original = out.getvalue()
    assert b"NETSCAPE2.0" in original
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">PhoneMaker GPS 48.85</x:xmpmeta>'
    # XMP as GIFs carry it: an application extension, its packet cut in sub-blocks.
    blocks = b"".join(
        bytes([len(p)]) + p for p in (xmp[i : i + 255] for i in range(0, len(xmp), 255))
    )
    extension = b"!\xff\x0bXMP DataXMP" + blocks + b"\x00"
    comment = b"!\xfe\x10made by PhoneMak\x00"
    first_frame = original.index(b"!\xf9")  # the first graphic control extension
    hostile = original[:first_frame] + extension + comment + original[first_frame:]
    body = await uploaded(world, user, hostile, filename="dance.gif")
    assert body["content_type"] == "image/gif"
    r = await get(world, user, body["url"])
    assert r.content == original  # the two blocks gone, every other byte kept
    assert body["size"] == len(original)
    with Image.open(io.BytesIO(r.content)) as cleaned:
        assert cleaned.n_frames == 3
        assert "xmp" not in cleaned.info and "comment" not in cleaned.info


async def test_thumbnails_are_revalidated_on_each_use(world: World) -> None:
    owner, stranger = await world.client.user(), await world.client.user()
    body = await uploaded(world, owner, jpeg(photo(100, 80)), filename="mine.jpg")
    r = await get(world, owner, body["thumbnail_url"])
    assert r.headers["cache-control"] == "private, no-cache"
    etag = r.headers["etag"]
    again = await world.client.http.get(
        body["thumbnail_url"], headers={**owner.headers, "If-None-Match": etag}
    )
    assert (again.status_code, again.content) == (304, b"")
    refused = await world.client.http.get(
        body["thumbnail_url"], headers={**stranger.headers, "If-None-Match": etag}
    )
    assert refused.status_code == 403
