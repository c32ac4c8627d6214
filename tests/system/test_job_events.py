"""GET /v1/jobs/{id}/events over real HTTP with a real worker: the job's changes as server-sent events,
ending with `event: end` and the finished job."""

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.auth import bearer
from tests.support.images import png_bytes


@dataclass(frozen=True)
class Event:
    """One server-sent event: its type and its JSON data."""

    event: str
    data: dict[str, Any]


def parse_events(lines: Iterator[str]) -> Iterator[Event]:
    """Events from an event stream's lines (blank-line separated; comment lines, the keep-alives, skipped)."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield Event(event, json.loads("\n".join(data)))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))


def stream(http: httpx.Client, job_id: str) -> list[Event]:
    """Every event of the job's stream, read until the server closes it."""
    with http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return list(parse_events(response.iter_lines()))


def submit(http: httpx.Client, body: dict[str, Any]) -> str:
    created = http.post("/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    return str(created.json()["id"])


def test_a_caption_job_streams_to_its_result(http: httpx.Client) -> None:
    image_id = http.post("/v1/images", files={"file": ("x.png", png_bytes(color=(1, 2, 250)))}).json()["id"]
    job_id = submit(http, {"kind": "caption", "input": {"image_id": image_id, "max_new_tokens": 4}})
    events = stream(http, job_id)
    assert [e.event for e in events[:-1]] == ["job"] * (len(events) - 1) and events[-1].event == "end"
    end = events[-1].data
    assert end["id"] == job_id and end["status"] == "succeeded" and len(end["result"]["captions"]) == 1
    assert end == http.get(f"/v1/jobs/{job_id}").json(), "the last event is the finished job"
    assert all(e.data["status"] in ("queued", "running") for e in events[:-1])


@pytest.mark.slow
def test_a_training_job_streams_its_progress(http: httpx.Client, long_worker: subprocess.Popen[bytes]) -> None:
    download = submit(http, {"kind": "download", "input": {"dataset": "shapes"}})
    assert stream(http, download)[-1].data["status"] == "succeeded"
    train = {"dataset": "shapes", "task": "caption", "output_model": "shapes-events-test", "max_steps": 6,
             "batch_size": 4, "checkpoint_every": 6}  # fmt: skip
    events = stream(http, submit(http, {"kind": "train", "model": "tiny-opt", "input": train}))
    assert events[-1].event == "end" and events[-1].data["status"] == "succeeded", events[-1].data["error"]
    running = [e.data for e in events if e.data["status"] == "running"]
    steps = [job["progress_detail"]["step"] for job in running if job["progress_detail"]]
    assert steps and steps[0] >= 1, "no progress event with a training step"
    assert steps == sorted(steps), "progress went backwards"
    assert any(0 < job["progress"] < 1 for job in running), "no event between the start and the end"


def test_another_tenants_job_is_not_found(http: httpx.Client, other_api_key: str) -> None:
    job_id = submit(http, {"kind": "embed", "model": "tiny-itm", "input": {"mode": "text", "text": "a cat"}})
    other = http.get(f"/v1/jobs/{job_id}/events", headers=bearer(other_api_key))
    assert (other.status_code, other.json()["error"]["code"]) == (404, "job_not_found")
    assert http.get(f"/v1/jobs/{job_id}/events", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert stream(http, job_id)[-1].data["status"] == "succeeded"
