"""/v1/usage over HTTP: the calling tenant's jobs by kind and status, images stored and worker-seconds
by model, in a window; nothing of another tenant's."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from jobs.db import SessionFactory, session_scope
from jobs.repository import claim_job, fail_job, succeed_job
from jobs.settings import Settings
from tests.support.broker import drain
from tests.support.images import png_bytes


@pytest.fixture(autouse=True)
def empty_queues(key_prefix: str) -> Iterator[None]:
    yield
    for queue in ("infer.tiny-opt", "infer.tiny-itm"):
        drain(key_prefix, queue)


def upload(client: TestClient, color: tuple[int, int, int]) -> tuple[str, int]:
    data = png_bytes(color=color)
    return str(client.post("/v1/images", files={"file": ("a.png", data)}).json()["id"]), len(data)


def submit(client: TestClient, image_id: str, model: str = "tiny-opt", **decoding: Any) -> str:
    body = {"kind": "caption", "model": model, "input": {"image_id": image_id, **decoding}}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def finish(sessions: SessionFactory, job_id: str, seconds: float, *, ok: bool = True) -> None:
    """Play the worker: run the job to an end that took `seconds` of model time."""
    with session_scope(sessions) as session:
        run = claim_job(session, UUID(job_id))
        assert run is not None
        if ok:
            succeed_job(session, run.attempt, {"captions": ["x"]}, seconds)
        else:
            fail_job(session, run.attempt, "invalid_image", "bad", seconds)


def test_usage_counts_jobs_images_and_worker_seconds(client: TestClient, sessions: SessionFactory) -> None:
    (red, red_bytes), (blue, blue_bytes) = upload(client, (200, 0, 0)), upload(client, (0, 0, 200))
    finish(sessions, submit(client, red), 1.5)
    finish(sessions, submit(client, blue), 0.5, ok=False)
    submit(client, red)  # answered from the first one's result: no worker time
    submit(client, blue, num_beams=2)  # still queued

    usage = client.get("/v1/usage").json()
    assert usage["tenant"] == "test" and usage["from"] is None and usage["to"] is None
    counts = {(row["kind"], row["status"]): row["count"] for row in usage["jobs"]}
    assert counts == {("caption", "succeeded"): 2, ("caption", "failed"): 1, ("caption", "queued"): 1}
    assert usage["images"] == {"count": 2, "bytes": red_bytes + blue_bytes}
    assert usage["models"] == [{"model": "tiny-opt", "worker_seconds": 2.0, "jobs": 3}]
    assert usage["worker_seconds"] == 2.0


def test_usage_is_the_callers_own(client: TestClient, other: TestClient, sessions: SessionFactory) -> None:
    image, _ = upload(client, (10, 20, 30))
    finish(sessions, submit(client, image), 3.0)
    theirs = other.get("/v1/usage").json()
    assert (theirs["tenant"], theirs["jobs"], theirs["models"], theirs["worker_seconds"]) == ("other", [], [], 0.0)
    assert theirs["images"] == {"count": 0, "bytes": 0}


def test_usage_in_a_window(client: TestClient, sessions: SessionFactory) -> None:
    image, _ = upload(client, (1, 2, 3))
    finish(sessions, submit(client, image), 1.0)
    now = datetime.now(UTC)
    before = {"to": (now - timedelta(hours=1)).isoformat()}
    assert client.get("/v1/usage", params=before).json()["jobs"] == []
    around = {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat()}
    usage = client.get("/v1/usage", params=around).json()
    assert usage["worker_seconds"] == 1.0 and usage["from"] is not None
    naive = {"from": (now - timedelta(hours=1)).replace(tzinfo=None).isoformat()}  # read as UTC
    assert client.get("/v1/usage", params=naive).json()["worker_seconds"] == 1.0


def test_a_window_that_ends_before_it_starts_is_refused(client: TestClient) -> None:
    response = client.get("/v1/usage", params={"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"})
    assert response.status_code == 422
    assert (response.json()["error"]["code"], response.json()["error"]["field"]) == ("invalid_time_range", "to")
    unreadable = client.get("/v1/usage", params={"from": "last tuesday"})
    assert (unreadable.status_code, unreadable.json()["error"]["field"]) == (422, "from")


def test_usage_needs_a_key(settings: Settings) -> None:
    with TestClient(create_app(settings)) as anonymous:
        assert anonymous.get("/v1/usage").status_code == 401
