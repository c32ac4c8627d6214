"""The API's /metrics, in process: an API key required, requests by route template and status, and
the jobs table's counts read at scrape time. (tests/system/test_metrics.py scrapes the real processes.)"""

from collections.abc import Iterator
from uuid import UUID, uuid4

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api.main import create_app
from jobs.db import SessionFactory, session_scope
from jobs.kinds import JobKind
from jobs.queues import queue_for_model, queue_for_trained
from jobs.repository import add_job, claim_job, fail_job
from jobs.settings import Settings
from tests.support.auth import TENANT, bearer
from tests.support.broker import drain
from tests.support.images import png_bytes
from tests.support.metrics import sample, scrape_text

# A model no test worker serves: the queued jobs stay queued, whichever tests ran before.
MODEL = "shapes-blip2"
QUEUE = f"infer.{MODEL}"


@pytest.fixture
def client(settings: Settings, engine: Engine, api_key: str, key_prefix: str) -> Iterator[TestClient]:
    """The app on empty tables, with no cache on the jobs table's counts, so each scrape reads the table as
    it is now; the tables are emptied again afterwards, so no job made here is left for a later worker."""
    empty(engine, key_prefix)
    app = create_app(settings.model_copy(update={"METRICS_JOBS_CACHE_S": 0.0}))
    try:
        with TestClient(app, headers=bearer(api_key)) as test_client:
            yield test_client
    finally:
        empty(engine, key_prefix)


def empty(engine: Engine, key_prefix: str) -> None:
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE jobs, images, idempotency_keys CASCADE"))
    drain(key_prefix, QUEUE)


def scrape(client: TestClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return scrape_text(response.text)


def submit(client: TestClient) -> str:
    image_id = client.post("/v1/images", files={"file": ("a.png", png_bytes())}).json()["id"]
    response = client.post("/v1/jobs", json={"kind": "caption", "model": MODEL, "input": {"image_id": image_id}})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize("headers", [{}, bearer("b2j_not-a-key"), {"Authorization": "Basic YWRtaW46YWRtaW4="}])
def test_metrics_need_an_api_key(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get("/metrics", headers={"Authorization": ""} | headers)
    assert response.status_code == 401, response.text
    assert "http_requests_total" not in response.text


def test_requests_are_counted_by_route_template_and_exact_status(client: TestClient) -> None:
    missing = uuid4()
    for _ in range(2):
        assert client.get(f"/v1/jobs/{missing}").status_code == 404
    assert client.get("/healthz").status_code == 200
    text = scrape(client)
    by_template = {"handler": "/v1/jobs/{job_id}", "method": "GET", "status": "404"}
    assert sample(text, "http_requests_total", by_template) == 2
    assert sample(text, "http_request_duration_seconds_count", by_template) == 2
    assert sample(text, "http_requests_total", {"handler": "/healthz", "method": "GET", "status": "200"}) == 1
    assert str(missing) not in text, "a job id became a label: one series per request"


def test_jobs_are_counted_by_status_kind_and_model_and_failures_by_code(
    client: TestClient, sessions: SessionFactory
) -> None:
    _queued, failing, canceled = submit(client), submit(client), submit(client)
    with session_scope(sessions) as session:
        run = claim_job(session, UUID(failing))
        assert run is not None
        fail_job(session, run.attempt, "invalid_image", "the image could not be decoded")
    assert client.post(f"/v1/jobs/{canceled}/cancel").status_code == 200
    text = scrape(client)
    for status in ("queued", "failed", "canceled"):
        assert sample(text, "blip2_jobs", {"status": status, "kind": "caption", "model": MODEL}) == 1, status
    failures = {"code": "invalid_image", "kind": "caption", "model": MODEL}
    assert sample(text, "blip2_job_failures_total", failures) == 1
    assert sample(text, "blip2_queue_depth", {"queue": QUEUE}) == 1

    submit(client)
    assert sample(scrape(client), "blip2_queue_depth", {"queue": QUEUE}) == 2, "the queue depth did not move"


def test_a_queue_that_drained_reads_zero(client: TestClient, sessions: SessionFactory) -> None:
    job_id = submit(client)
    assert sample(scrape(client), "blip2_queue_depth", {"queue": QUEUE}) == 1
    with session_scope(sessions) as session:
        assert claim_job(session, UUID(job_id)) is not None
    assert sample(scrape(client), "blip2_queue_depth", {"queue": QUEUE}) == 0


def test_models_outside_the_registry_share_one_label(client: TestClient, sessions: SessionFactory) -> None:
    """A tenant's trained model is named by that tenant: other tenants' keys must not read it here, in
    the model label or in the queue of its own workers; nor does each hub id add a series."""
    with session_scope(sessions) as session:
        job_input = {"image_id": str(uuid4())}
        own_queue = queue_for_trained(TENANT, "acme-private-captioner")
        for model, queue in (
            ("acme-private-captioner", own_queue),
            ("someone/ad-hoc", queue_for_model("someone/ad-hoc")),
        ):
            add_job(session, tenant=TENANT, kind=JobKind.CAPTION, model=model, queue=queue, input=job_input)
    text = scrape(client)
    assert "acme-private-captioner" not in text and "ad-hoc" not in text
    assert sample(text, "blip2_jobs", {"status": "queued", "kind": "caption", "model": "other"}) == 2
    assert sample(text, "blip2_queue_depth", {"queue": "other"}) == 2
