"""Tenants never see each other: another tenant's id answers exactly like an id that does not exist."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from jobs.db import SessionFactory, session_scope
from jobs.models import Dataset, Image, TrainedModel
from tests.support.auth import OTHER_TENANT, TENANT
from tests.support.broker import drain
from tests.support.images import png_bytes

UNKNOWN = "00000000-0000-0000-0000-000000000000"


@pytest.fixture(autouse=True)
def empty_queues(key_prefix: str) -> Iterator[None]:
    yield
    for queue in ("infer.tiny-opt", "train"):
        drain(key_prefix, queue)


def upload(client: TestClient, data: bytes | None = None) -> str:
    return str(client.post("/v1/images", files={"file": ("a.png", data or png_bytes())}).json()["id"])


def without_ids(response: Any) -> tuple[int, str]:
    """Status and error code: what must not differ between someone else's id and no id at all."""
    return response.status_code, response.json()["error"]["code"]


def test_jobs_of_another_tenant_are_not_found(client: TestClient, other: TestClient) -> None:
    job = client.post("/v1/jobs", json={"kind": "caption", "input": {"image_id": upload(client)}}).json()
    for method, path in [("GET", "/v1/jobs/{}"), ("GET", "/v1/jobs/{}?wait=1"), ("POST", "/v1/jobs/{}/cancel")]:
        foreign = other.request(method, path.format(job["id"]))
        missing = other.request(method, path.format(UNKNOWN))
        assert without_ids(foreign) == without_ids(missing) == (404, "job_not_found")
        assert foreign.json()["error"]["message"] == missing.json()["error"]["message"].replace(UNKNOWN, job["id"])
    assert other.get("/v1/jobs").json()["data"] == []
    assert [j["id"] for j in client.get("/v1/jobs").json()["data"]] == [job["id"]]
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"  # the other's cancel changed nothing


def test_images_of_another_tenant_are_not_found_nor_usable(client: TestClient, other: TestClient) -> None:
    mine = upload(client)
    assert client.get(f"/v1/images/{mine}").json()["id"] == mine
    assert without_ids(other.get(f"/v1/images/{mine}")) == without_ids(other.get(f"/v1/images/{UNKNOWN}"))
    assert other.get(f"/v1/images/{mine}").status_code == 404
    foreign = other.post("/v1/jobs", json={"kind": "caption", "input": {"image_id": mine}})
    missing = other.post("/v1/jobs", json={"kind": "caption", "input": {"image_id": UNKNOWN}})
    assert without_ids(foreign) == without_ids(missing) == (422, "unknown_image")
    match = {"kind": "match", "model": "tiny-itm", "input": {"text": "a", "image_ids": [upload(other), mine]}}
    assert without_ids(other.post("/v1/jobs", json=match)) == (422, "unknown_image")


def test_the_same_bytes_are_a_separate_image_per_tenant(
    client: TestClient, other: TestClient, sessions: SessionFactory
) -> None:
    data = png_bytes(color=(1, 2, 3))
    mine, theirs = upload(client, data), upload(other, data)
    assert mine != theirs and upload(client, data) == mine
    with session_scope(sessions) as session:
        tenants = set(session.scalars(select(Image.tenant).where(Image.id.in_([mine, theirs]))))
    assert tenants == {TENANT, OTHER_TENANT}


def test_idempotency_keys_are_per_tenant(client: TestClient, other: TestClient) -> None:
    headers = {"Idempotency-Key": "same-key"}
    mine = client.post("/v1/jobs", json={"kind": "caption", "input": {"image_id": upload(client)}}, headers=headers)
    theirs = other.post("/v1/jobs", json={"kind": "caption", "input": {"image_id": upload(other)}}, headers=headers)
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]


