"""Byte-level checks on an upload that decodes as an image: is it the type it claims, and only an image?

A polyglot is a file that is a valid image and also something else: a ZIP archive appended after
the PNG's last chunk, a PHP script after the JPEG's end, an HTML page in a GIF comment. An image
decoder never looks at those bytes, but a web server, a browser sniffing content or an unzip tool
reading the stored file would. So an upload is refused (`ImagePolyglot`) when

- anything but padding (zero bytes, 0xFF fill, whitespace) follows the image's own end: the JPEG
  EOI marker (after every picture of a multi-picture MPO), the PNG IEND chunk, the GIF trailer,
  the end of the WebP RIFF container, the BMP's declared file size; or
- it embeds markup or script (`<script`, `<html`, `<iframe`, `<object`, `<?php`), a ZIP end record
  where unzip tools look for one (the last 64 KiB), a PDF header where PDF readers look for one
  (the first KiB), or a RAR signature.

A phone's motion photo (a JPEG with the MP4 its metadata declares appended) is the one trailer
that is no polyglot: callers cut it to its JPEG first with `blip2.motion_photo.without_motion_video`.

The signatures are long enough that compressed pixel data matches one by chance about once in
a hundred thousand 20 MB uploads or less.

And when the upload declares a content type (a multipart part's `Content-Type`), the format read
from the bytes must be that type (`ImageTypeMismatch`); `application/octet-stream` or no type at
all claims nothing. Plain byte parsing: no PIL, no torch.
"""

import re
from collections.abc import Callable

from blip2.errors import ImagePolyglot, ImageTypeMismatch

# Content types that say nothing about the format.
_NO_CLAIM = frozenset({"", "application/octet-stream", "binary/octet-stream"})
# The Pillow formats each declared type may carry; MPO is a JPEG with extra pictures after the first.
_FORMATS_BY_TYPE: dict[str, frozenset[str]] = {
    "image/jpeg": frozenset({"JPEG", "MPO"}),
    "image/jpg": frozenset({"JPEG", "MPO"}),
    "image/pjpeg": frozenset({"JPEG", "MPO"}),
    "image/png": frozenset({"PNG"}),
    "image/x-png": frozenset({"PNG"}),
    "image/webp": frozenset({"WEBP"}),
    "image/gif": frozenset({"GIF"}),
    "image/bmp": frozenset({"BMP"}),
    "image/x-bmp": frozenset({"BMP"}),
    "image/x-ms-bmp": frozenset({"BMP"}),
}

# What may follow an image's end: cameras pad JPEGs with zero or 0xFF bytes, and editors end files
# with a newline.
_PADDING = b"\x00\xff \t\r\n"
# Tags a browser would render or a PHP interpreter run, followed by what must come after the name.
_MARKUP = re.compile(rb"<(?:script|html|iframe|object)[\s/>]|<\?php\s", re.IGNORECASE)
# A ZIP end-of-central-directory record of a single-disk archive (disk numbers 0, as many entries on
# this disk as in all): unzip tools search for it in the last 22 + 65535 bytes of a file.
_ZIP_END = re.compile(rb"PK\x05\x06\x00\x00\x00\x00(..)\1", re.DOTALL)
_ZIP_SEARCH_BYTES = 22 + 65535
# PDF readers accept `%PDF-` anywhere in the first KiB; RAR tools search a whole file for their mark.
_PDF_HEADER, _PDF_SEARCH_BYTES = b"%PDF-", 1024
_RAR_SIGNATURE = b"Rar!\x1a\x07"
# A JPEG marker: 0xFF then anything but a stuffed zero, a restart marker or more 0xFF fill.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Another JPEG's start of image, perhaps after zero padding: the next picture of an MPO.
_NEXT_JPEG = re.compile(rb"\x00*\xff\xd8")


def check_claimed_type(image_format: str, claimed_type: str | None) -> None:
    """Raise `ImageTypeMismatch` if `claimed_type` names another type than `image_format` (Pillow's name)."""
    claimed = (claimed_type or "").split(";")[0].strip().lower()
    if claimed in _NO_CLAIM or image_format in _FORMATS_BY_TYPE.get(claimed, frozenset()):
        return
    raise ImageTypeMismatch(f"the upload says it is {claimed} but its bytes are a {image_format} image")


