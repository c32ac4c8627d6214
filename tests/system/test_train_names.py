"""A training job never writes over a registered model, on a real long worker.

A job trains into a directory of its own (`models/.NAME.JOB_ID`) and moves its model under NAME only
in the transaction that registers the name. Before, it saved straight over `models/NAME` and only then
found the name registered: the job failed, but the registered model's files were now the second job's
weights, under the first job's metrics.

The submission refuses such a second job (tests/jobs/test_output_model_names.py); here it is written
straight to the table, as one the old code accepted would be.
"""

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from sqlalchemy.orm import Session

from jobs.broker import Dispatcher, JobMessage
from jobs.catalog import get_trained_model, tenant_data_dir
from jobs.db import SessionFactory, session_scope
from jobs.inputs import TrainInput
from jobs.kinds import JobKind
from jobs.models import Job, TrainedModel
from jobs.repository import add_job
from jobs.settings import Settings
from tests.support.auth import TENANT
from tests.support.jobs import run_job, wait_for_job

pytestmark = pytest.mark.slow

# A few steps: what is checked is where the files go, not what the model learns.
SHORT = {"dataset": "shapes", "task": "caption", "max_steps": 2, "batch_size": 4, "checkpoint_every": 2}


@pytest.fixture
def shapes(http: httpx.Client, long_worker: subprocess.Popen[bytes]) -> str:
    job = run_job(http, {"kind": "download", "input": {"dataset": "shapes"}})
    assert job["status"] == "succeeded", job["error"]
    return "shapes"


@pytest.fixture
def models_of_tenant(worker_settings: Settings) -> Path:
    return tenant_data_dir(worker_settings.BLIP2_DATA_DIR, TENANT) / "models"


def file_hashes(directory: Path) -> dict[str, str]:
    """Every file under `directory` by its relative path, with the SHA-256 of its bytes."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


def queued_directly(session: Session, name: str, **settings: Any) -> Job:
    """A queued training job of `name` written straight to the table, past the submission's checks
    (its message is for the caller to send once it has committed)."""
    job_input = TrainInput.model_validate(SHORT | {"output_model": name} | settings)
    return add_job(session, tenant=TENANT, kind=JobKind.TRAIN, model="tiny-opt", queue="train",
                   input=job_input.model_dump(mode="json", exclude_none=True))  # fmt: skip


def registered(sessions: SessionFactory, name: str) -> tuple[UUID | None, dict[str, float]]:
    with session_scope(sessions) as session:
        model = get_trained_model(session, TENANT, name)
        assert model is not None, f"{name!r} is not registered"
        return model.job_id, dict(model.metrics)


def test_a_second_job_of_a_registered_name_fails_and_leaves_its_files_alone(
    http: httpx.Client, shapes: str, sessions: SessionFactory, dispatcher: Dispatcher, models_of_tenant: Path
) -> None:
    first = run_job(http, {"kind": "train", "model": "tiny-opt", "input": SHORT | {"output_model": "names-kept"}})
    assert first["status"] == "succeeded", first["error"]
    kept = models_of_tenant / "names-kept"
    files, row = file_hashes(kept), registered(sessions, "names-kept")
    assert "model.safetensors" in files and row[0] == UUID(first["id"])

    with session_scope(sessions) as session:
        second = queued_directly(session, "names-kept", seed=7, lr=3e-3)  # other weights than the first's
    dispatcher.try_send_all([JobMessage.of(second)])
    done = wait_for_job(http, f"/v1/jobs/{second.id}")
    assert (done["status"], done["error"]["code"]) == ("failed", "invalid_argument"), done
    assert "names-kept" in done["error"]["message"]
    assert file_hashes(kept) == files, "the second job wrote over the registered model's files"
    assert registered(sessions, "names-kept") == row, "the registration changed"
    assert not list(models_of_tenant.glob(".names-kept*")), "the second job's own directory was left behind"


def test_a_job_that_registered_its_name_before_it_stopped_keeps_that_model(
    http: httpx.Client, shapes: str, sessions: SessionFactory, dispatcher: Dispatcher, models_of_tenant: Path,
    worker_settings: Settings,
) -> None:  # fmt: skip
    """A run that registered the model and moved its files in, then died before the job's result was
    stored: the job runs again, finds the name its own and succeeds with that model, as registered."""
    shutil.copytree(worker_settings.BLIP2_DATA_DIR / "models" / "tiny-opt", models_of_tenant / "names-resumed")
    files, metrics = file_hashes(models_of_tenant / "names-resumed"), {"bleu_4": 0.25}
    with session_scope(sessions) as session:  # the job and its registration commit together
        job = queued_directly(session, "names-resumed")
        session.add(TrainedModel(tenant=TENANT, name="names-resumed", family="opt",
                                 path=str(models_of_tenant / "names-resumed"), base_model="tiny-opt", task="caption",
                                 dataset="shapes", metrics=metrics, job_id=job.id))  # fmt: skip
    dispatcher.try_send_all([JobMessage.of(job)])
    done = wait_for_job(http, f"/v1/jobs/{job.id}")
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["metrics"] == metrics, "the result does not describe the registered model"
    assert file_hashes(models_of_tenant / "names-resumed") == files
    assert not list(models_of_tenant.glob(".names-resumed*"))
