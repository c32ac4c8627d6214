"""Motion photos (a JPEG with its MP4 appended) keep their picture; every other trailer stays a polyglot."""

import io
import zipfile
from collections.abc import Callable

import pytest
from PIL import Image
from skimage import data as skdata

from blip2.errors import ImagePolyglot
from blip2.images import ImageInfo, probe_image
from blip2.motion_photo import is_mp4, without_motion_video
from tests.support.motion_photos import (
    MotionPhoto,
    box,
    google_motion_photo,
    micro_video,
    motion_photo_xmp,
    mp4,
    samsung_motion_photo,
    with_xmp,
)

VIDEO = mp4()


@pytest.fixture(scope="module")
def photo() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skdata.chelsea()).save(buffer, format="JPEG", quality=90)  # 451x300, a real photograph
    return buffer.getvalue()


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("shell.jsp", b"<% out.println(1); %>")
    return buffer.getvalue()


MAKERS: dict[str, Callable[[bytes, bytes], MotionPhoto]] = {
    "google motion photo": google_motion_photo,
    "google micro video": micro_video,
    "samsung": samsung_motion_photo,
}


@pytest.mark.parametrize("maker", sorted(MAKERS))
def test_a_motion_photo_keeps_its_picture_without_the_video(photo: bytes, maker: str) -> None:
    motion = MAKERS[maker](photo, VIDEO)
    with pytest.raises(ImagePolyglot):
        probe_image(motion.file)  # as it is, the file is a JPEG with something after it

    kept = without_motion_video(motion.file)

    assert kept == motion.still, "the stored bytes should be the JPEG alone, its metadata included"
    assert probe_image(kept) == ImageInfo(width=451, height=300, format="jpeg")
    assert without_motion_video(motion.still) == motion.still, "the photo without its video is the same image"


def test_an_ultra_hdr_motion_photo_keeps_both_pictures() -> None:
    # Recent Pixels write an MPO (the photo, then its HDR gain map as a second JPEG), then the video.
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (9, 9, 200)).save(buffer, "MPO", save_all=True, append_images=[Image.new("L", (32, 24))])
    motion = google_motion_photo(buffer.getvalue(), VIDEO)

    assert without_motion_video(motion.file) == motion.still
    assert probe_image(motion.still).format == "mpo"


def test_a_video_after_padding_is_still_the_declared_video(photo: bytes) -> None:
    motion = google_motion_photo(photo, VIDEO, between=bytes(16))
    assert without_motion_video(motion.file) == motion.still


def test_a_large_mp4_box_size_is_read(photo: bytes) -> None:
    # Long videos' mdat boxes use the 64-bit size form (size field 1, then 8 bytes).
    frames = bytes(1000)
    large_mdat = (1).to_bytes(4, "big") + b"mdat" + (16 + len(frames)).to_bytes(8, "big") + frames
    video = VIDEO[:32] + large_mdat + box(b"moov", box(b"free", b""))
    assert is_mp4(video)
    assert without_motion_video(google_motion_photo(photo, video).file) == with_xmp(photo, motion_photo_xmp(len(video)))


# Trailers that are no motion photo's video: case -> the file. Each must stay a polyglot.
NOT_MOTION_PHOTOS: dict[str, Callable[[bytes], bytes]] = {
    "declared, but a zip": lambda p: google_motion_photo(p, zip_archive()).file,
    "declared, but php": lambda p: google_motion_photo(p, b"<?php system($_GET['c']); ?>").file,
    "declared, but html": lambda p: google_motion_photo(p, b"<html><script>alert(1)</script></html>").file,
    "declared, but a pdf": lambda p: google_motion_photo(p, b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF").file,
    "micro video, but a zip": lambda p: micro_video(p, zip_archive()).file,
    "php between the jpeg and its video": lambda p: google_motion_photo(p, VIDEO, between=b"<?php eval($x); ?>").file,
    "an mp4 no metadata declares": lambda p: p + VIDEO,
    "declared longer than the file's trailer": lambda p: with_xmp(p, motion_photo_xmp(len(VIDEO) + 50)) + VIDEO,
    "declared shorter than the trailer": lambda p: with_xmp(p, motion_photo_xmp(len(VIDEO) - 8)) + VIDEO,
    "an mp4 box whose size runs past the end": lambda p: google_motion_photo(p, VIDEO[:-1]).file,
    "boxes without ftyp first": lambda p: google_motion_photo(p, box(b"moov", b"") + VIDEO[:32]).file,
    "an ftyp without moov": lambda p: google_motion_photo(p, VIDEO[:32] + box(b"mdat", bytes(64))).file,
    "a box type that is not text": lambda p: google_motion_photo(p, VIDEO + box(b"\x00<?p", b"hp")).file,
    "samsung, but a zip": lambda p: samsung_motion_photo(p, zip_archive()).file,
    "samsung block without the directory": lambda p: samsung_motion_photo(p, VIDEO, sef_tail=False).file,
    "samsung trailer with a zip before it": lambda p: zip_before_the_trailer(p, samsung_motion_photo(p, VIDEO).file),
}


def zip_before_the_trailer(jpeg: bytes, file: bytes) -> bytes:
    """`file` with a ZIP right after its JPEG (the SEF offsets, counted back from the directory, still hold)."""
    return jpeg + zip_archive() + file[len(jpeg) :]


@pytest.mark.parametrize("case", sorted(NOT_MOTION_PHOTOS))
def test_any_other_trailer_is_still_a_polyglot(photo: bytes, case: str) -> None:
    data = NOT_MOTION_PHOTOS[case](photo)

    assert without_motion_video(data) == data, "only a declared, well-formed MP4 may be cut off"
    with pytest.raises(ImagePolyglot) as caught:
        probe_image(data)
    assert caught.value.code == "image_polyglot"


def test_other_formats_are_left_alone() -> None:
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    data = png.getvalue() + VIDEO
    assert without_motion_video(data) == data
    assert without_motion_video(b"") == b""
