"""Images among uploads: their true size, a thumbnail, and an original without metadata.

An upload sniffed as PNG (APNG too), JPEG, GIF or WebP is opened with Pillow once it is
stored. What decoding would cost is read from its structure before any pixel is
decoded: a canvas past MAX_IMAGE_PIXELS (a small file may claim a huge one: a
decompression bomb), more than MAX_FRAMES frames or frames holding together more than
ANIMATION_PIXEL_FACTOR x MAX_IMAGE_PIXELS, a JPEG of more than MAX_JPEG_SCANS scans:
each is refused (422 image_too_large). Its first frame is then decoded, which also
proves the bytes are the image they claim; bytes that do not decode are kept as a plain
file. An image that decoded but cannot then be cleaned or thumbnailed is refused (422
image_unprocessable), never kept with its metadata. A thumbnail is made (shrunk first,
then turned by its EXIF orientation; JPEG when opaque, PNG when not) and stored under
its own key, `<storage_key>-thumb-jpeg` or `-thumb-png`: that key, kept in
`uploads.thumbnail_key`, is the only record of it.

What others download carries no EXIF, XMP or GPS: the stored original is replaced by a
copy without them. Segments, chunks and blocks are removed losslessly (JPEG
APP1/APP13/COM, PNG text and eXIf chunks, WebP EXIF and XMP chunks, GIF comments and
application extensions but the loop count's; animated images keep every frame); a still
image whose orientation is not upright, or whose layout the strippers do not follow, is
re-encoded instead (upright), since the tag that told viewers to turn it goes with the
EXIF. An animation whose layout is not followed is refused.

Decoding runs in a small thread pool of its own (IMAGE_WORKERS), so the event loop
never waits on Pillow and a burst of uploads cannot take more memory than that many
images at most MAX_IMAGE_PIXELS each (twice over while a photo is turned upright).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import struct
import tempfile
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import Image

from app.config import Settings
from app.messenger.storage import READ_CHUNK, LocalStorage, ObjectMissing, Storage

log = logging.getLogger(__name__)

# Pillow's format names, for the sniffed types; Image.open tries no other decoder.
FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}
ORIENTATION = 0x0112
# How to turn an image upright for each EXIF orientation (1: already upright).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_THUMBNAIL_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}
# A thumbnail is a few tens of kilobytes; anything stored under its key larger than
# this is not one of ours and is not read into memory.
MAX_THUMBNAIL_BYTES = 4 * 1024 * 1024
# An animation is refused past this many frames, or when its frames together hold more
# than this many times MAX_IMAGE_PIXELS: a viewer decodes every one to play it.
MAX_FRAMES = 1000
ANIMATION_PIXEL_FACTOR = 4
# A progressive JPEG has about ten scans; each one is another pass over every pixel.
MAX_JPEG_SCANS = 100


class ImageTooLarge(ValueError):
    """The image claims more pixels (frames, scans) than may be decoded."""


class ImageUnprocessable(ValueError):
    """The image decoded, then could not be cleaned of metadata or thumbnailed."""


@dataclass(frozen=True, slots=True)
class Processed:
    """What processing found and made; `cleaned`: a copy without metadata is in `out`."""

    width: int  # upright, as a viewer shows it
    height: int
    animated: bool
    cleaned: bool
    thumbnail: bytes
    thumbnail_type: str
    thumbnail_width: int
    thumbnail_height: int


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An image upload after `store_image`: its sizes, thumbnail key and (when the
    original was replaced by a copy without metadata) its new size in bytes."""

    width: int
    height: int
    animated: bool
    size: int | None
    thumbnail_key: str
    thumbnail_width: int
    thumbnail_height: int


def check_pixels(width: int, height: int, limit: int) -> None:
    """ImageTooLarge when a canvas of width x height is past `limit` pixels."""
    if width * height > limit:
        raise ImageTooLarge(f"an image may have at most {limit} pixels, not {width}x{height}")


