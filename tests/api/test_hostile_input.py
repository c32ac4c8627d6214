"""Hostile input at the HTTP edge: a clear 4xx with a stable code, nothing stored, the server unharmed.

Oversized bodies are tried against a real uvicorn too, since only a real socket shows that the
server stops reading early (the TestClient hands the app a whole body at once).
"""

import io
import socket
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, func, select, text

from api.main import create_app
from jobs.db import SessionFactory
from jobs.models import Job
from jobs.settings import Settings
from tests.support.auth import bearer
from tests.support.file_server import serving_files
from tests.support.images import png_bytes
from tests.support.live_server import post_streaming, serving_app

BOUNDARY = "hostile-input-test"
# Two small limits for the live server, so the tests send megabytes, not tens of them.
LIVE_UPLOAD_LIMIT, LIVE_REQUEST_LIMIT = 1 << 20, 2 << 20


def upload(client: TestClient, data: bytes, content_type: str = "application/octet-stream") -> tuple[int, dict]:  # type: ignore[type-arg]
    response = client.post("/v1/images", files={"file": ("photo", data, content_type)})
    return response.status_code, response.json()


def stored_images(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM images")).scalar_one())


def jpeg(photo: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels in its header and carries none: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --- images whose bytes are not what they seem ------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "payload"),
    [
        ("png + zip", b"PK\x03\x04" + bytes(26) + b"PK\x05\x06" + bytes(18)),
        ("png + php", b"<?php echo 'hi'; ?>"),
        ("png + html", b"<html><script>alert(1)</script></html>"),
    ],
)
def test_polyglot_upload_is_415_and_not_stored(client: TestClient, engine: Engine, case: str, payload: bytes) -> None:
    status, body = upload(client, png_bytes() + payload, "image/png")
    assert (status, body["error"]["code"]) == (415, "image_polyglot"), case
    assert stored_images(engine) == 0


def test_png_uploaded_as_jpeg_is_415(client: TestClient, engine: Engine) -> None:
    # Needs the multipart part's content type passed on: store_image(..., claimed_type=...) -> probe_image.
    status, body = upload(client, png_bytes(), "image/jpeg")
    assert (status, body["error"]["code"]) == (415, "image_type_mismatch")
    assert "image/jpeg" in body["error"]["message"]
    assert stored_images(engine) == 0


def test_decompression_bomb_header_is_413(client: TestClient, engine: Engine) -> None:
    status, body = upload(client, png_header_only(50_000, 50_000), "image/png")
    assert (status, body["error"]["code"]) == (413, "image_too_large")
    assert stored_images(engine) == 0


