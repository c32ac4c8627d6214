"""Turn untrusted image bytes into RGB `PIL.Image` objects, or refuse them with a typed error.

Everything that accepts an image (the HTTP API validating an upload, the worker decoding it,
the CLI reading a file) goes through this module, so the rules live in one place:

- only formats on `ALLOWED_FORMATS`, judged from the bytes themselves, never from a file name;
- at most `max_pixels` pixels, checked from the header before any pixel data is decoded;
- truncated or corrupt files are rejected, never padded out with grey;
- before bytes are stored (`probe_image`), polyglots and bytes of another type than the client
  declared are refused too (`blip2.image_bytes`);
- the result is always upright (EXIF orientation applied) 8-bit RGB, transparency flattened
  onto white, and only the first frame of an animation.

This module imports PIL and numpy only, never torch: the API uses it without loading a model.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from blip2.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from blip2.image_bytes import check_claimed_type, check_not_polyglot

# What browsers, phones and cameras actually send. MPO is what Pillow calls a JPEG carrying an
# extra "multi-picture" segment (many phone photos do), so refusing it would refuse ordinary
# photographs. TIFF is left out on purpose: it is the largest and most bug-prone decoder in
# Pillow (libtiff, dozens of compressions, float and multi-page layouts) and no browser or
# phone produces it, so a client can convert it first.
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP"})

# About 6300x6300: larger than any phone or DSLR photo, yet a decoded RGB image of this size is
# 120 MB, and the model resizes to 224x224 anyway. It sits below Pillow's own bomb limit
# (~89M pixels), which stays in force as a hard ceiling however high a caller sets max_pixels.
DEFAULT_MAX_PIXELS: int = 40_000_000

# The exceptions Pillow's decoders raise for bad data (its own `Image.open` catches this same
# family); anything else is a bug or an out-of-memory, and should not be dressed up as bad input.
_BAD_DATA_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    zlib.error,
)

# EXIF orientations that rotate by 90 or 270 degrees, so width and height swap.
_SIDEWAYS_ORIENTATIONS = frozenset({5, 6, 7, 8})

# `warnings.catch_warnings` swaps the process-wide filter list and puts it back on exit. Two
# threads doing that at once can restore each other's filters and leave "bomb warnings are
# errors" switched on for the whole process, so the swap is serialised. Only `Image.open`
# (header parsing, microseconds) runs under the lock; pixel decoding runs outside it.
_WARNINGS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageInfo:
    """What `probe_image` learns: the size `decode_image` would return, and the format."""

    width: int
    height: int
    format: str  # Pillow's format name, lower-case: "jpeg", "mpo", "png", "webp", "gif", "bmp"


def probe_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, claimed_type: str | None = None) -> ImageInfo:
    """Check that `data` is an acceptable image to store and say what it is, raising `InvalidImage` if not.

    Format and size come from the header, so the cheap rejections cost nothing; the pixel data
    is then decoded once, because only a full decode finds a truncated or corrupt file. Being the
    gate before bytes are kept, it also refuses bytes that are not the `claimed_type` (a content
    type the client declared; None claims nothing) and polyglots (see `blip2.image_bytes`).
    """
    with _open_checked(data, max_pixels) as im:
        check_claimed_type(_format_name(im), claimed_type)
        check_not_polyglot(data, _format_name(im))
        _load(im)
        width, height = _upright_size(im)
        return ImageInfo(width=width, height=height, format=_format_name(im).lower())


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode untrusted bytes into an upright RGB image, raising `InvalidImage` (or a subclass).

    The format allow-list and the `max_pixels` limit are checked from the header before any
    pixel data is decoded; see the module docstring for the rest of the rules.
    """
    with _open_checked(data, max_pixels) as im:
        _load(im)
        with _bad_data_is_invalid("image could not be converted to RGB"):
            return _to_rgb(ImageOps.exif_transpose(im))