def catalog(sessions: SessionFactory, *models: TrainedModel) -> None:
    """No datasets or trained models but the test tenant's dataset `shapes-mine` and `models`."""
    with session_scope(sessions) as session:
        session.execute(Dataset.__table__.delete())
        session.execute(TrainedModel.__table__.delete())
        session.add(Dataset(tenant=TENANT, name="shapes-mine", format="shapes", path="/nowhere", tasks=["caption"],
                            splits={"train": 1}, source="test"))  # fmt: skip
        session.add_all(models)


def test_datasets_and_trained_models_belong_to_their_tenant(
    client: TestClient, other: TestClient, sessions: SessionFactory
) -> None:
    catalog(sessions, TrainedModel(tenant=TENANT, name="mine", family="opt", path="/nowhere", base_model="tiny-opt",
                                   task="caption", dataset="shapes-mine", metrics={}))  # fmt: skip
    assert [d["name"] for d in client.get("/v1/datasets").json()["data"]] == ["shapes-mine"]
    assert other.get("/v1/datasets").json()["data"] == []
    assert "mine" in [m["name"] for m in client.get("/v1/models").json()["data"]]
    assert "mine" not in [m["name"] for m in other.get("/v1/models").json()["data"]]
    train = {"kind": "train", "model": "tiny-opt", "input": {"dataset": "shapes-mine", "output_model": "x"}}
    assert client.post("/v1/jobs", json=train).status_code == 202
    assert without_ids(other.post("/v1/jobs", json=train)) == (422, "dataset_not_found")
    caption = {"kind": "caption", "model": "mine", "input": {"image_id": upload(other)}}
    assert without_ids(other.post("/v1/jobs", json=caption)) == (422, "model_not_found")
    # Names are per tenant: the other tenant may train a model called `mine` of its own.
    with session_scope(sessions) as session:
        session.add(Dataset(tenant=OTHER_TENANT, name="shapes-mine", format="shapes", path="/nowhere",
                            tasks=["caption"], splits={"train": 1}, source="test"))  # fmt: skip
    theirs = {"kind": "train", "model": "tiny-opt", "input": {"dataset": "shapes-mine", "output_model": "mine"}}
    assert other.post("/v1/jobs", json=theirs).status_code == 202
    assert without_ids(client.post("/v1/jobs", json=theirs)) == (409, "model_name_taken")


def test_local_paths_are_not_models_over_http(client: TestClient, tiny_data_dir: Any) -> None:
    """A checkpoint directory on the server's disk (maybe another tenant's) cannot be named by a client."""
    path = str(next(p for p in tiny_data_dir.rglob("config.json")).parent)
    response = client.post("/v1/jobs", json={"kind": "caption", "model": path, "input": {"image_id": upload(client)}})
    assert without_ids(response) == (422, "model_not_found")


@pytest.mark.parametrize("start_from", ["local-path", "no-such-model", "theirs"])
def test_a_training_starts_only_from_a_model_the_tenant_may_name(
    client: TestClient, other: TestClient, sessions: SessionFactory, tiny_data_dir: Any, start_from: str
) -> None:
    """`start_from` loads weights like `model` does: no paths on the server's disk, no other tenant's models."""
    catalog(sessions, TrainedModel(tenant=OTHER_TENANT, name="theirs", family="itm", path="/nowhere",
                                   base_model="tiny-itm", task="match", dataset="x", metrics={}))  # fmt: skip
    named = {"local-path": str(next(p for p in tiny_data_dir.rglob("config.json")).parent)}.get(start_from, start_from)
    train = {"kind": "train", "model": "tiny-opt", "input": {"dataset": "shapes-mine", "output_model": "x"}}
    response = client.post("/v1/jobs", json=train | {"input": train["input"] | {"start_from": named}})
    assert response.status_code == 422, response.text
    assert (response.json()["error"]["code"], response.json()["error"]["field"]) == (
        "model_not_found",
        "input.start_from",
    )
    allowed = client.post("/v1/jobs", json=train | {"input": train["input"] | {"start_from": "tiny-itm"}})
    assert allowed.status_code == 202, allowed.text