def check_not_polyglot(data: bytes, image_format: str) -> None:
    """Raise `ImagePolyglot` if `data`, an image in `image_format`, is also something else."""
    end = _IMAGE_END[image_format](data) if image_format in _IMAGE_END else len(data)
    trailing = data[end:]
    if not is_padding(trailing):
        raise ImagePolyglot(
            f"{len(trailing)} bytes follow the end of the {image_format} image; "
            "send the image alone, without data appended to it"
        )
    found = _embedded_payload(data)
    if found is not None:
        raise ImagePolyglot(f"the {image_format} image also carries {found}; refusing a file that is two things")


def is_padding(data: bytes) -> bool:
    """True for bytes that may follow an image's end: nothing, or only zeros, 0xFF fill and whitespace."""
    return not data.strip(_PADDING)


def _embedded_payload(data: bytes) -> str | None:
    """What besides an image `data` holds where another program would find it, or None."""
    if markup := _MARKUP.search(data):
        tag = markup.group().decode("ascii", "replace").strip()
        return f"markup or script ({tag!r} at byte {markup.start()})"
    if _ZIP_END.search(data, max(0, len(data) - _ZIP_SEARCH_BYTES)):
        return "a ZIP archive"
    if _PDF_HEADER in data[:_PDF_SEARCH_BYTES]:
        return "a PDF document"
    if _RAR_SIGNATURE in data:
        return "a RAR archive"
    return None


# ---- where each format's image ends -----------------------------------------------------------
# Each walks the format's own structure, never searching for an end marker (a payload can contain
# one). A structure that runs out before its end means a truncated file, which the decoder judges,
# so the walk then answers the data's length: nothing trails.


def jpeg_end(data: bytes) -> int:
    """After the EOI of the last of the JPEGs that follow one another (an MPO holds several)."""
    end = _onejpeg_end(data, 0)
    while (following := _NEXT_JPEG.match(data, end)) is not None:
        end = _onejpeg_end(data, following.end() - 2)
    return end


def _onejpeg_end(data: bytes, start: int) -> int:
    pos = start + 2  # past SOI
    while pos + 2 <= len(data):
        if data[pos] != 0xFF:
            pos = _next_jpeg_marker(data, pos)  # stray bytes: the decoder, too, skips to the next marker
            continue
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            return pos + 2
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill, restart, TEM: no length
            pos += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return len(data)
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next real marker
            pos = _next_jpeg_marker(data, pos)
    return len(data)


def _next_jpeg_marker(data: bytes, pos: int) -> int:
    found = _JPEG_MARKER.search(data, pos)
    return found.start() if found else len(data)


def _png_end(data: bytes) -> int:
    """After the IEND chunk (each chunk: length, type, data, CRC)."""
    pos = 8  # past the signature
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        pos += 12 + length
        if kind == b"IEND":
            return pos
    return len(data)


def _gif_end(data: bytes) -> int:
    """After the trailer byte `;` that follows the last extension and image block."""
    pos = 13 + _gif_color_table_size(data[10])  # header, logical screen descriptor, global colours
    while pos < len(data):
        block = data[pos]
        if block == 0x3B:  # trailer
            return pos + 1
        if block == 0x21:  # extension: label, then data sub-blocks
            pos = _skip_gif_sub_blocks(data, pos + 2)
        elif block == 0x2C and pos + 10 <= len(data):  # image: descriptor, local colours, LZW code size
            pos = _skip_gif_sub_blocks(data, pos + 10 + _gif_color_table_size(data[pos + 9]) + 1)
        else:
            return pos  # not a GIF block: whatever this is, it is not part of the image
    return len(data)


def _gif_color_table_size(flags: int) -> int:
    return 3 * 2 ** ((flags & 0x07) + 1) if flags & 0x80 else 0


def _skip_gif_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos]:
        pos += 1 + data[pos]
    return pos + 1


def _riff_end(data: bytes) -> int:
    """WebP: the RIFF container's size field counts everything after its first 8 bytes."""
    return min(len(data), 8 + int.from_bytes(data[4:8], "little"))


def _bmp_end(data: bytes) -> int:
    """The file size a BMP declares in its header; some writers leave it 0, and then nothing trails."""
    declared = int.from_bytes(data[2:6], "little")
    return declared if 0 < declared < len(data) else len(data)


_IMAGE_END: dict[str, Callable[[bytes], int]] = {
    "JPEG": jpeg_end,
    "MPO": jpeg_end,
    "PNG": _png_end,
    "GIF": _gif_end,
    "WEBP": _riff_end,
    "BMP": _bmp_end,
}