def thumbnail_key_for(storage_key: str, content_type: str) -> str:
    """The storage key of an upload's thumbnail of this type (image/jpeg or image/png)."""
    suffix = next(k for k, v in _THUMBNAIL_TYPES.items() if v == content_type)
    return f"{storage_key}-thumb-{suffix}"


def thumbnail_type(thumbnail_key: str) -> str:
    """The content type of the thumbnail stored under this key."""
    return _THUMBNAIL_TYPES.get(thumbnail_key.rsplit("-", 1)[-1], "image/jpeg")


# -- processing: pure functions on files, run in the worker threads ----------------------


def process(
    source: Path, content_type: str, out: Path, max_pixels: int, thumbnail_size: int
) -> Processed | None:
    """Read the image in `source`; None when its bytes do not decode as `content_type`
    (kept as a plain file). Writes a copy without metadata to `out` when the original
    has any (`cleaned`). Raises ImageTooLarge before decoding anything too costly (a
    canvas past `max_pixels`, too many frames or JPEG scans), and ImageUnprocessable
    when it decoded but could not be cleaned or thumbnailed: its raw bytes, metadata
    and all, are never kept then."""
    try:
        # The pixel check is the limit; Pillow's own error (at twice its default) still
        # stops anything larger. (Its warning is not silenced here: the warning filters
        # are the process's, not this thread's.)
        image = Image.open(source, formats=[FORMATS[content_type]])
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except Exception as exc:  # Pillow raises many kinds for bytes that are not an image
        log.debug("image does not open type=%s error=%s", content_type, type(exc).__name__)
        return None
    with image:
        return _process_open(image, source, content_type, out, max_pixels, thumbnail_size)


def _process_open(
    image: Image.Image,
    source: Path,
    content_type: str,
    out: Path,
    max_pixels: int,
    thumbnail_size: int,
) -> Processed | None:
    check_pixels(*image.size, max_pixels)
    try:
        _check_cost(image, source, content_type, max_pixels)
        animated = bool(getattr(image, "is_animated", False))
    except ImageTooLarge:
        raise
    except Exception as exc:  # a header Pillow read, and then frames it cannot
        log.debug("image does not decode type=%s error=%s", content_type, type(exc).__name__)
        return None
    try:
        orientation = image.getexif().get(ORIENTATION, 1)
    except Exception:  # EXIF that does not parse: upright, and it goes all the same
        orientation = 1
    # An animated image keeps its frames as they are (and so its orientation unapplied).
    upright = None if animated or content_type == "image/gif" else _UPRIGHT.get(orientation)
    # Metadata goes first, losslessly, before any pixel is decoded. None: a layout the
    # strippers do not follow (a still is then re-encoded, an animation refused).
    stripped = _strip(source, content_type, out)
    width, height = image.size
    if not _decode(image, content_type, upright, thumbnail_size):
        return None
    if content_type == "image/gif":
        # A GIF frame larger than its canvas grows the image: count what was decoded.
        check_pixels(*image.size, max_pixels)
        width, height = image.size
    try:
        thumbnail = make_thumbnail(image, thumbnail_size, upright)
        if upright is not None:
            # The original is rewritten upright: with its EXIF gone, nothing else would
            # tell a viewer to turn it. The decoded original is freed before encoding.
            info = dict(image.info)
            turned = image.transpose(upright)
            image.close()
            width, height = turned.size
            _reencode(turned, info, content_type, out)
            cleaned = True
        elif stripped is None:
            if animated:
                raise ImageUnprocessable("an animation whose layout is not followed")
            image.close()  # the small draft of a JPEG, or the first frame: not reused
            with Image.open(source, formats=[FORMATS[content_type]]) as again:
                again.load()
                _reencode(again, again.info, content_type, out)
            cleaned = True
        else:
            cleaned = stripped
    except ImageTooLarge:
        raise
    except Exception as exc:
        raise ImageUnprocessable(f"{type(exc).__name__}: {exc}") from exc
    return Processed(width, height, animated, cleaned, *thumbnail)


