"""Training and evaluation jobs on real processes: train, serve the new model by name at once,
evaluate it; a worker killed mid-training resumes from its checkpoint; a cancel stops training."""

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from blip2.data.formats import dataset_path, open_dataset
from blip2.data.records import Split
from jobs.catalog import tenant_data_dir
from tests.support.auth import TENANT
from tests.support.jobs import run_job as run
from tests.support.jobs import wait_for_job

pytestmark = pytest.mark.slow


@pytest.fixture
def shapes(http: httpx.Client, long_worker: subprocess.Popen[bytes]) -> str:
    """The synthetic shapes dataset, downloaded (generated) through a job; a second download of the
    same source finds it registered and returns at once."""
    job = run(http, {"kind": "download", "input": {"dataset": "shapes"}})
    assert job["status"] == "succeeded", job["error"]
    return "shapes"


def train_body(output: str, **overrides: Any) -> dict[str, Any]:
    settings = {"dataset": "shapes", "task": "caption", "output_model": output, "max_steps": 12, "batch_size": 8,
                "lr": 3e-3, "checkpoint_every": 4, "train": ["qformer", "llm"]} | overrides  # fmt: skip
    return {"kind": "train", "model": "tiny-opt", "input": settings}


def wait_for_step(http: httpx.Client, location: str, step: int, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(location).json()
        if (job["progress_detail"] or {}).get("step", 0) >= step:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.2)
    raise AssertionError(f"training never reached step {step}")


def test_train_then_serve_and_evaluate_the_new_model(http: httpx.Client, shapes: str, worker_settings: Any) -> None:
    trained = run(http, train_body("shapes-test-captioner"))
    assert trained["status"] == "succeeded", trained["error"]
    result = trained["result"]
    assert result["model"] == "shapes-test-captioner" and result["steps"] == 12
    assert {"bleu_4", "cider"} <= set(result["metrics"]) and Path(result["loss_curve"]).is_file()
    assert trained["progress_detail"]["step"] == 12 and trained["progress"] == pytest.approx(1.0)
    curve = http.get(result["loss_curve_url"])  # the PNG the worker saved, served by the API
    assert curve.status_code == 200 and curve.headers["content-type"] == "image/png", curve.text
    assert curve.content == Path(result["loss_curve"]).read_bytes()

    models = {m["name"]: m for m in http.get("/v1/models").json()["data"]}
    assert models["shapes-test-captioner"]["trained"] and models["shapes-test-captioner"]["family"] == "opt"

    # Served by name at once: its base model's workers load it on its first job.
    tenant_dir = tenant_data_dir(worker_settings.BLIP2_DATA_DIR, TENANT)
    record = open_dataset(dataset_path(tenant_dir, "shapes")).captions(Split.TEST)[0]
    image = http.post("/v1/images", files={"file": ("s.png", record.image_path.read_bytes())}).json()["id"]
    captioned = run(http, {"kind": "caption", "model": "shapes-test-captioner", "input": {"image_id": image}})
    assert captioned["status"] == "succeeded", captioned["error"]
    assert captioned["result"]["captions"][0]

    evaluation = {"dataset": "shapes", "split": "test", "task": "caption", "limit": 16}
    scored = run(http, {"kind": "evaluate", "model": "shapes-test-captioner", "input": evaluation})
    assert scored["status"] == "succeeded", scored["error"]
    assert scored["result"]["records"] == 16 and 0 <= scored["result"]["metrics"]["bleu_4"] <= 1


def test_output_names_are_never_reused(http: httpx.Client, shapes: str) -> None:
    response = http.post("/v1/jobs", json=train_body("tiny-opt"))
    assert (response.status_code, response.json()["error"]["code"]) == (409, "model_name_taken")


def test_a_killed_worker_resumes_from_its_checkpoint(
    http: httpx.Client, shapes: str, long_worker: subprocess.Popen[bytes]
) -> None:
    created = http.post("/v1/jobs", json=train_body("shapes-test-resumed", max_steps=300, checkpoint_every=5))
    location = created.headers["Location"]
    wait_for_step(http, location, 7)  # past the checkpoint at step 5
    children = psutil.Process(long_worker.pid).children()
    assert children, "the worker has no child process running the job"
    for child in children:  # the process running the job dies at once, as with an OOM kill
        child.send_signal(signal.SIGKILL)
    done = wait_for_job(http, location, polls=60)  # 300 steps: minutes on a loaded machine
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    # It went on from a checkpoint written before the kill, not from step 0, and finished the run.
    assert 5 <= done["result"]["resumed_from_step"] < 300 and done["result"]["steps"] == 300


def test_cancel_stops_training_and_removes_its_files(http: httpx.Client, shapes: str, worker_settings: Any) -> None:
    created = http.post("/v1/jobs", json=train_body("shapes-test-canceled", max_steps=100_000, checkpoint_every=3))
    location = created.headers["Location"]
    job = wait_for_step(http, location, 2)
    assert http.post(f"{location}/cancel").json()["status"] == "canceled"
    # The worker takes the next job. It runs one job at a time, so once the next one has run, the
    # training has returned, however long it took to see the cancel on a loaded machine.
    evaluation = {"dataset": "shapes", "split": "val", "task": "caption", "limit": 4}
    assert run(http, {"kind": "evaluate", "model": "tiny-opt", "input": evaluation})["status"] == "succeeded"
    stopped = http.get(location).json()
    assert stopped["status"] == "canceled" and stopped["progress_detail"]["step"] < 100_000  # it stopped early
    # No run will resume it: its checkpoint (written every 3 steps, so there was one) went with it.
    assert not (Path(worker_settings.BLIP2_DATA_DIR) / "training" / job["id"]).exists(), "a canceled run's files stayed"
    assert "shapes-test-canceled" not in [m["name"] for m in http.get("/v1/models").json()["data"]]
