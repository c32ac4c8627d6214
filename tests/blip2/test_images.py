"""Tests for blip2.images: real photographs and generated images, encoded by Pillow, decoded back.

Run: .venv/bin/pytest tests/blip2/test_images.py -q
"""

from __future__ import annotations

import io
import re
import struct
import threading
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from skimage import data as skdata

from blip2.errors import ImagePolyglot, ImageTooLarge, ImageTypeMismatch, InvalidImage, UnsupportedImageFormat
from blip2.images import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    ImageInfo,
    decode_image,
    decode_images,
    load_image_file,
    probe_image,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
EXIF_ORIENTATION = 0x0112


# --- helpers: build image bytes -------------------------------------------------------------------


def encode(image: Image.Image | np.ndarray, fmt: str, **options: object) -> bytes:
    """Encode an image (or an HxW[xC] uint8 array) with Pillow, as an upload would arrive."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def mean_abs_diff(image: Image.Image, expected: np.ndarray) -> float:
    return float(np.abs(np.asarray(image, dtype=np.int16) - expected.astype(np.int16)).mean())


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def black_png(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A 1-bit greyscale all-black PNG, written by hand so a 400M-pixel bomb costs kilobytes of memory.

    `rows` is how many rows of pixel data to include: a header that is fine followed by a
    compressed stream cut off after that many rows, as a truncated upload would be.
    """
    row = bytes(1 + (width + 7) // 8)  # filter type 0, then the packed (all-zero) bits
    compressor = zlib.compressobj(9)
    count = height if rows is None else rows
    # A cut-off stream is flushed without its end marker: Pillow takes a stream that ends
    # cleanly as complete and leaves the missing rows black.
    flush_mode = zlib.Z_FINISH if rows is None else zlib.Z_SYNC_FLUSH
    idat = b"".join(compressor.compress(row) for _ in range(count)) + compressor.flush(flush_mode)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def quadrant_image(width: int, height: int) -> Image.Image:
    """Blue, with a red block in the top-left corner: shows where each corner ends up."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[...] = BLUE
    pixels[: height // 2, : width // 2] = RED
    return Image.fromarray(pixels)


def near(pixel: object, expected: tuple[int, ...], tolerance: int = 12) -> bool:
    """Whether a `getpixel` result is within `tolerance` of `expected` in every channel (JPEG is lossy)."""
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()  # 512x512 RGB photograph


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return skdata.chelsea()  # 451x300 RGB photograph (a cat)


# --- real photographs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "options"), [("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {})], ids=["png", "webp", "bmp"]
)
def test_lossless_photo_decodes_to_the_exact_pixels(astronaut: np.ndarray, fmt: str, options: dict) -> None:
    image = decode_image(encode(astronaut, fmt, **options))

    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), astronaut)


def test_jpeg_photo_decodes_close_to_the_original() -> None:
    coffee = skdata.coffee()  # 600x400
    image = decode_image(encode(coffee, "JPEG", quality=95))

    assert (image.mode, image.size) == ("RGB", (600, 400))
    assert mean_abs_diff(image, coffee) < 3


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_probe_reports_size_and_format(chelsea: np.ndarray, fmt: str) -> None:
    assert probe_image(encode(chelsea, fmt)) == ImageInfo(width=451, height=300, format=fmt.lower())


def test_mpo_phone_photo_is_accepted_and_its_first_picture_used(chelsea: np.ndarray) -> None:
    first, second = Image.fromarray(chelsea), Image.new("RGB", (451, 300), GREEN)
    data = encode(first, "MPO", save_all=True, append_images=[second])

    assert probe_image(data) == ImageInfo(width=451, height=300, format="mpo")
    assert mean_abs_diff(decode_image(data), chelsea) < 5


def test_allow_list_excludes_tiff_and_includes_web_formats() -> None:
    assert {"JPEG", "PNG", "WEBP", "GIF", "BMP"} <= ALLOWED_FORMATS
    assert "TIFF" not in ALLOWED_FORMATS


# --- modes: transparency, palette, grey, CMYK, 16-bit ---------------------------------------------


def test_rgba_png_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((1, 0), (255, 0, 0, 255))  # opaque red
    rgba.putpixel((2, 0), (255, 0, 0, 128))  # half-transparent red

    image = decode_image(encode(rgba, "PNG"))

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 0)) == RED
    assert near(image.getpixel((2, 0)), (255, 127, 127), tolerance=1)


def test_grey_with_alpha_is_flattened_onto_white() -> None:
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (0, 0))  # transparent
    la.putpixel((1, 0), (40, 255))  # opaque dark grey

    image = decode_image(encode(la, "PNG"))

    assert [image.getpixel((x, 0)) for x in range(2)] == [WHITE, (40, 40, 40)]


def test_palette_png_with_transparent_index_is_flattened_onto_white() -> None:
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, *GREEN])  # index 0 black (to be transparent), index 1 green
    palette.putpixel((1, 1), 1)
    data = encode(palette, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"  # really stored as a palette image

    image = decode_image(data)

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 1)) == GREEN


def test_greyscale_jpeg_becomes_rgb_with_equal_channels(chelsea: np.ndarray) -> None:
    grey = Image.fromarray(chelsea).convert("L")
    image = decode_image(encode(grey, "JPEG", quality=95))

    pixels = np.asarray(image)
    assert image.mode == "RGB"
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    assert np.array_equal(pixels[..., 1], pixels[..., 2])
    assert mean_abs_diff(image.convert("L"), np.asarray(grey)) < 3


def test_cmyk_jpeg_becomes_rgb_with_the_same_colours(chelsea: np.ndarray) -> None:
    data = encode(Image.fromarray(chelsea).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"

    image = decode_image(data)

    assert image.mode == "RGB"
    assert mean_abs_diff(image, chelsea) < 5


def test_sixteen_bit_grey_png_keeps_its_tones() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))  # 256x4, black to white
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")

    pixels = np.asarray(decode_image(data))

    assert pixels.shape == (4, 256, 3)
    assert np.array_equal(pixels[0, :, 0], (ramp[0] >> 8).astype(np.uint8))  # not clipped to white


def test_one_bit_png_becomes_black_rgb() -> None:
    image = decode_image(black_png(300, 200))

    assert (image.mode, image.size) == ("RGB", (300, 200))
    assert image.getextrema() == ((0, 0), (0, 0), (0, 0))


# --- orientation and animation --------------------------------------------------------------------


def orientation_6_jpeg() -> bytes:
    """A 64x32 JPEG whose EXIF says "rotate 90 degrees clockwise to display" (orientation 6)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return encode(quadrant_image(64, 32), "JPEG", quality=95, exif=exif)


def test_exif_orientation_is_applied() -> None:
    image = decode_image(orientation_6_jpeg())

    # Rotating 90 degrees clockwise makes it 32 wide and 64 high and moves the stored
    # top-left corner (red) to the top-right.
    assert image.size == (32, 64)
    assert near(image.getpixel((31 - 4, 4)), RED)
    assert near(image.getpixel((4, 4)), BLUE)
    assert near(image.getpixel((31 - 4, 63 - 4)), BLUE)


def test_probe_reports_the_upright_size() -> None:
    assert probe_image(orientation_6_jpeg()) == ImageInfo(width=32, height=64, format="jpeg")


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_its_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (20, 10), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3

    image = decode_image(data)

    assert (image.mode, image.size) == ("RGB", (20, 10))
    assert near(image.getpixel((10, 5)), RED)


# --- broken and unwanted input --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("check", [decode_image, probe_image], ids=["decode", "probe"])
def test_truncated_file_is_rejected(astronaut: np.ndarray, fmt: str, check: Callable[[bytes], object]) -> None:
    data = encode(astronaut, fmt)

    with pytest.raises(InvalidImage) as caught:
        check(data[: len(data) // 2])

    assert type(caught.value) is InvalidImage
    assert "truncated or corrupt" in str(caught.value)


def test_random_bytes_are_rejected() -> None:
    garbage = np.random.default_rng(0).bytes(4096)

    with pytest.raises(InvalidImage, match="not an image"):
        decode_image(garbage)


def test_empty_bytes_are_rejected() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        probe_image(b"")


@pytest.mark.parametrize("fmt", ["PCX", "TGA", "PPM", "ICO", "TIFF"])
def test_valid_image_in_a_format_off_the_allow_list_is_unsupported(chelsea: np.ndarray, fmt: str) -> None:
    data = encode(Image.fromarray(chelsea).resize((64, 48)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself reads it fine

    with pytest.raises(UnsupportedImageFormat, match=f"image format {fmt} is not supported") as caught:
        decode_image(data)

    assert caught.value.code == "unsupported_image_format"


# --- size limits and decompression bombs ----------------------------------------------------------


def test_decompression_bomb_is_rejected() -> None:
    bomb = black_png(20_000, 20_000)  # 400M pixels, a valid PNG
    assert len(bomb) < 100_000

    with pytest.raises(ImageTooLarge, match="decompression-bomb limit") as caught:
        decode_image(bomb)

    assert caught.value.code == "image_too_large"


def test_pillow_bomb_warning_becomes_an_error_and_leaks_nothing() -> None:
    # 100M pixels: over Pillow's warning threshold (~89M) but under its error threshold (~179M).
    data = black_png(10_000, 10_000, rows=1)
    filters_before = list(warnings.filters)

    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLarge):
            probe_image(data)

    assert not [w for w in caught_warnings if issubclass(w.category, Image.DecompressionBombWarning)]
    assert warnings.filters == filters_before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_size_is_checked_before_any_pixel_data_is_decoded() -> None:
    # 49M pixels with only one row of pixel data: decoding it would fail as truncated, so an
    # ImageTooLarge (and not the truncation error) shows the header check came first.
    data = black_png(7_000, 7_000, rows=1)

    with pytest.raises(ImageTooLarge) as caught:
        decode_image(data)
    assert str(caught.value) == "image is 7000x7000 = 49000000 pixels, over the limit of 40000000"

    with pytest.raises(InvalidImage, match="truncated or corrupt") as caught_with_room:
        decode_image(data, max_pixels=50_000_000)
    assert type(caught_with_room.value) is InvalidImage


def test_custom_max_pixels_is_honoured_to_the_pixel(astronaut: np.ndarray) -> None:
    data = encode(astronaut, "PNG")  # 512x512 = 262144 pixels

    assert decode_image(data, max_pixels=262_144).size == (512, 512)
    with pytest.raises(ImageTooLarge, match="512x512 = 262144 pixels, over the limit of 262143"):
        decode_image(data, max_pixels=262_143)
    with pytest.raises(ImageTooLarge):
        probe_image(data, max_pixels=262_143)


def test_default_limit_fits_a_24_megapixel_photo_and_sits_below_pillows_limit() -> None:
    assert Image.MAX_IMAGE_PIXELS is not None
    assert 6000 * 4000 <= DEFAULT_MAX_PIXELS < Image.MAX_IMAGE_PIXELS


def test_concurrent_decoding_leaves_warning_filters_as_they_were() -> None:
    data = black_png(10_000, 10_000, rows=1)  # trips Pillow's bomb warning on every open
    filters_before = list(warnings.filters)
    outcomes: list[type[Exception]] = []

    def worker() -> None:
        for _ in range(25):
            try:
                decode_image(data)
            except InvalidImage as exc:
                outcomes.append(type(exc))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes == [ImageTooLarge] * 200
    assert warnings.filters == filters_before


# --- several images, and files --------------------------------------------------------------------


def test_decode_images_decodes_each(astronaut: np.ndarray, chelsea: np.ndarray) -> None:
    images = decode_images([encode(astronaut, "PNG"), encode(chelsea, "JPEG")])

    assert [(image.mode, image.size) for image in images] == [("RGB", (512, 512)), ("RGB", (451, 300))]


def test_decode_images_names_the_bad_index(astronaut: np.ndarray) -> None:
    good = encode(astronaut, "PNG")

    with pytest.raises(InvalidImage, match=r"^image 2: data is not an image"):
        decode_images([good, good, b"not an image at all", good])


def test_decode_images_keeps_the_kind_of_error(astronaut: np.ndarray) -> None:
    good, pcx = encode(astronaut, "PNG"), encode(astronaut, "PCX")

    with pytest.raises(UnsupportedImageFormat, match=r"^image 1: image format PCX"):
        decode_images([good, pcx])


def test_load_image_file_reads_and_decodes(tmp_path: Path, chelsea: np.ndarray) -> None:
    path = tmp_path / "cat.jpg"
    path.write_bytes(encode(chelsea, "JPEG", quality=95))

    image = load_image_file(path)

    assert (image.mode, image.size) == ("RGB", (451, 300))
    assert mean_abs_diff(image, chelsea) < 3


def test_load_image_file_names_a_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.png"

    with pytest.raises(InvalidImage, match=f"no image file at {missing}"):
        load_image_file(str(missing))


def test_load_image_file_names_the_path_of_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"  # the name says PNG; the bytes are not
    path.write_bytes(b"GIF89a but not really")

    with pytest.raises(InvalidImage, match=f"^{path}: ") as caught:
        load_image_file(path)

    assert caught.value.code == "invalid_image"


def test_load_image_file_rejects_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="cannot read image file"):
        load_image_file(tmp_path)


# --- polyglots and claimed types (probe_image, the gate before bytes are stored) ------------------


def zip_archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return buffer.getvalue()


def with_png_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """`png` with one more chunk just before IEND (the last 12 bytes): inside the image's structure."""
    return png[:-12] + _png_chunk(kind, body) + png[-12:]


PHP = b"<?php system($_GET['c']); ?>"
JS = b"*/=1;alert(document.domain);"
ZIP = zip_archive({"a.jsp": b"<% out.println(1); %>"})
RAR = b"Rar!\x1a\x07\x01\x00"


@pytest.fixture(scope="module")
def chelsea_jpeg(chelsea: np.ndarray) -> bytes:
    return encode(chelsea, "JPEG", quality=90)


# Real polyglot files, made from a photo: case -> (how to build it, what the refusal says).
POLYGLOTS: dict[str, tuple[Callable[[np.ndarray], bytes], str]] = {
    "png + zip": (lambda c: encode(c, "PNG") + ZIP, "follow the end of the PNG"),
    "zip in a png chunk": (lambda c: with_png_chunk(encode(c, "PNG"), b"zIPp", ZIP), "a ZIP archive"),
    "rar in a png chunk": (lambda c: with_png_chunk(encode(c, "PNG"), b"raRr", RAR), "a RAR archive"),
    "gif + javascript": (lambda c: encode(c, "GIF") + JS, "follow the end of the GIF"),
    "gif comment with script": (lambda c: encode(c, "GIF", comment=b"<script>alert(1)</script>"), "<script>"),
    "jpeg + php": (lambda c: encode(c, "JPEG") + PHP, "follow the end of the JPEG"),
    "jpeg comment with php": (lambda c: encode(c, "JPEG", comment=PHP), "<?php"),
    "jpeg comment with html": (lambda c: encode(c, "JPEG", comment=b"<HTML><body>hi"), "<HTML>"),
    "jpeg comment with pdf": (lambda c: encode(c, "JPEG", comment=b"%PDF-1.7 ..."), "a PDF document"),
    "webp + zip": (lambda c: encode(c, "WEBP") + ZIP, "follow the end of the WEBP"),
    "bmp + php": (lambda c: encode(c, "BMP") + PHP, "follow the end of the BMP"),
}


@pytest.mark.parametrize("case", sorted(POLYGLOTS))
def test_polyglot_is_refused(chelsea: np.ndarray, case: str) -> None:
    build, says = POLYGLOTS[case]
    data = build(chelsea)
    decode_image(data)  # every one of them is a valid image: only the bytes around it give it away

    with pytest.raises(ImagePolyglot, match=re.escape(says)) as caught:
        probe_image(data)

    assert caught.value.code == "image_polyglot"
    assert isinstance(caught.value, UnsupportedImageFormat)  # so the HTTP edge answers 415


@pytest.mark.parametrize(
    "padding", [b"\x00" * 4, b"\x00" * 1000, b"\xff\xff", b"\r\n"], ids=["4 zeros", "1000 zeros", "ff", "crlf"]
)
def test_jpeg_with_camera_padding_after_its_end_is_accepted(chelsea_jpeg: bytes, padding: bytes) -> None:
    assert probe_image(chelsea_jpeg + padding) == ImageInfo(width=451, height=300, format="jpeg")


def test_end_marker_inside_a_segment_does_not_end_the_jpeg_early(chelsea: np.ndarray) -> None:
    # A comment holding an EOI marker and more: only a walk of the segments knows it is not the end.
    data = encode(chelsea, "JPEG", comment=b"\xff\xd9 not the end \xff\xd8")

    assert probe_image(data).format == "jpeg"
    with pytest.raises(ImagePolyglot):
        probe_image(data + b"trailing payload")


@pytest.mark.parametrize(
    "options", [{"progressive": True}, {"restart_marker_blocks": 1}, {"subsampling": 0, "quality": 100}]
)
def test_jpeg_variants_walk_to_their_real_end(chelsea: np.ndarray, options: dict) -> None:
    data = encode(chelsea, "JPEG", **options)

    assert probe_image(data).format == "jpeg"
    with pytest.raises(ImagePolyglot, match="5 bytes follow"):
        probe_image(data + b"<x/>!")


def test_real_photos_pass_in_every_allowed_format(photos: dict[str, Image.Image]) -> None:
    for name, photo in photos.items():
        for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP"):
            assert probe_image(encode(photo, fmt)).format == fmt.lower(), (name, fmt)


def test_animated_gif_walks_every_frame(chelsea: np.ndarray) -> None:
    frames = [Image.fromarray(chelsea).resize((64, 48)), Image.new("RGB", (64, 48), GREEN)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], comment=b"made by a test")

    assert probe_image(data).format == "gif"
    with pytest.raises(ImagePolyglot):
        probe_image(data + JS)


@pytest.mark.parametrize(
    ("fmt", "claimed"),
    [
        ("PNG", "image/png"),
        ("PNG", "IMAGE/PNG; charset=binary"),
        ("JPEG", "image/jpeg"),
        ("JPEG", "image/jpg"),
        ("GIF", "image/gif"),
        ("WEBP", "image/webp"),
        ("BMP", "image/x-ms-bmp"),
        ("PNG", "application/octet-stream"),
        ("PNG", ""),
        ("PNG", None),
    ],
)
def test_a_claim_that_matches_the_bytes_or_claims_nothing_passes(
    chelsea: np.ndarray, fmt: str, claimed: str | None
) -> None:
    assert probe_image(encode(chelsea, fmt), claimed_type=claimed).format == fmt.lower()


def test_an_mpo_may_be_sent_as_a_jpeg(chelsea: np.ndarray) -> None:
    data = encode(Image.fromarray(chelsea), "MPO", save_all=True, append_images=[Image.new("RGB", (451, 300))])

    assert probe_image(data, claimed_type="image/jpeg").format == "mpo"


@pytest.mark.parametrize(
    ("fmt", "claimed"), [("PNG", "image/jpeg"), ("JPEG", "image/png"), ("GIF", "image/webp"), ("PNG", "text/html")]
)
def test_bytes_of_another_type_than_claimed_are_refused(chelsea: np.ndarray, fmt: str, claimed: str) -> None:
    with pytest.raises(ImageTypeMismatch, match=f"says it is {claimed} but its bytes are a {fmt} image") as caught:
        probe_image(encode(chelsea, fmt), claimed_type=claimed)

    assert caught.value.code == "image_type_mismatch"
    assert isinstance(caught.value, UnsupportedImageFormat)


def test_a_large_noisy_jpeg_passes_every_scan() -> None:
    # Pure noise compresses to bytes as random as image data gets: none of it may look like a payload.
    noise = np.random.default_rng(0).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    data = encode(noise, "JPEG", quality=100)
    assert len(data) > 5_000_000

    assert probe_image(data).format == "jpeg"