def _check_cost(image: Image.Image, source: Path, content_type: str, max_pixels: int) -> None:
    """ImageTooLarge for what would cost a viewer (or this node) too much to decode,
    read from the file's structure alone: too many JPEG scans (each one is a pass over
    the whole picture), too many frames, or frames that together hold too many pixels."""
    if content_type == "image/jpeg":
        scans = count_jpeg_scans(source, MAX_JPEG_SCANS)
        if scans > MAX_JPEG_SCANS:
            raise ImageTooLarge(f"a JPEG may have at most {MAX_JPEG_SCANS} scans")
        return
    if content_type == "image/gif":
        try:
            with source.open("rb") as src:
                layout = walk_gif(src, None)
        except ImageTooLarge:
            raise
        except ValueError:
            # Not a layout followed: the original is not kept (a still is re-encoded from
            # its first frame, an animation refused), so no frame count matters.
            return
        check_pixels(layout.width, layout.height, max_pixels)
        check_animation(layout.frames, layout.width, layout.height, max_pixels)
        return
    frames: int = getattr(image, "n_frames", 1)  # WebP: its ANMF chunks
    if content_type == "image/png":
        frames = max(frames, png_frames(source))  # acTL's count, or more fcTL chunks
    check_animation(frames, *image.size, max_pixels)


def check_animation(frames: int, width: int, height: int, max_pixels: int) -> None:
    """ImageTooLarge for more than MAX_FRAMES frames, or frames of width x height that
    together pass ANIMATION_PIXEL_FACTOR x `max_pixels`."""
    if frames > MAX_FRAMES:
        raise ImageTooLarge(f"an animation may have at most {MAX_FRAMES} frames")
    if frames * width * height > max_pixels * ANIMATION_PIXEL_FACTOR:
        raise ImageTooLarge(
            f"an animation's frames may hold at most {max_pixels * ANIMATION_PIXEL_FACTOR} "
            f"pixels together, not {frames}x{width}x{height}"
        )


def _strip(source: Path, content_type: str, out: Path) -> bool | None:
    """Write the original without metadata to `out`; whether it had any. None: its
    layout is not one the lossless strippers follow."""
    try:
        with source.open("rb") as src, out.open("wb") as dst:
            return _STRIP[content_type](src, dst)
    except ImageTooLarge:
        raise
    except ValueError as exc:
        log.debug("image layout not followed type=%s error=%s", content_type, exc)
        return None


def _decode(image: Image.Image, content_type: str, upright: Any, thumbnail_size: int) -> bool:
    """Decode the (first frame of the) image; whether its bytes are the image they claim."""
    try:
        if content_type == "image/jpeg" and upright is None:
            # Decode at the smallest scale that still covers the thumbnail: less memory
            # and time, and every byte of the scan is still read and checked.
            image.draft("RGB", (thumbnail_size, thumbnail_size))
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except Exception as exc:  # Pillow raises many kinds for bytes that are not an image
        log.debug("image does not decode type=%s error=%s", content_type, type(exc).__name__)
        return False
    return True


def _reencode(turned: Image.Image, info: Mapping[Any, Any], content_type: str, out: Path) -> None:
    icc = info.get("icc_profile")
    options: dict[str, Any] = {"icc_profile": icc} if icc else {}
    # Nothing of the original's info (EXIF, XMP, text, comments) rides along.
    turned.info = {k: v for k, v in info.items() if k == "transparency"}
    if content_type == "image/jpeg":
        turned.save(out, "JPEG", quality=95, subsampling=0, **options)
    elif content_type == "image/png":
        turned.save(out, "PNG", **options)
    elif content_type == "image/gif":
        turned.save(out, "GIF")
    else:
        turned.save(out, "WEBP", quality=95, method=4, **options)


