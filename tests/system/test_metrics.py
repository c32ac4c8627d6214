"""Prometheus metrics from the real processes: the API's /metrics after jobs ran, and a worker's own
endpoint (`--metrics-port`), where the counters its prefork child changed must show.

Scrapes are parsed with prometheus-client's parser. The API caches its read of the jobs table for a
few seconds, so the tests wait for a count to arrive, then check it is exactly what the jobs did.
"""

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import psutil
import pytest
import torch

from jobs.db import SessionFactory
from jobs.embedded import free_port
from jobs.queues import queue_for_model
from jobs.settings import Settings
from tests.support.auth import bearer
from tests.support.jobs import damage, run_job, submit, upload
from tests.support.metrics import sample, samples, scrape_text
from tests.support.processes import cli_process, running_worker, wait_for_http
from tests.support.waiting import wait_terminal, wait_until

pytestmark = pytest.mark.slow

# Only this module's worker serves this model's queue; the jobs wait for it, so they run as one batch.
BATCH_MODEL = "shapes-itm"


def scrape(url: str, headers: dict[str, str] | None = None) -> str:
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return scrape_text(response.text)


def caption(image_id: str) -> dict[str, object]:
    return {"kind": "caption", "model": "tiny-opt", "input": {"image_id": image_id, "max_new_tokens": 3}}


def test_api_metrics_need_an_api_key(api_url: str) -> None:
    assert httpx.get(f"{api_url}/metrics").status_code == 401
    assert httpx.get(f"{api_url}/metrics", headers={"Authorization": "Bearer b2j_wrong"}).status_code == 401


def test_api_metrics_move_with_the_jobs(
    http: httpx.Client, api_url: str, sessions: SessionFactory, empty_tables: None
) -> None:
    """A succeeded and a failed caption job on empty tables: requests, jobs by status and failures by code."""
    auth = dict(http.headers)
    before = scrape(api_url, auth)
    broken = upload(http, (101, 103, 107))
    damage(sessions, broken)
    assert run_job(http, caption(upload(http, (109, 113, 127))))["status"] == "succeeded"
    assert run_job(http, caption(broken))["error"]["code"] == "invalid_image"

    counted = {
        ("blip2_jobs", ("succeeded", "caption", "tiny-opt")): 1,
        ("blip2_jobs", ("failed", "caption", "tiny-opt")): 1,
        ("blip2_job_failures_total", ("invalid_image", "caption", "tiny-opt")): 1,
    }

    def jobs_table(text: str) -> dict[tuple[str, tuple[str, ...]], float | None]:
        first = {"blip2_jobs": "status", "blip2_job_failures_total": "code"}
        return {(n, v): sample(text, n, dict(zip((first[n], "kind", "model"), v, strict=True))) for n, v in counted}

    # The table is read at most every METRICS_JOBS_CACHE_S: wait for a read made after the jobs ended.
    wait_until(lambda: jobs_table(scrape(api_url, auth)) == counted, "the API's metrics count the jobs", timeout_s=60)
    submitted = {"handler": "/v1/jobs", "method": "POST", "status": "202"}
    after = scrape(api_url, auth)
    for name in ("http_requests_total", "http_request_duration_seconds_count"):
        moved = (sample(after, name, submitted) or 0) - (sample(before, name, submitted) or 0)
        assert moved == 2, f"{name}: {moved} submissions counted, 2 made"


def test_an_api_of_several_processes_counts_all_their_requests(
    settings: Settings, api_key: str, tmp_path: Path
) -> None:
    """`api --workers 2`: whichever process answers a scrape, it shows every process's requests."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with cli_process(["api", "--workers=2", f"--port={port}"], settings, tmp_path / "api.log") as process:
        wait_for_http(f"{url}/healthz", process)
        for _ in range(20):
            assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        healthz = {"handler": "/healthz", "method": "GET", "status": "200"}
        seen = {sample(scrape(url, bearer(api_key)), "http_requests_total", healthz) for _ in range(6)}
    assert len(seen) == 1 and (seen.pop() or 0) >= 21, "a scrape showed only its own process's requests"


@pytest.fixture
def batch_worker(
    http: httpx.Client, sessions: SessionFactory, worker_settings: Settings, tmp_path: Path
) -> Iterator[tuple[str, int]]:
    """Three embed jobs queued for a worker started after them with --metrics-port; yields (metrics URL, pid)."""
    images = [upload(http, (60, n, 9)) for n in range(3)]
    jobs = [submit(http, {"kind": "embed", "model": BATCH_MODEL, "input": {"image_id": image}}) for image in images]
    port, queue = free_port(), queue_for_model(BATCH_MODEL)
    options = ["--batch-size=8", f"--metrics-port={port}"]
    log = tmp_path / "worker.log"
    with running_worker(worker_settings, log, model=BATCH_MODEL, queues=[queue], options=options) as process:
        ended = [wait_terminal(sessions, UUID(job_id), timeout_s=300) for job_id in jobs]
        assert [job.status.value for job in ended] == ["succeeded"] * 3, [job.error_message for job in ended]
        assert len({job.batch_id for job in ended}) == 1, "the three queued jobs did not run as one batch"
        yield f"http://127.0.0.1:{port}", process.pid


def test_worker_metrics_show_what_its_child_process_recorded(batch_worker: tuple[str, int]) -> None:
    """Served by the worker's main process on loopback, counted in the child that ran the batch."""
    url, pid = batch_worker
    port = int(url.rsplit(":", 1)[1])
    listening = [c.laddr for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert [address.ip for address in listening if address.port == port] == ["127.0.0.1"], listening
    labels = {"kind": "embed", "model": BATCH_MODEL}

    def batch_observed() -> bool:  # recorded right after the batch's results were written
        return sample(scrape(url), "blip2_worker_batch_size_count", labels) == 1

    wait_until(batch_observed, "the worker's metrics show the batch", timeout_s=60, interval_s=0.5)
    text = scrape(url)
    assert sample(text, "blip2_worker_batch_size_sum", labels) == 3, "one batch of three jobs"
    assert sample(text, "blip2_worker_batch_size_bucket", labels | {"le": "2.0"}) == 0
    assert sample(text, "blip2_worker_batch_size_bucket", labels | {"le": "4.0"}) == 1
    assert sample(text, "blip2_worker_jobs_total", labels | {"outcome": "succeeded"}) == 3
    assert sample(text, "blip2_job_queued_seconds_count", labels) == 3
    assert sample(text, "blip2_job_run_seconds_count", labels | {"outcome": "succeeded"}) == 3
    assert sample(text, "blip2_worker_model_load_seconds_count", {"model": BATCH_MODEL}) == 1
    gpu_memory = samples(text, "blip2_worker_gpu_memory_allocated_bytes")
    assert bool(gpu_memory) == torch.cuda.is_available(), f"GPU memory gauges {gpu_memory}, CUDA here or not"
