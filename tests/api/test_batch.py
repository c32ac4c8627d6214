"""POST /v1/jobs:batch: many jobs in one request and one transaction, one result per job, per-job
Idempotency-Keys; and GET /v1/images?sha256= for uploading an image once."""

import hashlib
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from jobs.db import SessionFactory, session_scope
from jobs.models import Job
from jobs.settings import Settings
from tests.support.auth import bearer
from tests.support.broker import drain, waiting_job_ids
from tests.support.images import png_base64, png_bytes

QUEUE = "infer.tiny-opt"
MISSING = "6f1e0a31-3b0b-4f4e-9a2c-0c7e0e9b2a11"


@pytest.fixture(autouse=True)
def empty_queue(key_prefix: str) -> None:
    drain(key_prefix, QUEUE)


@pytest.fixture
def image_id(client: TestClient) -> str:
    return str(client.post("/v1/images", files={"file": ("a.png", png_bytes())}).json()["id"])


def caption(image_id: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "caption", "input": {"image_id": image_id} | extra}


def batch(client: TestClient, *items: dict[str, Any]) -> Any:
    return client.post("/v1/jobs:batch", json={"jobs": list(items)})


def job_count(sessions: SessionFactory) -> int:
    with session_scope(sessions) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_each_job_is_accepted_or_refused_on_its_own(
    client: TestClient, image_id: str, sessions: SessionFactory, key_prefix: str
) -> None:
    response = batch(
        client,
        {"job": caption(image_id, prompt="one")},
        {"job": caption(MISSING)},
        {"job": {"kind": "vqa", "input": {"image": png_base64(color=(1, 1, 1)), "question": "what?"}}},
        {"job": caption(image_id) | {"model": "no-such-model"}},
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["status"] for item in items] == [202, 422, 202, 422]
    assert (items[1]["error"]["code"], items[1]["error"]["field"]) == ("unknown_image", "input.image_id")
    assert (items[3]["error"]["code"], items[3]["error"]["field"]) == ("model_not_found", "model")
    assert items[1]["job"] is None and items[0]["created"] and items[2]["created"]
    accepted = [items[0]["job"]["id"], items[2]["job"]["id"]]
    assert job_count(sessions) == 2, "a refused job left a row, or an accepted one is missing"
    assert waiting_job_ids(key_prefix, QUEUE) == accepted, "one message per accepted job, after the commit"
    assert client.get(f"/v1/jobs/{accepted[1]}").json()["input"]["question"] == "what?"


def test_a_batch_is_listed_and_queued_in_the_order_it_was_sent(
    client: TestClient, image_id: str, key_prefix: str
) -> None:
    """Its jobs share the transaction's created_at; their ids (UUIDv7) keep the order among them."""
    prompts = [f"prompt {n}" for n in range(12)]
    response = batch(client, *({"job": caption(image_id, prompt=prompt)} for prompt in prompts))
    sent = [item["job"]["id"] for item in response.json()["items"]]
    assert waiting_job_ids(key_prefix, QUEUE) == sent
    listed = client.get("/v1/jobs", params={"limit": 5}).json()
    listed = listed["data"] + client.get("/v1/jobs", params={"cursor": listed["next_cursor"]}).json()["data"]
    assert [job["input"]["prompt"] for job in listed] == prompts[::-1], "newest first, across pages"
    assert len({job["created_at"] for job in listed}) == 1


def test_per_job_idempotency_keys(client: TestClient, image_id: str, sessions: SessionFactory, key_prefix: str) -> None:
    items = [{"idempotency_key": f"k-{i}", "job": caption(image_id, prompt=str(i))} for i in range(3)]
    first = batch(client, *items).json()["items"]
    again = batch(client, *items).json()["items"]
    assert [i["job"]["id"] for i in again] == [i["job"]["id"] for i in first]
    assert [i["created"] for i in first] == [True] * 3 and [i["created"] for i in again] == [False] * 3
    assert job_count(sessions) == 3 and len(waiting_job_ids(key_prefix, QUEUE)) == 3, "a replay made or sent a job"
    single = client.post("/v1/jobs", json=caption(image_id, prompt="1"), headers={"Idempotency-Key": "k-1"})
    assert single.json()["id"] == first[1]["job"]["id"], "the batch's keys are the header's keys"


def test_one_key_twice_in_a_batch(client: TestClient, image_id: str, sessions: SessionFactory) -> None:
    same = {"idempotency_key": "twice", "job": caption(image_id)}
    items = batch(client, same, same, {"idempotency_key": "twice", "job": caption(image_id, prompt="other")})
    first, second, other = items.json()["items"]
    assert (second["job"]["id"], second["created"]) == (first["job"]["id"], False)
    assert (other["status"], other["error"]["code"]) == (422, "idempotency_key_reused")
    assert job_count(sessions) == 1


def test_an_idempotency_key_with_control_characters_is_refused(
    client: TestClient, image_id: str, sessions: SessionFactory
) -> None:
    """Found by schemathesis: a NUL in a batch item's key reached Postgres, which refuses it in text (a 500)."""
    response = batch(client, {"idempotency_key": "\x00", "job": caption(image_id)})
    assert response.status_code == 422
    assert (response.json()["error"]["code"], response.json()["error"]["field"]) == (
        "invalid_request",
        "jobs.0.idempotency_key",
    )
    assert job_count(sessions) == 0


def test_a_batch_is_bounded(settings: Settings, api_key: str, empty_tables: None) -> None:
    small = settings.model_copy(update={"MAX_JOBS_PER_BATCH": 2})
    with TestClient(create_app(small), headers=bearer(api_key)) as client:
        response = batch(client, *[{"job": caption(MISSING)}] * 3)
    assert response.status_code == 422
    assert (response.json()["error"]["code"], response.json()["error"]["field"]) == ("too_many_jobs", "jobs")


def test_a_malformed_job_fails_the_request_naming_its_place(client: TestClient, sessions: SessionFactory) -> None:
    response = batch(client, {"job": {"kind": "vqa", "input": {"image": png_base64()}}})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "jobs.0.job.input.question"
    assert batch(client).status_code == 422  # no jobs at all
    assert job_count(sessions) == 0


def test_find_an_image_by_its_sha256(client: TestClient, other_api_key: str) -> None:
    data = png_bytes(color=(9, 9, 9))
    digest = hashlib.sha256(data).hexdigest()
    assert client.get("/v1/images", params={"sha256": digest}).json() == {"data": []}
    uploaded = client.post("/v1/images", files={"file": ("a.png", data)}).json()
    assert client.get("/v1/images", params={"sha256": digest}).json() == {"data": [uploaded]}
    other = client.get("/v1/images", params={"sha256": digest}, headers=bearer(other_api_key))
    assert other.json() == {"data": []}, "another tenant's image was found"
    bad = client.get("/v1/images", params={"sha256": "XYZ"})
    assert (bad.status_code, bad.json()["error"]["field"]) == (422, "sha256")
