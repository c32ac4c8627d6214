"""Download jobs over real HTTP: a manifest dataset generated locally, a user archive fetched
from a local server, archives in the public datasets' layouts (found by their file names, or named
by the job's options), and archives that must be refused with nothing registered."""

import hashlib
import io
import json
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.support.archives import tar_gz
from tests.support.file_server import FileServer, serving_files
from tests.support.jobs import run_job as run
from tests.support.public_datasets import coco_archive, coco_with_names_of_its_own, vqav2_archive


@pytest.fixture
def files() -> Iterator[FileServer]:
    with serving_files() as server:
        yield server


def custom_dataset() -> bytes:
    """A folder of images with captions in JSONL, as a team brings its own data."""
    members: dict[str, bytes] = {}
    lines = {"train": [], "val": [], "test": []}  # type: dict[str, list[str]]
    for i, colour in enumerate(["red", "green", "blue", "yellow", "purple", "orange"]):
        image = io.BytesIO()
        Image.new("RGB", (32, 32), colour).save(image, format="PNG")
        members[f"products/images/{i}.png"] = image.getvalue()
        split = ["train", "train", "train", "train", "val", "test"][i]
        lines[split].append(json.dumps({"image": f"images/{i}.png", "caption": f"a {colour} square"}))
    for split, rows in lines.items():
        members[f"products/{split}.jsonl"] = "\n".join(rows).encode()
    return tar_gz(members)


def test_shapes_is_generated_and_registered(http: httpx.Client, long_worker: object) -> None:
    job = run(http, {"kind": "download", "input": {"dataset": "shapes"}})
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["dataset"] == "shapes"
    assert job["result"]["splits"]["test"] > 0 and "vqa" in job["result"]["tasks"]
    names = [d["name"] for d in http.get("/v1/datasets").json()["data"]]
    assert "shapes" in names


def test_a_user_archive_is_fetched_verified_and_registered(
    http: httpx.Client, long_worker: object, files: FileServer
) -> None:
    body = custom_dataset()
    url = files.serve("/products.tar.gz", body, drop_first=True)  # the connection drops once: resumed
    download = {"url": url, "sha256": hashlib.sha256(body).hexdigest(), "name": "products", "format": "jsonl"}
    job = run(http, {"kind": "download", "input": download})
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["splits"] == {"train": 4, "val": 1, "test": 1}
    assert job["progress_detail"]["bytes_done"] == len(body) and job["progress"] == pytest.approx(1.0)
    assert job["progress_detail"]["percent"] == pytest.approx(100.0)
    assert any(r and r.startswith("bytes=") for r in files.ranges("/products.tar.gz"))


def download_job(url: str, body: bytes, name: str, format: str, **options: str) -> dict[str, object]:
    source = {"url": url, "sha256": hashlib.sha256(body).hexdigest(), "name": name, "format": format}
    return {"kind": "download", "input": source | ({"options": options} if options else {})}


@pytest.mark.parametrize(
    ("format", "archive", "splits"),
    [
        ("coco_captions", coco_archive({"train": [1, 2, 3], "val": [4, 5]}), {"train": 3, "val": 2}),
        ("vqav2", vqav2_archive([1, 2, 3, 4]), {"val": 4}),
    ],
)
def test_a_public_layout_downloads_without_options(
    http: httpx.Client, long_worker: object, files: FileServer, format: str, archive: bytes, splits: dict[str, int]
) -> None:
    url = files.serve(f"/{format}.zip", archive)
    job = run(http, download_job(url, archive, f"{format.replace('_', '-')}-mini", format))
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["splits"] == splits


def test_files_of_other_names_need_the_options_the_error_names(
    http: httpx.Client, long_worker: object, files: FileServer
) -> None:
    archive = coco_with_names_of_its_own()
    url = files.serve("/coco-mini.zip", archive)

    refused = run(http, download_job(url, archive, "coco-mini", "coco_captions"))
    assert (refused["status"], refused["error"]["code"]) == ("failed", "invalid_dataset")
    assert "options.val_annotations" in refused["error"]["message"]
    assert "found annotations/captions.json" in refused["error"]["message"]

    options = {"val_annotations": "annotations/captions.json", "val_images": "images"}
    job = run(http, download_job(url, archive, "coco-mini", "coco_captions", **options))
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["splits"] == {"val": 3}
    assert "coco-mini" in [d["name"] for d in http.get("/v1/datasets").json()["data"]]


def test_an_option_the_format_does_not_read_is_422(http: httpx.Client, files: FileServer) -> None:
    job = download_job(files.base_url + "/x.zip", b"", "x", "coco_captions", val_questions="q.json")
    response = http.post("/v1/jobs", json=job)
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_argument", "input.options"), error
    assert "val_questions: not an option of coco_captions" in error["message"]


@pytest.mark.parametrize(
    ("archive", "checksum_of", "code"),
    [
        (custom_dataset(), b"something else", "checksum_mismatch"),
        (tar_gz({"../escape.jsonl": b"{}", "train.jsonl": b"{}"}), None, "unsafe_archive"),
    ],
)
def test_bad_archives_fail_and_register_nothing(
    http: httpx.Client, long_worker: object, files: FileServer, archive: bytes, checksum_of: bytes | None, code: str
) -> None:
    url = files.serve("/bad.tar.gz", archive)
    digest = hashlib.sha256(checksum_of if checksum_of is not None else archive).hexdigest()
    job = run(http, {"kind": "download", "input": {"url": url, "sha256": digest, "name": "bad", "format": "jsonl"}})
    assert (job["status"], job["error"]["code"]) == ("failed", code)
    assert "bad" not in [d["name"] for d in http.get("/v1/datasets").json()["data"]]


def test_internal_addresses_are_not_fetched(http: httpx.Client, long_worker: object, files: FileServer) -> None:
    body = custom_dataset()
    url = files.serve("/internal.tar.gz", body).replace("127.0.0.1", "localhost")  # not an allowed host
    download = {"url": url, "sha256": hashlib.sha256(body).hexdigest(), "name": "internal", "format": "jsonl"}
    job = run(http, {"kind": "download", "input": download})
    assert (job["status"], job["error"]["code"]) == ("failed", "forbidden_url")
    assert files.ranges("/internal.tar.gz") == []  # not one request reached the server


def test_training_on_a_missing_dataset_is_refused(http: httpx.Client) -> None:
    body = {"kind": "train", "model": "tiny-opt", "input": {"dataset": "nope", "output_model": "x"}}
    response = http.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "dataset_not_found"
