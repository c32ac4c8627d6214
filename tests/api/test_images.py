"""POST /v1/images: validated uploads, stored once by content."""

import io

from fastapi.testclient import TestClient
from PIL import Image

from tests.support.images import png_bytes


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
