"""The whole system over real HTTP: submit -> poll -> result for every kind, recovery, Flower."""

import io
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.db import SessionFactory, session_scope
from jobs.kinds import JobKind
from jobs.queues import queue_for_model
from jobs.repository import add_job
from jobs.settings import Settings
from tests.support.auth import TENANT
from tests.support.jobs import run_job as run
from tests.support.jobs import upload


@pytest.fixture
def red(http: httpx.Client) -> str:
    return upload(http, (220, 20, 20))


@pytest.mark.parametrize(
    ("kind", "model", "job_input", "check"),
    [
        ("caption", "tiny-opt", {"prompt": "a photo of", "decoding": {"max_new_tokens": 5}},
         lambda r: len(r["captions"]) == 1 and isinstance(r["captions"][0], str)),
        ("caption", "tiny-t5", {"style": "detailed", "decoding": {"num_beams": 3, "num_captions": 2}},
         lambda r: len(r["captions"]) == 2),
        ("vqa", "tiny-opt", {"question": "what colour is it?", "examples": [{"question": "sky?", "answer": "blue"}]},
         lambda r: isinstance(r["answer"], str)),
        ("instruct", "tiny-instruct", {"instruction": "describe the picture", "decoding": {"max_new_tokens": 8}},
         lambda r: isinstance(r["text"], str)),
        ("embed", "tiny-itm", {"mode": "image"},
         lambda r: r["dim"] == len(r["embedding"]) > 0 and r["query_embeddings"]),
        ("match", "tiny-itm", {"texts": ["a red square", "a blue sky"]},
         lambda r: sorted(s["index"] for s in r["scores"]) == [0, 1]
         and r["scores"][0]["itm"] >= r["scores"][1]["itm"]),
    ],
)  # fmt: skip
def test_each_kind_end_to_end(
    http: httpx.Client, red: str, kind: str, model: str, job_input: dict[str, Any], check: Any
) -> None:
    # cache false: run by the worker even if an identical job ran before (attempts 1, not a cached 0)
    job = run(http, {"kind": kind, "model": model, "input": {"image_id": red} | job_input, "cache": False})
    assert job["status"] == "succeeded", job["error"]
    assert check(job["result"]), job["result"]
    assert job["attempts"] == 1 and job["finished_at"] >= job["started_at"] >= job["created_at"]


def test_embed_text_and_match_images(http: httpx.Client, red: str) -> None:
    blue = upload(http, (20, 20, 220))
    text = run(http, {"kind": "embed", "model": "tiny-itm", "input": {"mode": "text", "text": "a red square"}})
    assert text["status"] == "succeeded" and text["result"]["dim"] > 0
    ranked = run(http, {"kind": "match", "model": "tiny-itm", "input": {"text": "red", "image_ids": [red, blue]}})
    assert sorted(s["index"] for s in ranked["result"]["scores"]) == [0, 1]


def test_job_results_are_the_library_results(http: httpx.Client, photos: dict[str, Any], models_dir: Path) -> None:
    """The worker adds nothing and loses nothing: a job's result is what blip2 gives in-process."""
    from blip2.caption import caption
    from blip2.decoding import DecodingOptions
    from blip2.loading import load_model
    from blip2.matching import rank_texts

    buffer = io.BytesIO()
    photos["chelsea"].save(buffer, format="PNG")
    image_id = http.post("/v1/images", files={"file": ("cat.png", buffer.getvalue())}).json()["id"]
    decoding = {"num_beams": 3, "max_new_tokens": 6, "min_new_tokens": 3, "num_captions": 2}
    job = run(http, {"kind": "caption", "model": "tiny-t5", "input": {"image_id": image_id, **decoding}})
    expected = caption(
        load_model("tiny-t5", data_dir=models_dir), [photos["chelsea"]], decoding=DecodingOptions(**decoding)
    )
    assert job["result"]["captions"] == expected[0].captions

    texts = ["a cat", "an astronaut", "a cup of coffee"]
    job = run(http, {"kind": "match", "model": "tiny-itm", "input": {"image_id": image_id, "texts": texts}})
    scores = rank_texts(load_model("tiny-itm", data_dir=models_dir), photos["chelsea"], texts)
    assert [s["index"] for s in job["result"]["scores"]] == [s.index for s in scores]
    assert [s["itm"] for s in job["result"]["scores"]] == pytest.approx([s.itm for s in scores], abs=1e-6)


def test_what_can_only_fail_is_refused_at_submission(http: httpx.Client, red: str) -> None:
    """Matching on a captioning model, captions from a retrieval model, more new tokens than the model has
    positions: 422 naming the field, and no job row."""
    before = http.get("/v1/jobs", params={"limit": 100}).json()["data"]
    refused = [
        ({"kind": "match", "model": "tiny-opt", "input": {"image_id": red, "texts": ["a"]}}, "model"),
        ({"kind": "vqa", "model": "tiny-itm", "input": {"image_id": red, "question": "what?"}}, "model"),
        ({"kind": "caption", "model": "tiny-opt", "input": {"image_id": red, "max_new_tokens": 512}},
         "input.decoding.max_new_tokens"),
    ]  # fmt: skip
    for body, field in refused:
        response = http.post("/v1/jobs", json=body)
        assert response.status_code == 422, response.text
        assert (response.json()["error"]["code"], response.json()["error"]["field"]) == ("unsupported_operation", field)
    assert http.get("/v1/jobs", params={"limit": 100}).json()["data"] == before


def test_lost_message_is_recovered_by_the_sweeper(http: httpx.Client, red: str, sessions: SessionFactory) -> None:
    # As if the API died between committing the row and sending its message.
    with session_scope(sessions) as session:
        job = add_job(
            session, tenant=TENANT, kind=JobKind.CAPTION, model="tiny-opt", queue=queue_for_model("tiny-opt"),
            input={"image_id": red, "decoding": {"max_new_tokens": 3}},
        )  # fmt: skip
    done = http.get(f"/v1/jobs/{job.id}", params={"wait": 30}).json()
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1


def test_readyz(http: httpx.Client) -> None:
    assert http.get("/readyz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    "path", ["/", "/workers", "/tasks", "/api/workers", "/api/tasks", "/api/queues/length", "/metrics"]
)
def test_flower_and_its_api_need_the_password(flower_url: str, settings: Settings, path: str) -> None:
    assert httpx.get(f"{flower_url}{path}").status_code == 401
    assert httpx.get(f"{flower_url}{path}", auth=(settings.FLOWER_USER, "wrong")).status_code == 401
    response = httpx.get(f"{flower_url}{path}", auth=(settings.FLOWER_USER, settings.FLOWER_PASSWORD))
    assert response.status_code == 200
