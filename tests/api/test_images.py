"""POST /v1/images: validated uploads, stored once by content."""

import hashlib
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, text

from tests.support.images import jpeg_bytes, png_bytes
from tests.support.motion_photos import google_motion_photo, mp4, samsung_motion_photo


def upload(client: TestClient, data: bytes, name: str = "photo.png") -> dict:  # type: ignore[type-arg]
    response = client.post("/v1/images", files={"file": (name, data, "application/octet-stream")})
    return {"status": response.status_code, **response.json()}


def test_upload_and_same_bytes_same_id(client: TestClient) -> None:
    first = upload(client, png_bytes(width=40, height=30))
    assert first["status"] == 201
    assert (first["width"], first["height"], first["format"]) == (40, 30, "png")
    assert len(first["sha256"]) == 64
    again = upload(client, png_bytes(width=40, height=30), name="renamed.jpg")
    assert again["id"] == first["id"]
    assert upload(client, png_bytes(width=41, height=30))["id"] != first["id"]


def test_not_an_image(client: TestClient) -> None:
    reply = upload(client, b"%PDF-1.4 definitely not a picture")
    assert reply["status"] == 422
    assert reply["error"]["code"] == "invalid_image"


def test_unsupported_format(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    reply = upload(client, buffer.getvalue())
    assert (reply["status"], reply["error"]["code"]) == (415, "unsupported_image_format")


def test_too_many_bytes(client: TestClient) -> None:
    limit = client.app.state.context.settings.MAX_UPLOAD_BYTES  # type: ignore[attr-defined]
    reply = upload(client, b"\x89PNG" + b"\0" * limit)
    assert (reply["status"], reply["error"]["code"]) == (413, "upload_too_large")


def test_missing_file_field(client: TestClient) -> None:
    response = client.post("/v1/images", files={"other": ("a.png", png_bytes())})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "file"


@pytest.mark.parametrize("maker", [google_motion_photo, samsung_motion_photo], ids=["google", "samsung"])
def test_a_motion_photo_is_stored_without_its_video(client: TestClient, engine: Engine, maker: object) -> None:
    motion = maker(jpeg_bytes(), mp4())  # type: ignore[operator]
    response = client.post("/v1/images", files={"file": ("PXL_0001.MP.jpg", motion.file, "image/jpeg")})

    assert response.status_code == 201, response.json()
    stored = response.json()
    assert (stored["format"], stored["width"], stored["height"]) == ("jpeg", 64, 48)
    assert stored["sha256"] == hashlib.sha256(motion.still).hexdigest(), "the stored bytes should be the JPEG alone"
    with engine.connect() as connection:
        kept = connection.execute(text("SELECT data FROM images WHERE sha256 = :s"), {"s": stored["sha256"]}).scalar()
    assert bytes(kept) == motion.still
    assert upload(client, motion.still, name="still.jpg")["id"] == stored["id"], "same photo without its video"


def test_a_jpeg_declaring_a_video_but_carrying_a_zip_is_refused(client: TestClient, engine: Engine) -> None:
    zip_end = b"PK\x05\x06" + bytes(18)
    polyglot = google_motion_photo(jpeg_bytes(), b"PK\x03\x04" + bytes(26) + zip_end)
    reply = upload(client, polyglot.file, name="PXL_0002.MP.jpg")
    assert (reply["status"], reply["error"]["code"]) == (415, "image_polyglot")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM images")).scalar_one() == 0