def test_truncated_photo_is_422(client: TestClient, engine: Engine, photos: dict[str, Image.Image]) -> None:
    data = jpeg(photos["coffee"])
    status, body = upload(client, data[: len(data) // 2], "image/jpeg")
    assert (status, body["error"]["code"]) == (422, "invalid_image")
    assert stored_images(engine) == 0


def test_real_photos_still_pass_with_camera_padding(client: TestClient, photos: dict[str, Image.Image]) -> None:
    for name, photo in photos.items():
        status, body = upload(client, jpeg(photo, quality=90), "image/jpeg")
        assert (status, body["format"]) == (201, "jpeg"), name
    status, body = upload(client, jpeg(photos["chelsea"], quality=80) + bytes(8), "image/jpeg")
    assert (status, body["width"], body["height"]) == (201, 451, 300)


# --- bodies over their limit ------------------------------------------------------------------------


def test_upload_declaring_a_size_over_the_limit_is_413(client: TestClient, engine: Engine, settings: Settings) -> None:
    status, body = upload(client, bytes(settings.MAX_UPLOAD_BYTES + 100_000), "image/png")
    assert (status, body["error"]["code"]) == (413, "upload_too_large")
    assert "request body is over the limit" in body["error"]["message"]  # refused by the middleware, unread
    assert stored_images(engine) == 0


def test_job_body_over_the_request_limit_is_413(client: TestClient, settings: Settings) -> None:
    prompt = "A" * settings.MAX_REQUEST_BYTES  # read, this would be a 422 for a prompt too long
    response = client.post("/v1/jobs", content=f'{{"kind": "caption", "input": {{"prompt": "{prompt}"}}}}')
    assert (response.status_code, response.json()["error"]["code"]) == (413, "upload_too_large")
    assert client.get("/v1/jobs").json()["data"] == []


def test_inline_image_of_the_largest_upload_fits_the_request_limit(settings: Settings) -> None:
    base64_size = 4 * -(-settings.MAX_UPLOAD_BYTES // 3)
    assert base64_size + 64 * 1024 < settings.MAX_REQUEST_BYTES


@pytest.fixture
def live_api(settings: Settings, empty_tables: None, api_key: str) -> Iterator[tuple[str, int]]:
    """The API, with small body limits, on a real uvicorn."""
    small = settings.model_copy(update={"MAX_UPLOAD_BYTES": LIVE_UPLOAD_LIMIT, "MAX_REQUEST_BYTES": LIVE_REQUEST_LIMIT})
    # The TestClient runs the app's lifespan (connections opened, then closed) around the test.
    with TestClient(create_app(small)) as started, serving_app(started.app) as address:
        yield address


def multipart_start(filename: str = "big.png") -> bytes:
    return (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + b"\x89PNG\r\n\x1a\n"


def test_streamed_upload_is_cut_off_soon_after_the_limit(
    live_api: tuple[str, int], api_key: str, engine: Engine
) -> None:
    headers = bearer(api_key) | {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    total = 64 * LIVE_UPLOAD_LIMIT

    reply = post_streaming(live_api, "/v1/images", headers, multipart_start(), 64 * 1024, total)

    assert (reply.status, reply.body["error"]["code"]) == (413, "upload_too_large")
    # Sockets buffer a few megabytes at most: the server stopped reading right after the limit.
    assert LIVE_UPLOAD_LIMIT < reply.bytes_sent < total // 4
    assert stored_images(engine) == 0


def test_streamed_job_body_is_cut_off_soon_after_the_limit(live_api: tuple[str, int], api_key: str) -> None:
    headers = bearer(api_key) | {"Content-Type": "application/json"}
    total = 32 * LIVE_REQUEST_LIMIT

    reply = post_streaming(live_api, "/v1/jobs", headers, b'{"kind": "caption", "input": {"image": "', 64 * 1024, total)

    assert (reply.status, reply.body["error"]["code"]) == (413, "upload_too_large")
    assert LIVE_REQUEST_LIMIT < reply.bytes_sent < total // 4


def test_declared_size_over_the_limit_is_answered_before_any_body_is_sent(
    live_api: tuple[str, int], api_key: str
) -> None:
    headers = bearer(api_key) | {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    with socket.create_connection(live_api, timeout=60) as conn:
        head = ["POST /v1/images HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {100 * LIVE_UPLOAD_LIMIT}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode())  # and not one byte of the body
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in answer.lower()


def test_image_url_is_fetched_and_stored_for_the_tenant(client: TestClient, sessions: SessionFactory) -> None:
    with serving_files() as server:
        url = server.serve("/cat.png", png_bytes(color=(9, 8, 7)))
        job = client.post("/v1/jobs", json={"kind": "caption", "input": {"image_url": url}})
        assert job.status_code == 202, job.text
        image_id = job.json()["input"]["image_id"]
        assert job.json()["input"]["image_url"] is None
        assert client.get(f"/v1/images/{image_id}").json()["format"] == "png"
        # Internal addresses are refused before anything is stored.
        forbidden = client.post(
            "/v1/jobs", json={"kind": "caption", "input": {"image_url": "http://169.254.169.254/latest/meta-data"}}
        )
        assert forbidden.status_code == 422
        assert (forbidden.json()["error"]["code"], forbidden.json()["error"]["field"]) == (
            "forbidden_url",
            "input.image_url",
        )
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


_DOWNLOAD = {"url": "http://\u0000", "sha256": "0" * 64, "name": "x", "format": "jsonl"}
_EXAMPLES = [{"question": "q", "answer": "\u0000"}]
_NUL_INPUTS = [
    ({"kind": "vqa", "input": {"question": "what\u0000?"}}, "input.question"),
    ({"kind": "caption", "input": {"prompt": "a photo of\u0000"}}, "input.prompt"),
    ({"kind": "match", "input": {"texts": ["a cat", "a\u0000dog"]}}, "input.texts.1"),
    ({"kind": "vqa", "input": {"question": "q", "examples": _EXAMPLES}}, "input.examples.0.answer"),
    ({"kind": "download", "input": _DOWNLOAD}, "input.url"),
    ({"kind": "download", "input": {"dataset": "coco\u0000"}}, "input.dataset"),
    ({"kind": "caption", "input": {}, "webhook_url": "http://8.8.8.8/hook\u0000x"}, "webhook_url"),
]


@pytest.mark.parametrize(("job_input", "field"), _NUL_INPUTS)
def test_nul_in_any_text_of_an_input_is_422_and_stores_nothing(
    client: TestClient,
    engine: Engine,
    job_input: dict[str, Any],
    field: str,
) -> None:
    """Postgres keeps no NUL in JSON: a job carrying one is refused with the field named, one job or a
    batch, instead of failing its INSERT with a 500 (the fuzz test found one in a download's url)."""
    status, image = upload(client, png_bytes())
    assert status in (200, 201), image
    body = dict(job_input)
    if body["kind"] in ("vqa", "caption", "match"):
        body["input"] = {"image_id": image["id"], **body["input"]}
    before = _jobs(engine)
    alone = client.post("/v1/jobs", json=body)
    assert alone.status_code == 422, alone.text
    assert (alone.json()["error"]["code"], alone.json()["error"]["field"]) == ("invalid_request", field)
    batch = client.post("/v1/jobs:batch", json={"jobs": [{"job": body}]})
    assert batch.status_code == 422 and batch.json()["error"]["field"] == f"jobs.0.job.{field}", batch.text
    assert _jobs(engine) == before


def _jobs(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(Job)) or 0


def test_a_webhook_url_to_port_0_is_refused(client: TestClient, engine: Engine) -> None:
    """Port 0 is no port a delivery could reach (it used to be checked as port 80, then accepted)."""
    status, image = upload(client, png_bytes())
    assert status in (200, 201), image
    before = _jobs(engine)
    body = {"kind": "caption", "input": {"image_id": image["id"]}, "webhook_url": "http://8.8.8.8:0/hook"}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert (response.json()["error"]["code"], response.json()["error"]["field"]) == (
        "invalid_webhook_url",
        "webhook_url",
    )
    assert "port 0" in response.json()["error"]["message"]
    assert _jobs(engine) == before