# Modes Pillow resamples as they are; any other (palette, 1-bit) is converted first.
_RESAMPLED = {"L", "LA", "RGB", "RGBA", "CMYK"}


def make_thumbnail(
    image: Image.Image, size: int, upright: Image.Transpose | None = None
) -> tuple[bytes, str, int, int]:
    """The image shrunk to fit a size x size square (never enlarged) and turned
    `upright`: its bytes, type (image/jpeg when opaque, image/png when any pixel is
    transparent), width, height. The image is shrunk before it is converted or turned,
    so no second copy of its full size is ever made."""
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    mode = "RGBA" if transparent else "RGB"
    width, height = image.size
    scale = min(size / width, size / height, 1.0)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = image
    if small.mode not in _RESAMPLED:
        if scale < 0.5:
            # Every other pixel or so first (the palette kept), so what is converted is
            # small; the filter below then smooths it.
            step = (min(width, target[0] * 2), min(height, target[1] * 2))
            small = small.resize(step, Image.Resampling.NEAREST)
        small = small.convert(mode)
    factor = int(min(small.width / target[0], small.height / target[1]) / 3)
    if factor >= 2:
        small = _reduce_in_bands(small, factor)
    if small.size != target:
        small = small.resize(target, Image.Resampling.LANCZOS)
    if small.mode != mode:
        small = small.convert(mode)
    if upright is not None:
        small = small.transpose(upright)
    if transparent and small.getchannel("A").getextrema() == (255, 255):
        small, transparent = small.convert("RGB"), False
    out = io.BytesIO()
    if transparent:
        small.save(out, "PNG", optimize=True)
        kind = "image/png"
    else:
        small.save(out, "JPEG", quality=82, optimize=True)
        kind = "image/jpeg"
    return out.getvalue(), kind, small.width, small.height


