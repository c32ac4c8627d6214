"""Motion photos: a phone's JPEG with the short video recorded around the shot appended after it.

Pixel, Samsung and other Android phones save a "motion photo" as one file: the JPEG, then an MP4.
To every other program that file is a JPEG followed by foreign bytes, which is what a polyglot
looks like (`blip2.image_bytes`). So an upload keeps only its picture: `without_motion_video(data)`
is the JPEG alone, and the same photo with or without its video is one stored image.

A trailer is taken for a motion photo's video only where the phone's own metadata puts one, and
only if a well-formed MP4 (ISO base media file: boxes that exactly fill it, `ftyp` first, a `moov`)
is there:

- Google's Motion Photo: the JPEG's XMP says `Camera:MotionPhoto="1"` (or `GCamera:`) and its
  `Container:Directory` ends with a `MotionPhoto` item whose `Item:Length` is the video's length;
  the video ends the file;
- Google's older MicroVideo: `GCamera:MicroVideo="1"`, with `GCamera:MicroVideoOffset` the video's
  length from the end of the file;
- Samsung's trailer: a `MotionPhoto_Data` block holding the video, listed in the SEF directory
  (`SEFH` ... `SEFT`) that ends the file, its blocks filling the trailer.

Anything else after a JPEG (a ZIP, a script, a PDF, an MP4 no metadata declares, a broken one, or
bytes between the JPEG and its declared video) is left in place, for the polyglot check to refuse.
Plain byte parsing, as in `blip2.image_bytes`: no PIL, no XML parser.
"""

import re
from dataclasses import dataclass

from blip2.image_bytes import is_padding, jpeg_end

_SOI = b"\xff\xd8"
_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_MOTION_FLAG = re.compile(r"""\b(?:G?Camera):MotionPhoto\s*=\s*["']1["']|<G?Camera:MotionPhoto>\s*1\s*<""")
_MICRO_VIDEO_FLAG = re.compile(r"""\bGCamera:MicroVideo\s*=\s*["']1["']|<GCamera:MicroVideo>\s*1\s*<""")
_MICRO_VIDEO_OFFSET = re.compile(r"""\bGCamera:MicroVideoOffset\s*=\s*["'](\d{1,10})["']""")
_CONTAINER_ITEM = re.compile(r"<Container:Item\b([^>]*)>")
_ATTRIBUTE = re.compile(r"""([\w:]+)\s*=\s*["']([^"']*)["']""")
_BOX_TYPE = re.compile(rb"[\x20-\x7e]{4}")
_SAMSUNG_VIDEO = b"MotionPhoto_Data"


@dataclass(frozen=True)
class _Span:
    start: int
    stop: int


def without_motion_video(data: bytes) -> bytes:
    """`data` without its video if it is a motion photo (see the module docstring), else `data` itself."""
    if not data.startswith(_SOI):
        return data
    end = jpeg_end(data)
    if is_padding(data[end:]):
        return data  # nothing follows the picture
    if _google_video_fits(data, end) or _samsung_video_fits(data, end):
        return data[:end]
    return data


# ---- Google: the XMP says where the video is ----------------------------------------------------


def _google_video_fits(data: bytes, end: int) -> bool:
    """The XMP declares a video at the end of the file, and a well-formed MP4 is exactly there."""
    length = _declared_video_length(_xmp(data))
    if length is None or not 0 < length <= len(data) - end:
        return False
    start = len(data) - length
    return is_padding(data[end:start]) and is_mp4(data[start:])


def _declared_video_length(xmp: str) -> int | None:
    """The video's length that the XMP declares (Motion Photo or MicroVideo), or None."""
    if _MOTION_FLAG.search(xmp):
        items = [dict(_ATTRIBUTE.findall(attributes)) for attributes in _CONTAINER_ITEM.findall(xmp)]
        last = items[-1] if items else {}
        if last.get("Item:Semantic") == "MotionPhoto" and last.get("Item:Mime", "").startswith("video/"):
            return _as_int(last.get("Item:Length", ""))
    if _MICRO_VIDEO_FLAG.search(xmp) and (offset := _MICRO_VIDEO_OFFSET.search(xmp)):
        return int(offset.group(1))
    return None


