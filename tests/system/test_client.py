"""The Python client (blip2_jobs) against the real API and worker: a folder captioned end to end, each
image uploaded once, a rerun that finds its jobs instead of making new ones, 429s waited out."""

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from blip2_jobs import ApiError, AsyncClient, BatchJob, Client, job_request
from blip2_jobs.models import CaptionInput, EmbedInput
from jobs.settings import Settings
from tests.support.images import png_bytes
from tests.system.conftest import serving


class Recording(httpx.HTTPTransport):
    """A real transport that notes each request's method, path and answer status."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.seen.append((request.method, request.url.path, response.status_code))
        return response

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.seen if (m, p) == (method, path))


@pytest.fixture
def folder(tmp_path: Path) -> list[Path]:
    """Three images, one of them twice under another name."""
    paths = []
    for name, color in [("red", (200, 0, 0)), ("green", (0, 200, 0)), ("blue", (0, 0, 200)), ("red-copy", (200, 0, 0))]:
        path = tmp_path / f"{name}.png"
        path.write_bytes(png_bytes(width=24, height=24, color=color))
        paths.append(path)
    return paths


def caption_folder(client: Client, paths: list[Path]) -> list[BatchJob]:
    jobs = []
    for path in paths:
        image = client.upload_image(path.read_bytes())
        request = job_request("caption", CaptionInput(image_id=image.id, max_new_tokens=3), model="tiny-opt")
        jobs.append(BatchJob(request, idempotency_key=f"client-test-{path.name}"))
    return jobs


def test_a_folder_captioned_then_resumed_without_new_jobs(
    api_url: str, worker: Path, api_key: str, folder: list[Path]
) -> None:
    first = Recording()
    with Client(api_url, api_key, transport=first) as client:
        submitted = client.submit_many(caption_folder(client, folder))
        assert [item.status for item in submitted.items] == [202] * 4
        done = [client.wait(item.job.id) for item in submitted.items if item.job]
    assert first.count("POST", "/v1/images") == 3, "the copy of red.png was uploaded again"
    assert first.count("POST", "/v1/jobs:batch") == 1
    assert all(job.status == "succeeded" and len(job.result.captions) == 1 for job in done)  # type: ignore[union-attr]

    rerun = Recording()
    with Client(api_url, api_key, transport=rerun) as client:
        again = client.submit_many(caption_folder(client, folder))
    assert [item.job.id for item in again.items if item.job] == [job.id for job in done]
    assert [item.created for item in again.items] == [False] * 4, "a rerun made new jobs"
    assert rerun.count("POST", "/v1/images") == 0, "a rerun uploaded images the server already has"


def test_the_async_client(api_url: str, worker: Path, api_key: str) -> None:
    async def embed() -> str:
        async with AsyncClient(api_url, api_key) as client:
            image = await client.upload_image(png_bytes(color=(5, 5, 5)))
            job = await client.submit(job_request("embed", EmbedInput(image_id=image.id), model="tiny-itm"))
            return (await client.wait(job.id, timeout_s=120)).status.value

    assert asyncio.run(embed()) == "succeeded"


def test_run_answers_in_the_submission_itself(api_url: str, worker: Path, api_key: str) -> None:
    recording = Recording()
    with Client(api_url, api_key, transport=recording) as client:
        image = client.upload_image(png_bytes(color=(9, 9, 9)))
        done = client.run(job_request("caption", CaptionInput(image_id=image.id, max_new_tokens=3), model="tiny-opt"))
    assert done.status == "succeeded" and len(done.result.captions) == 1  # type: ignore[union-attr]
    [(_, _, submitted)] = [seen for seen in recording.seen if seen[:2] == ("POST", "/v1/jobs")]
    polls = recording.count("GET", f"/v1/jobs/{done.id}")
    # Finished within the submission's 30 s wait (201), it needed no long-poll; only a job that outlasted
    # the wait (202, on a machine loaded beyond reason) is long-polled after it.
    assert (submitted, polls) == (201, 0) or (submitted == 202 and polls >= 1), (submitted, polls)


def test_the_async_client_runs_a_job(api_url: str, worker: Path, api_key: str) -> None:
    async def run() -> str:
        async with AsyncClient(api_url, api_key) as client:
            image = await client.upload_image(png_bytes(color=(6, 6, 6)))
            job = await client.run(job_request("embed", EmbedInput(image_id=image.id), model="tiny-itm"), timeout_s=120)
            return job.status.value

    assert asyncio.run(run()) == "succeeded"


def test_api_errors_are_typed(api_url: str, api_key: str) -> None:
    with Client(api_url, api_key) as client, pytest.raises(ApiError) as refused:
        client.upload_image(b"not an image at all")
    assert (refused.value.status, refused.value.code) == (422, "invalid_image")
    with Client(api_url, "b2j_wrong") as client, pytest.raises(ApiError) as unauthorized:
        client.list_jobs()
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthorized")


@pytest.fixture(scope="module")
def rate_limited_api(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API process allowing each key 2 requests a second."""
    strict = settings.model_copy(update={"RATE_LIMIT_REQUESTS": 2, "RATE_LIMIT_WINDOW_S": 1.0})
    with serving("api", strict, tmp_path_factory) as url:
        yield url


def test_429_is_waited_out_per_retry_after(rate_limited_api: str, api_key: str) -> None:
    seen = Recording()
    with Client(rate_limited_api, api_key, transport=seen) as client:
        pages = [client.list_jobs(limit=1) for _ in range(6)]
    assert len(pages) == 6
    statuses = [status for _, _, status in seen.seen]
    assert 429 in statuses, "the limit was never hit: the test proves nothing"
    assert statuses.count(200) == 6


def test_importing_the_client_imports_neither_torch_nor_the_database_layer() -> None:
    code = "import sys, blip2_jobs, blip2_jobs.webhooks; print(sorted({'torch', 'sqlalchemy'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
