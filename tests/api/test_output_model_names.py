"""POST /v1/jobs and /v1/jobs:batch: a second training job of an `output_model` that a queued or
running training job of the tenant makes is 409 model_name_taken, as a registered name is. Before,
both were 202, and the second's model replaced the first's files."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from jobs.db import SessionFactory, session_scope
from jobs.models import Dataset
from tests.support.auth import TENANT
from tests.support.broker import drain

TRAIN: dict[str, Any] = {"kind": "train", "model": "tiny-opt", "input": {"dataset": "shapes", "output_model": "mine"}}


@pytest.fixture(autouse=True)
def shapes(client: TestClient, sessions: SessionFactory, key_prefix: str) -> Iterator[None]:
    """The tenant's `shapes` dataset, as a row (no worker runs here); the train queue emptied after."""
    with session_scope(sessions) as session:
        session.merge(Dataset(tenant=TENANT, name="shapes", format="shapes", path="/nowhere", tasks=["caption"],
                              splits={"train": 1}, source="test"))  # fmt: skip
    yield
    with session_scope(sessions) as session:
        session.execute(delete(Dataset).where(Dataset.tenant == TENANT, Dataset.name == "shapes"))
    drain(key_prefix, "train")


def status_and_code(response: Any) -> tuple[int, str | None]:
    error = response.json()["error"]  # a job's is null
    return response.status_code, error["code"] if error else None


def test_the_same_output_model_twice_is_409_the_second_time(client: TestClient) -> None:
    assert status_and_code(client.post("/v1/jobs", json=TRAIN)) == (202, None)
    again = client.post("/v1/jobs", json=TRAIN)
    assert status_and_code(again) == (409, "model_name_taken"), "a second training job of 'mine' was accepted"
    assert again.json()["error"]["field"] == "input.output_model"


def test_the_same_output_model_twice_in_a_batch_refuses_the_second_only(client: TestClient) -> None:
    other = {**TRAIN, "input": {**TRAIN["input"], "output_model": "other"}}
    response = client.post("/v1/jobs:batch", json={"jobs": [{"job": TRAIN}, {"job": TRAIN}, {"job": other}]})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["status"] for item in items] == [202, 409, 202], items
    assert items[1]["error"]["code"] == "model_name_taken" and items[1]["job"] is None


def test_the_same_output_model_at_the_same_moment_is_accepted_once(client: TestClient) -> None:
    """Four requests at once, alone or grouped (api/submission_groups.py): one is accepted, whatever the timing."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda _: status_and_code(client.post("/v1/jobs", json=TRAIN)), range(4)))
    assert sorted(outcomes, key=str) == [(202, None)] + [(409, "model_name_taken")] * 3, outcomes