def decode_images(items: Sequence[bytes], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
    """Decode several images; an error names the 0-based index of the first bad one ("image 2: ...")."""
    images = []
    for index, data in enumerate(items):
        try:
            images.append(decode_image(data, max_pixels=max_pixels))
        except InvalidImage as exc:
            raise _with_prefix(exc, f"image {index}") from exc
    return images


def load_image_file(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read and decode an image file; every failure, a missing file included, is `InvalidImage`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise InvalidImage(f"no image file at {path}") from exc
    except OSError as exc:
        raise InvalidImage(f"cannot read image file {path}: {exc.strerror or exc}") from exc
    try:
        return decode_image(data, max_pixels=max_pixels)
    except InvalidImage as exc:
        raise _with_prefix(exc, str(path)) from exc


def _open_checked(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """Parse the header and apply the format and size rules; no pixel data is decoded yet."""
    if not data:
        raise InvalidImage("image is empty (0 bytes)")
    im = _open(data)
    try:
        _check_format(im)
        _check_size(im.size, max_pixels)
    except InvalidImage:
        im.close()
        raise
    return im


def _open(data: bytes) -> ImageFile.ImageFile:
    """`Image.open` with Pillow's decompression-bomb warning turned into an error."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Pillow does not say the dimensions, only that they are over its own limit.
            raise ImageTooLarge(
                f"image has more than {Image.MAX_IMAGE_PIXELS} pixels, Pillow's decompression-bomb limit"
            ) from exc
        except UnidentifiedImageError as exc:
            raise InvalidImage("data is not an image in any format Pillow recognises") from exc
        except _BAD_DATA_ERRORS as exc:
            raise InvalidImage(f"image header is corrupt ({exc})") from exc


def _check_format(im: Image.Image) -> None:
    fmt = _format_name(im)
    if fmt not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        raise UnsupportedImageFormat(f"image format {fmt} is not supported (allowed: {allowed})")


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    pixels = width * height
    if pixels > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {pixels} pixels, over the limit of {max_pixels}")
    if pixels == 0:
        raise InvalidImage(f"image is {width}x{height}, it has no pixels")


def _format_name(im: Image.Image) -> str:
    return im.format or "UNKNOWN"


def _load(im: Image.Image) -> None:
    """Decode the pixel data of the current (first) frame, rejecting truncated or corrupt files.

    One gap is Pillow's, not ours: a PNG whose compressed stream ends cleanly but early decodes,
    with the missing rows left black. A file cut off in transit has no clean end and is rejected.
    """
    # Pillow would accept a truncated file, padded with grey, only if ImageFile.LOAD_TRUNCATED_IMAGES
    # were set; it is a process-wide switch, so it is left at its default of False.
    with _bad_data_is_invalid("image data is truncated or corrupt"):
        im.load()


@contextmanager
def _bad_data_is_invalid(what: str) -> Iterator[None]:
    """Re-raise Pillow's bad-data exceptions as `InvalidImage("<what> (<Pillow's reason>)")`."""
    try:
        yield
    except _BAD_DATA_ERRORS as exc:
        raise InvalidImage(f"{what} ({exc})") from exc


def _upright_size(im: Image.Image) -> tuple[int, int]:
    """The size after EXIF orientation is applied, i.e. the size `decode_image` returns."""
    with _bad_data_is_invalid("image EXIF data is corrupt"):
        orientation = im.getexif().get(ExifTags.Base.Orientation)
    width, height = im.size
    return (height, width) if orientation in _SIDEWAYS_ORIENTATIONS else (width, height)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, transparency flattened onto white."""
    if im.mode.startswith("I"):
        im = _high_bit_depth_to_l(im)
    if im.has_transparency_data:
        return _flatten_onto_white(im.convert("RGBA"))
    return im if im.mode == "RGB" else im.convert("RGB")


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit grey (modes I;16*, and I from older 16-bit PNG readers) to 8-bit by keeping the high byte.

    Pillow's own I -> L conversion clips at 255, which would turn almost every pixel white.
    """
    pixels = np.asarray(im).astype(np.int64)
    return Image.fromarray((np.clip(pixels, 0, 65535) >> 8).astype(np.uint8))


def _flatten_onto_white(rgba: Image.Image) -> Image.Image:
    # White rather than black: it is what a viewer shows behind a transparent logo or sticker,
    # so the model sees what the person saw.
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _with_prefix(exc: InvalidImage, prefix: str) -> InvalidImage:
    """The same kind of error, its message prefixed with where it happened."""
    return type(exc)(f"{prefix}: {exc}")
