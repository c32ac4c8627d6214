"""A client generated from the OpenAPI document by openapi-python-client (offline, into a temporary
folder) uploads an image and runs a caption job end to end against the real API and worker: the
schema is complete and precise enough for a generator to make a working, typed client of it."""

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.images import png_bytes

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGE = "blip2_generated_client"

# Runs in a fresh interpreter, with the generated package on its path; prints the finished job.
USE_IT = """
import io, json, sys, time
from blip2_generated_client import AuthenticatedClient
from blip2_generated_client.api.images import upload_image
from blip2_generated_client.api.catalog import read_loss_curve
from blip2_generated_client.api.jobs import create_job, read_job
from blip2_generated_client.models import BodyUploadImage, CaptionInput, CaptionJob, CaptionJobCreate, DecodingInput
from blip2_generated_client.types import File

base_url, key, image_path = sys.argv[1:]
client = AuthenticatedClient(base_url=base_url, token=key, raise_on_unexpected_status=True)
upload = BodyUploadImage(file=File(payload=open(image_path, "rb"), file_name="photo.png"))
image = upload_image.sync(client=client, body=upload)
request = CaptionJobCreate(kind="caption", model="tiny-opt",
                           input_=CaptionInput(image_id=image.id, decoding=DecodingInput(max_new_tokens=3)))
job = create_job.sync(client=client, body=request)
for _ in range(20):
    job = read_job.sync(job.id, client=client, wait=30)
    if job.status.value in ("succeeded", "failed", "canceled"):
        break
assert isinstance(job, CaptionJob), type(job)
curve = read_loss_curve.sync("shapes-blip2", client=client).payload.read()
print(json.dumps({"image_id": str(image.id), "status": job.status.value, "captions": job.result.captions,
                  "curve_bytes": len(curve), "curve_is_png": curve.startswith(b"\\x89PNG")}))
"""


def test_a_generated_client_runs_a_caption_job(api_url: str, worker: Path, api_key: str, tmp_path: Path) -> None:
    schema = tmp_path / "openapi.json"
    schema.write_text(httpx.get(f"{api_url}/openapi.json").text)
    config = tmp_path / "config.json"
    # The generator reads binary answers as application/octet-stream only: a loss curve's PNG is one.
    overrides = {"image/png": "application/octet-stream"}
    config.write_text(
        json.dumps({"post_hooks": [], "package_name_override": PACKAGE, "content_type_overrides": overrides})
    )
    generated = subprocess.run(
        [GENERATOR, "generate", "--path", schema, "--meta", "none", "--output-path", tmp_path / PACKAGE,
         "--config", config],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout + generated.stderr, generated.stdout + generated.stderr
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(color=(40, 80, 160)))
    used = subprocess.run(
        [sys.executable, "-c", USE_IT, api_url, api_key, image],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert used.returncode == 0, used.stderr
    job = json.loads(used.stdout)
    assert job["status"] == "succeeded" and len(job["captions"]) == 1
    assert job["curve_is_png"] and job["curve_bytes"] > 1000, job  # GET /v1/models/{name}/loss-curve, as bytes
