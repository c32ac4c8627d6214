"""/v1/jobs over HTTP: submit, idempotency, validation, read, long-poll, list, cancel."""

import logging
import threading
import time
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from jobs.db import SessionFactory, session_scope
from jobs.models import Image, Job
from jobs.repository import claim_job, succeed_job
from tests.support.broker import drain, waiting_job_ids
from tests.support.images import png_base64, png_bytes

QUEUE = "infer.tiny-opt"
TRAIN_INPUT = {"dataset": "shapes", "output_model": "mine"}


@pytest.fixture
def image_id(client: TestClient) -> str:
    response = client.post("/v1/images", files={"file": ("a.png", png_bytes())})
    return str(response.json()["id"])


@pytest.fixture(autouse=True)
def empty_queue(key_prefix: str) -> None:
    drain(key_prefix, QUEUE)


def submit(client: TestClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post("/v1/jobs", json=body, headers=headers)


def count(sessions: SessionFactory, table: type[Job] | type[Image]) -> int:
    with session_scope(sessions) as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def test_submit_returns_202_location_and_the_job(client: TestClient, image_id: str, key_prefix: str) -> None:
    response = submit(client, {"kind": "caption", "input": {"image_id": image_id, "prompt": "a photo of"}})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert (job["status"], job["model"], job["kind"], job["attempts"]) == ("queued", "tiny-opt", "caption", 0)
    assert job["input"]["prompt"] == "a photo of"
    assert (job["result"], job["error"], job["started_at"]) == (None, None, None)
    assert waiting_job_ids(key_prefix, QUEUE) == [job["id"]]
    assert client.get(response.headers["Location"]).json() == job


def test_inline_image_is_stored_and_referenced(client: TestClient, image_id: str) -> None:
    job = submit(client, {"kind": "vqa", "input": {"image": png_base64(), "question": "what?"}}).json()
    assert job["input"]["image_id"] == image_id  # the same bytes as the upload
    assert job["input"]["image"] is None


def test_idempotency_key(client: TestClient, image_id: str, sessions: SessionFactory) -> None:
    body = {"kind": "instruct", "model": "tiny-instruct", "input": {"image_id": image_id, "instruction": "x"}}
    first = submit(client, body, **{"Idempotency-Key": "abc"})
    second = submit(client, body, **{"Idempotency-Key": "abc"})
    assert first.json()["id"] == second.json()["id"]
    other = submit(client, body | {"model": "tiny-opt"}, **{"Idempotency-Key": "abc"})
    assert (other.status_code, other.json()["error"]["code"]) == (422, "idempotency_key_reused")
    assert count(sessions, Job) == 1


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"kind": "vqa", "input": {"image": png_base64()}}, "invalid_request", "input.question"),
        ({"kind": "paint", "input": {}}, "invalid_request", "kind"),
        (
            {"kind": "caption", "input": {"image": png_base64(), "decoding": {"num_beams": 99}}},
            "invalid_request",
            "input.decoding.num_beams",
        ),
        ({"kind": "caption", "input": {"image": "not base64!"}}, "invalid_request", "input.image"),
        (
            {"kind": "caption", "input": {"image": png_base64(), "max_new_tokens": 5_000_000}},
            "invalid_request",
            "input.decoding.max_new_tokens",  # flat options are decoding options
        ),
        (
            {"kind": "caption", "input": {"image": png_base64(), "decoding": {"max_new_tokens": 5_000_000}}},
            "invalid_request",
            "input.decoding.max_new_tokens",
        ),
        (
            {"kind": "vqa", "input": {"image": png_base64(), "question": ["a", "list"]}},
            "invalid_request",
            "input.question",
        ),
        ({"kind": "caption", "model": 7, "input": {"image": png_base64()}}, "invalid_request", "model"),
        # a NUL reached Postgres's lookup of trained models and answered 500 (found by the schema fuzzer)
        ({"kind": "caption", "model": "\x00", "input": {"image": png_base64()}}, "invalid_request", "model"),
        ({"kind": "caption", "input": {"image_id": 12345}}, "invalid_request", "input.image_id"),
        ({"kind": "caption", "input": {"image": "aGVsbG8="}}, "invalid_image", "input.image"),
        ({"kind": "caption", "model": "no-such-model", "input": {"image": png_base64()}}, "model_not_found", "model"),
        (
            {"kind": "caption", "input": {"image_id": "6f1e0a31-3b0b-4f4e-9a2c-0c7e0e9b2a11"}},
            "unknown_image",
            "input.image_id",
        ),
        (
            {"kind": "match", "model": "tiny-itm", "input": {"image": png_base64(), "texts": ["t"] * 500}},
            "batch_too_large",
            "input.texts",
        ),
        (  # swapped negatives are for matching; a captioner's training has no negatives
            {"kind": "train", "model": "tiny-itm", "input": {**TRAIN_INPUT, "swap_negatives": [["circle", "star"]]}},
            "invalid_request",
            "input",
        ),
    ],
)
def test_rejected_request_creates_no_row(
    client: TestClient, sessions: SessionFactory, body: dict[str, Any], code: str, field: str | None
) -> None:
    response = submit(client, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error.get("field") == field
    assert count(sessions, Job) == count(sessions, Image) == 0


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"kind": "caption", "input": ', "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"[]", "application/json"),
        (b"kind=caption", "application/x-www-form-urlencoded"),
    ],
)
def test_malformed_bodies_are_422_naming_the_body(
    client: TestClient, sessions: SessionFactory, content: bytes, content_type: str
) -> None:
    response = client.post("/v1/jobs", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["field"] == "body"
    assert count(sessions, Job) == 0


def test_unknown_job(client: TestClient) -> None:
    response = client.get("/v1/jobs/6f1e0a31-3b0b-4f4e-9a2c-0c7e0e9b2a11")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "job_not_found")
    assert client.get("/v1/jobs/not-a-uuid").json()["error"]["field"] == "job_id"