def _xmp(data: bytes) -> str:
    """The JPEG's XMP packet (an APP1 segment before the image data), or '' when it has none."""
    pos = len(_SOI)
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no more metadata
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        payload = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and payload.startswith(_XMP_HEADER):
            return payload[len(_XMP_HEADER) :].decode("utf-8", "replace")
        pos += 2 + length
    return ""


# ---- Samsung: the SEF directory at the end of the file lists the blocks before it ---------------


@dataclass(frozen=True)
class _SefBlock:
    """One block of Samsung's trailer: type (4 bytes), name length, name, then its data."""

    span: _Span
    name: bytes
    data_start: int


def _samsung_video_fits(data: bytes, end: int) -> bool:
    """The trailer is Samsung's: blocks that fill it up to the SEF directory, one a well-formed MP4."""
    blocks = _sef_blocks(data, end)
    if blocks is None:
        return False
    videos = [block for block in blocks if block.name == _SAMSUNG_VIDEO]
    return len(videos) == 1 and is_mp4(data[videos[0].data_start : videos[0].span.stop])


def _sef_blocks(data: bytes, end: int) -> list[_SefBlock] | None:
    """The blocks the SEF directory lists, if the trailer after `end` is exactly those (and padding)."""
    if not data.endswith(b"SEFT") or len(data) - end < 8:
        return None
    directory_length = int.from_bytes(data[-8:-4], "little")
    directory = len(data) - 8 - directory_length
    if directory < end or data[directory : directory + 4] != b"SEFH" or directory_length < 12:
        return None
    count = int.from_bytes(data[directory + 8 : directory + 12], "little")
    if 12 + 12 * count != directory_length:
        return None
    blocks = [_sef_block(data, directory, directory + 12 + 12 * i) for i in range(count)]
    if None in blocks:
        return None
    found = sorted((block for block in blocks if block is not None), key=lambda block: block.span.start)
    return found if _fill(data, _Span(end, directory), [block.span for block in found]) else None


def _sef_block(data: bytes, directory: int, entry: int) -> _SefBlock | None:
    """The block a directory entry (type, offset back from the directory, size) points at, if well-formed."""
    kind = data[entry : entry + 4]
    start = directory - int.from_bytes(data[entry + 4 : entry + 8], "little")
    stop = start + int.from_bytes(data[entry + 8 : entry + 12], "little")
    if not 0 <= start < stop <= directory or data[start : start + 4] != kind:
        return None
    name_length = int.from_bytes(data[start + 4 : start + 8], "little")
    data_start = start + 8 + name_length
    if data_start > stop:
        return None
    return _SefBlock(_Span(start, stop), data[start + 8 : data_start], data_start)


def _fill(data: bytes, region: _Span, spans: list[_Span]) -> bool:
    """True if `spans` (sorted) fill `region` without overlapping, with nothing but padding between them."""
    cursor = region.start
    for span in spans:
        if span.start < cursor or not is_padding(data[cursor : span.start]):
            return False
        cursor = span.stop
    return is_padding(data[cursor : region.stop])


# ---- ISO base media files (MP4, QuickTime) ------------------------------------------------------


def is_mp4(data: bytes) -> bool:
    """True if `data` is top-level ISO-BMFF boxes that fill it exactly, an `ftyp` box first and a `moov`."""
    kinds: list[bytes] = []
    pos = 0
    while pos < len(data):
        box = _box_at(data, pos)
        if box is None:
            return False
        kinds.append(data[pos + 4 : pos + 8])
        pos = box
    return kinds[:1] == [b"ftyp"] and b"moov" in kinds


def _box_at(data: bytes, pos: int) -> int | None:
    """Where the box at `pos` ends, or None if no well-formed box starts there."""
    if pos + 8 > len(data) or not _BOX_TYPE.fullmatch(data[pos + 4 : pos + 8]):
        return None
    size, header = int.from_bytes(data[pos : pos + 4], "big"), 8
    if size == 1:  # a 64-bit size follows the type
        size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
    elif size == 0:  # the box runs to the end of the file
        size = len(data) - pos
    if size < header or pos + size > len(data):
        return None
    return pos + size


def _as_int(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) <= 10 else None