def _reduce_in_bands(image: Image.Image, factor: int) -> Image.Image:
    """The image's size divided by `factor` (each pixel the mean of its box), made a band
    of rows at a time: Pillow's own reduce (and resize) of an image with alpha first
    makes a premultiplied copy of the whole of it."""
    width, height = image.size
    rows = factor * 64
    small = Image.new(image.mode, (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(top + rows, height)))
        small.paste(band.reduce(factor), (0, top // factor))
    return small


# -- what decoding would cost, read from the structure -------------------------------


def count_jpeg_scans(path: Path, limit: int) -> int:
    """The SOS markers (0xFFDA) in a JPEG, counted up to `limit` + 1. Compressed data
    never holds 0xFF but before 0x00 or a restart marker, so each one is a real scan
    start (or one of an embedded EXIF thumbnail's: counting them too errs on the safe
    side)."""
    scans = 0
    carry = b""
    with path.open("rb") as src:
        while chunk := src.read(READ_CHUNK):
            data = carry + chunk
            scans += data.count(b"\xff\xda")
            if scans > limit:
                break
            # A 0xFF at the end may be the first half of a marker.
            carry = b"\xff" if data.endswith(b"\xff") else b""
    return scans


def png_frames(path: Path) -> int:
    """The frame control (fcTL) chunks of a PNG, walking its chunk headers only."""
    frames = 0
    with path.open("rb") as src:
        src.seek(len(_PNG_SIGNATURE))
        while len(header := src.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind == b"fcTL":
                frames += 1
                if frames > MAX_FRAMES:
                    break
            if kind == b"IEND":
                break
            src.seek(length + 4, io.SEEK_CUR)
    return frames


# -- lossless removal of metadata ----------------------------------------------------


def strip_jpeg(src: IO[bytes], dst: IO[bytes]) -> bool:
    """Copy a JPEG without its APP1 (EXIF, XMP), APP13 (IPTC), COM segments, MPF index
    and whatever follows its end (a second picture, a video); whether any was dropped.
    The compressed scans are copied byte for byte."""
    if src.read(2) != b"\xff\xd8":
        raise ValueError("not a JPEG")
    dst.write(b"\xff\xd8")
    dropped = False
    while True:
        byte = src.read(1)
        while byte == b"\xff":  # fill bytes before a marker
            marker = src.read(1)
            if marker != b"\xff":
                break
        else:
            raise ValueError("JPEG segment without a marker")
        if not marker:
            raise ValueError("JPEG ends before its scan")
        code = marker[0]
        if code == 0xD9:  # EOI with no scan: nothing more to keep
            dst.write(b"\xff\xd9")
            return dropped or bool(src.read(1))
        if 0xD0 <= code <= 0xD7 or code == 0x01:
            dst.write(b"\xff" + marker)
            continue
        length_bytes = src.read(2)
        if len(length_bytes) != 2:
            raise ValueError("JPEG segment cut short")
        (length,) = struct.unpack(">H", length_bytes)
        payload = src.read(length - 2)
        if len(payload) != length - 2:
            raise ValueError("JPEG segment cut short")
        if code in (0xE1, 0xED, 0xFE) or (code == 0xE2 and payload.startswith(b"MPF\x00")):
            dropped = True
            continue
        dst.write(b"\xff" + marker + length_bytes + payload)
        if code == 0xDA:  # start of scan: the rest up to EOI is image data
            return _copy_scans(src, dst) or dropped


def _copy_scans(src: IO[bytes], dst: IO[bytes]) -> bool:
    """Copy up to and including EOI (0xFFD9, which compressed data never holds);
    whether anything followed it."""
    carry = b""
    while chunk := src.read(READ_CHUNK):
        data = carry + chunk
        end = data.find(b"\xff\xd9")
        if end >= 0:
            dst.write(data[: end + 2])
            return end + 2 < len(data) or bool(src.read(1))
        # A 0xFF at the end may be the first half of EOI.
        carry = data[-1:] if data.endswith(b"\xff") else b""
        dst.write(data[: len(data) - len(carry)])
    dst.write(carry)
    return False


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DROPPED = {b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"}


def strip_png(src: IO[bytes], dst: IO[bytes]) -> bool:
    """Copy a PNG (or APNG, every frame) without its EXIF, text (XMP lives in iTXt) and
    time chunks, and without anything after IEND; whether any was dropped."""
    if src.read(8) != _PNG_SIGNATURE:
        raise ValueError("not a PNG")
    dst.write(_PNG_SIGNATURE)
    dropped = False
    while True:
        header = src.read(8)
        if len(header) != 8:
            raise ValueError("PNG cut short")
        length, kind = struct.unpack(">I4s", header)
        if kind in _PNG_DROPPED:
            src.seek(length + 4, io.SEEK_CUR)  # data and CRC
            dropped = True
            continue
        dst.write(header)
        _copy_exactly(src, dst, length + 4)
        if kind == b"IEND":
            return dropped or bool(src.read(1))


def strip_webp(src: IO[bytes], dst: IO[bytes]) -> bool:
    """Copy a WebP (animated too) without its EXIF and XMP chunks, their flags cleared
    in VP8X and the RIFF size made right; whether any was dropped."""
    riff = src.read(12)
    if len(riff) != 12 or riff[:4] != b"RIFF" or riff[8:] != b"WEBP":
        raise ValueError("not a WebP")
    (declared,) = struct.unpack("<I", riff[4:8])
    dst.write(riff)
    remaining = declared - 4  # the chunks after "WEBP"; anything past them is dropped
    written = 4
    dropped = False
    while remaining >= 8:
        header = src.read(8)
        if len(header) != 8:
            raise ValueError("WebP cut short")
        fourcc, size = struct.unpack("<4sI", header)
        padded = size + (size & 1)
        remaining -= 8 + padded
        if fourcc in (b"EXIF", b"XMP "):
            src.seek(padded, io.SEEK_CUR)
            dropped = True
            continue
        if fourcc == b"VP8X":
            payload = bytearray(src.read(padded))
            if len(payload) != padded or size < 1:
                raise ValueError("WebP cut short")
            payload[0] &= ~0x0C & 0xFF  # the EXIF (0x08) and XMP (0x04) flags
            dst.write(header + payload)
        else:
            dst.write(header)
            _copy_exactly(src, dst, padded)
        written += 8 + padded
    dst.seek(4)
    dst.write(struct.pack("<I", written))
    dst.seek(0, io.SEEK_END)
    return dropped or written != declared or bool(src.read(1))


def _copy_exactly(src: IO[bytes], dst: IO[bytes], n: int) -> None:
    while n > 0:
        chunk = src.read(min(READ_CHUNK, n))
        if not chunk:
            raise ValueError("file cut short")
        dst.write(chunk)
        n -= len(chunk)


# GIF application extensions a viewer needs (the loop count); any other (XMP, a
# maker's data) and every comment goes.
_GIF_APPLICATIONS_KEPT = {b"NETSCAPE2.0", b"ANIMEXTS1.0"}


@dataclass(frozen=True, slots=True)
class GifLayout:
    frames: int
    width: int  # the canvas, grown to hold every frame (as Pillow grows it)
    height: int
    dropped: bool  # comments, application extensions or bytes after the trailer


def strip_gif(src: IO[bytes], dst: IO[bytes]) -> bool:
    """Copy a GIF (every frame) without its comments and application extensions other
    than the loop count's, and without anything after its trailer; whether any was
    dropped. Image data is copied byte for byte."""
    return walk_gif(src, dst).dropped


def walk_gif(src: IO[bytes], dst: IO[bytes] | None) -> GifLayout:
    """Walk a GIF's blocks, copying what is kept to `dst` (None: only look).
    ImageTooLarge past MAX_FRAMES frames (the walk stops there); ValueError for a
    layout that is not a GIF's."""
    write = dst.write if dst is not None else None
    header = _read_exactly(src, 13)
    if header[:6] not in (b"GIF87a", b"GIF89a"):
        raise ValueError("not a GIF")
    width, height, packed = struct.unpack("<HHB", header[6:11])
    kept = [header]
    if packed & 0x80:  # the global colour table
        kept.append(_read_exactly(src, 3 << ((packed & 7) + 1)))
    frames = 0
    dropped = False
    while True:
        if write is not None:
            write(b"".join(kept))
        kept = []
        intro = src.read(1)
        if intro == b";":  # the trailer
            if write is not None:
                write(intro)
            return GifLayout(frames, width, height, dropped or bool(src.read(1)))
        if intro == b",":  # an image: its descriptor, colour table, LZW size, data
            descriptor = _read_exactly(src, 9)
            left, top, frame_width, frame_height, flags = struct.unpack("<HHHHB", descriptor)
            frames += 1
            if frames > MAX_FRAMES:
                raise ImageTooLarge(f"an animation may have at most {MAX_FRAMES} frames")
            width, height = max(width, left + frame_width), max(height, top + frame_height)
            kept.append(intro + descriptor)
            if flags & 0x80:
                kept.append(_read_exactly(src, 3 << ((flags & 7) + 1)))
            kept.append(_read_exactly(src, 1))
            if write is not None:
                write(b"".join(kept))
            kept = []
            _gif_sub_blocks(src, write)
        elif intro == b"!":  # an extension
            label = _read_exactly(src, 1)
            if label == b"\xff":
                size = _read_exactly(src, 1)
                identifier = _read_exactly(src, size[0])
                if size[0] == 0:  # no identifier and already at its end
                    dropped = True
                elif identifier in _GIF_APPLICATIONS_KEPT:
                    if write is not None:
                        write(intro + label + size + identifier)
                    _gif_sub_blocks(src, write)
                else:
                    _gif_sub_blocks(src, None)
                    dropped = True
            elif label == b"\xfe":  # a comment
                _gif_sub_blocks(src, None)
                dropped = True
            else:  # graphic control (delay, transparency), plain text
                if write is not None:
                    write(intro + label)
                _gif_sub_blocks(src, write)
        else:
            raise ValueError("GIF block of unknown kind" if intro else "GIF cut short")


def _gif_sub_blocks(src: IO[bytes], write: Any) -> None:
    """Copy (or skip, when `write` is None) data sub-blocks up to their terminator."""
    while True:
        size = _read_exactly(src, 1)
        block = _read_exactly(src, size[0]) if size[0] else b""
        if write is not None:
            write(size + block)
        if not size[0]:
            return


def _read_exactly(src: IO[bytes], n: int) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise ValueError("file cut short")
    return data


_STRIP = {
    "image/jpeg": strip_jpeg,
    "image/png": strip_png,
    "image/webp": strip_webp,
    "image/gif": strip_gif,
}


# -- on the event loop: storage in, worker thread, storage out ------------------------


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="images")


async def store_image(
    storage: Storage, key: str, content_type: str, settings: Settings, upload_id: str
) -> StoredImage | None:
    """Process the image just stored under `key`: store its thumbnail, replace the
    original by a copy without metadata when it has any. None: the bytes are not an
    image (keep them as a plain file). Raises ImageTooLarge for a bomb and
    ImageUnprocessable for an image that could not be cleaned; the caller removes the
    original then, as for any error."""
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="image-") as tmp:
        folder = Path(tmp)
        source = folder / "source"
        if isinstance(storage, LocalStorage):
            source = storage.path(key)
        else:
            await _download(storage, key, source)
        out = folder / "clean"
        processed = await loop.run_in_executor(
            _pool(settings.image_workers),
            process,
            source,
            content_type,
            out,
            settings.max_image_pixels,
            settings.thumbnail_size,
        )
        if processed is None:
            log.info("image does not decode, kept as a plain file id=%s", upload_id)
            return None
        thumbnail_key = thumbnail_key_for(key, processed.thumbnail_type)
        await storage.put(thumbnail_key, _one(processed.thumbnail))
        size = None
        try:
            if processed.cleaned:
                size = await storage.put(key, _file_chunks(out))
        except BaseException:
            with contextlib.suppress(Exception):
                await storage.delete(thumbnail_key)
            raise
    log.info(
        "image processed id=%s size=%sx%s animated=%s cleaned=%s",
        upload_id,
        processed.width,
        processed.height,
        processed.animated,
        processed.cleaned,
    )
    return StoredImage(
        processed.width,
        processed.height,
        processed.animated,
        size,
        thumbnail_key,
        processed.thumbnail_width,
        processed.thumbnail_height,
    )


async def thumbnail_bytes(storage: Storage, thumbnail_key: str | None) -> bytes | None:
    """A stored thumbnail's bytes (at most MAX_THUMBNAIL_BYTES); None: there is none."""
    if thumbnail_key is None:
        return None
    try:
        chunks = await storage.open(thumbnail_key, 0, MAX_THUMBNAIL_BYTES)
    except ObjectMissing:
        return None
    return b"".join([chunk async for chunk in chunks])


async def thumbnail_url(
    storage: Storage, thumbnail_key: str | None, name: str, expires_seconds: int
) -> str | None:
    """A presigned URL of the thumbnail, valid `expires_seconds`; None when the store
    offers none (the local folder) or there is no thumbnail."""
    if thumbnail_key is None or expires_seconds <= 0:
        return None
    return await storage.presigned_url(
        thumbnail_key, name, thumbnail_type(thumbnail_key), expires_seconds
    )


async def _download(storage: Storage, key: str, path: Path) -> None:
    file = await asyncio.to_thread(path.open, "wb")
    try:
        async for chunk in await storage.open(key):
            await asyncio.to_thread(file.write, chunk)
    finally:
        await asyncio.to_thread(file.close)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    file = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(file.read, READ_CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(file.close)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