def test_list_newest_first_paginated_and_filtered(client: TestClient, image_id: str) -> None:
    kinds = ["caption", "vqa", "caption", "vqa", "caption"]
    made = []
    for kind in kinds:
        extra = {"question": "q"} if kind == "vqa" else {}
        made.append(submit(client, {"kind": kind, "input": {"image_id": image_id} | extra}).json()["id"])
    seen, cursor = [], None
    while True:
        page = client.get("/v1/jobs", params={"limit": 2} | ({"cursor": cursor} if cursor else {})).json()
        seen += [job["id"] for job in page["data"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == list(reversed(made))
    vqa = client.get("/v1/jobs", params={"kind": "vqa", "status": "queued"}).json()["data"]
    assert [job["id"] for job in vqa] == [made[3], made[1]]
    assert client.get("/v1/jobs", params={"status": "succeeded"}).json()["data"] == []
    assert client.get("/v1/jobs", params={"cursor": "garbage"}).json()["error"]["code"] == "invalid_cursor"
    assert client.get("/v1/jobs", params={"limit": 0}).json()["error"]["field"] == "limit"


def test_a_job_stored_by_an_older_version_reads_back_as_stored(
    client: TestClient, image_id: str, sessions: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A job whose stored input and result no longer validate (a newer version narrowed a bound, renamed
    a field) is answered as it was stored, by itself and on its page of the listing, and the API logs
    which fields; the jobs around it are answered as ever, and nothing is written."""
    before = submit(client, {"kind": "caption", "input": {"image_id": image_id}}).json()
    old = submit(client, {"kind": "caption", "input": {"image_id": image_id}}).json()
    after = submit(client, {"kind": "caption", "input": {"image_id": image_id}}).json()
    stored_input = old["input"] | {"decoding": {"max_new_tokens": 100_000}, "style": "terse"}
    stored_result = {"captions": "a red circle"}  # a string where a list is now expected
    with session_scope(sessions) as session:
        run = claim_job(session, UUID(old["id"]))
        assert run is not None
        succeed_job(session, run.attempt, {"captions": ["a red circle"]})
        session.execute(update(Job).where(Job.id == UUID(old["id"])).values(input=stored_input, result=stored_result))

    with caplog.at_level(logging.WARNING, logger="jobs.schemas"):
        read = client.get(f"/v1/jobs/{old['id']}")
    assert read.status_code == 200, read.text
    job = read.json()
    assert (job["input"], job["result"], job["status"], job["kind"]) == (stored_input, stored_result, "succeeded",
                                                                        "caption")  # fmt: skip
    assert job["created_at"] == old["created_at"] and job["finished_at"] is not None
    assert f"job {old['id']}: stored input and result not valid in this version, answered as stored" in caplog.text

    listing = client.get("/v1/jobs", params={"limit": 3})
    assert listing.status_code == 200, listing.text
    assert [j["id"] for j in listing.json()["data"]] == [after["id"], old["id"], before["id"]]
    assert listing.json()["data"][1] == job
    assert listing.json()["data"][0] == client.get(f"/v1/jobs/{after['id']}").json() == after
    with session_scope(sessions) as session:
        assert session.scalar(select(Job.input).where(Job.id == UUID(old["id"]))) == stored_input


def test_cancel_queued_then_409(client: TestClient, image_id: str) -> None:
    job = submit(client, {"kind": "caption", "input": {"image_id": image_id}}).json()
    canceled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled" and canceled.json()["finished_at"]
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "job_not_cancelable")


def finish_later(sessions: SessionFactory, job_id: str, delay_s: float) -> threading.Thread:
    """Play the worker: claim and finish the job after a delay."""

    def finish() -> None:
        time.sleep(delay_s)
        with session_scope(sessions) as session:
            run = claim_job(session, UUID(job_id))
            assert run is not None
            succeed_job(session, run.attempt, {"captions": ["done"]})

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_long_poll_returns_when_the_job_finishes(client: TestClient, image_id: str, sessions: SessionFactory) -> None:
    job = submit(client, {"kind": "caption", "input": {"image_id": image_id}}).json()
    worker = finish_later(sessions, job["id"], delay_s=0.6)
    started = time.monotonic()
    done = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
    elapsed = time.monotonic() - started
    worker.join()
    # Queued when the wait began (unless a loaded machine began it late): only a wait that lasted
    # until the job finished answers `succeeded`...
    assert done["status"] == "succeeded" and done["result"] == {"captions": ["done"]}
    # ...and it answered then, not when its 30 s ran out.
    assert elapsed < 20, "the long poll answered only when its wait ran out"


def test_long_poll_gives_up_after_wait(client: TestClient, image_id: str) -> None:
    job = submit(client, {"kind": "caption", "input": {"image_id": image_id}}).json()
    started = time.monotonic()
    still = client.get(f"/v1/jobs/{job['id']}", params={"wait": 0.5}).json()
    assert still["status"] == "queued"
    elapsed = time.monotonic() - started
    assert elapsed >= 0.5, "the long poll did not wait"
    assert elapsed < 20, "the long poll waited past the wait asked for, as if for the longest (30 s)"
    assert client.get(f"/v1/jobs/{job['id']}", params={"wait": -1}).status_code == 422


def test_prefer_wait_answers_the_finished_job_in_the_submission(
    client: TestClient, image_id: str, sessions: SessionFactory
) -> None:
    body = {"kind": "caption", "input": {"image_id": image_id}}
    done = threading.Event()

    def finish_once_queued() -> None:  # play the worker: take the job the moment it is committed
        while not done.is_set():
            with session_scope(sessions) as session:
                queued = session.scalars(select(Job.id).where(Job.status == "queued")).all()
            for job_id in queued:
                with session_scope(sessions) as session:
                    if (run := claim_job(session, job_id)) is not None:
                        succeed_job(session, run.attempt, {"captions": ["done"]})
                        return
            time.sleep(0.01)

    worker = threading.Thread(target=finish_once_queued)
    worker.start()
    try:
        response = submit(client, body, Prefer="wait=25")
    finally:
        done.set()
        worker.join()
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["status"], job["result"]) == ("succeeded", {"captions": ["done"]})
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["Preference-Applied"] == "wait=25"


def test_prefer_wait_that_runs_out_answers_202_with_the_job_as_it_is(client: TestClient, image_id: str) -> None:
    started = time.monotonic()
    response = submit(client, {"kind": "caption", "input": {"image_id": image_id}}, Prefer="respond-async, wait=0.5")
    elapsed = time.monotonic() - started
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=0.5"
    assert elapsed >= 0.5, "the submission did not wait"
    # Capped at the long-poll ceiling, like ?wait=.
    capped = submit(client, {"kind": "caption", "input": {"image_id": image_id}}, Prefer="wait=0")
    assert capped.status_code == 202 and "Preference-Applied" not in capped.headers


@pytest.mark.parametrize("prefer", ["respond-async", "wait=soon", "wait=-1", "handling=strict"])
def test_prefer_without_a_wait_it_can_read_is_ignored(client: TestClient, image_id: str, prefer: str) -> None:
    response = submit(client, {"kind": "caption", "input": {"image_id": image_id}}, Prefer=prefer)
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert "Preference-Applied" not in response.headers
