"""Training files of ended jobs are removed (worker/leftovers.py); those of unfinished jobs, and models, stay.

A training job that failed, was canceled or was lost for the last time used to leave its resume
checkpoint (`training/<job id>`) and its unregistered saved model (`models/.<name>.<job id>`) on disk
for ever: each as large as the model. Real rows in Postgres, real directories.
"""

from pathlib import Path
from uuid import UUID, uuid4

import pytest

from jobs.catalog import tenant_data_dir
from jobs.db import SessionFactory, session_scope
from jobs.inputs import TrainInput
from jobs.kinds import JobKind
from jobs.repository import add_job, cancel_job, claim_job, fail_unfinished_job
from jobs.settings import Settings
from jobs.status import JobStatus
from tests.support.auth import TENANT
from worker.leftovers import remove_ended_training_files
from worker.long_jobs import run_long_job
from worker.runtime import WorkerRuntime


def train_job(sessions: SessionFactory, queue: str, dataset: str = "squares") -> UUID:
    """A queued training job, on a queue no worker serves."""
    job_input = TrainInput.model_validate({"dataset": dataset, "output_model": f"m-{uuid4().hex[:8]}", "max_steps": 2})
    with session_scope(sessions) as session:
        return add_job(session, tenant=TENANT, kind=JobKind.TRAIN, model="tiny-opt", queue=queue,
                       input=job_input.model_dump(mode="json")).id  # fmt: skip


def files_of(data_dir: Path, job_id: UUID, name: str = "mine") -> list[Path]:
    """The two directories a training job writes, made as a run that stopped midway leaves them."""
    paths = [data_dir / "training" / str(job_id), tenant_data_dir(data_dir, TENANT) / "models" / f".{name}.{job_id}"]
    for path in paths:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"weights")
    return paths


def test_the_files_of_ended_jobs_go_and_the_rest_stay(sessions: SessionFactory, tmp_path: Path) -> None:
    queue = f"test-leftovers-{uuid4().hex[:8]}"
    failed, canceled, queued, running = (train_job(sessions, queue) for _ in range(4))
    with session_scope(sessions) as session:
        assert fail_unfinished_job(session, failed, "worker_lost", "its worker died 3 times") is not None
        cancel_job(session, canceled, TENANT)
        assert claim_job(session, running, "b") is not None
    ended = files_of(tmp_path, failed) + files_of(tmp_path, canceled)
    unfinished = files_of(tmp_path, queued) + files_of(tmp_path, running)
    models = tenant_data_dir(tmp_path, TENANT) / "models"
    others = [models / "mine", models / ".not-a-job", tmp_path / "training" / "notes", models / f".x.{uuid4()}"]
    for path in others:  # a registered model; names that are no job's; a job no row knows
        path.mkdir(parents=True)

    removed = remove_ended_training_files(tmp_path, sessions)

    assert sorted(removed) == sorted(ended)
    assert not any(path.exists() for path in ended)
    assert all((path / "model.safetensors").exists() for path in unfinished), "an unfinished job lost its files"
    assert all(path.is_dir() for path in others)
    assert remove_ended_training_files(tmp_path, sessions) == []


def test_nothing_to_look_at_asks_nothing(tmp_path: Path) -> None:
    class NoDatabase:
        def __call__(self) -> None:
            raise AssertionError("Postgres was asked with no training directories on disk")

    assert remove_ended_training_files(tmp_path / "fresh", NoDatabase()) == []  # type: ignore[arg-type]


@pytest.fixture
def runtime(worker_settings: Settings, tmp_path: Path) -> WorkerRuntime:
    """A worker runtime with a data directory of its own (models load from the shared one: none here)."""
    settings = worker_settings.model_copy(update={"BLIP2_DATA_DIR": tmp_path})
    return WorkerRuntime(settings=settings, preload=None)


def test_a_training_job_that_fails_leaves_no_files_and_takes_ended_jobs_files_with_it(
    runtime: WorkerRuntime, tmp_path: Path
) -> None:
    queue = f"test-leftovers-{uuid4().hex[:8]}"
    earlier = train_job(runtime.sessions, queue=queue)
    with session_scope(runtime.sessions) as session:
        assert fail_unfinished_job(session, earlier, "internal_error", "failed on another worker") is not None
    earlier_files = files_of(tmp_path, earlier)
    # Its earlier attempt's files (a worker died), and a dataset that is no longer there: it fails.
    job = train_job(runtime.sessions, queue=queue, dataset="gone")
    own_files = files_of(tmp_path, job)

    ended = run_long_job(runtime, job, f"b-{job}", queue=queue)

    assert ended is not None and ended.id == job
    assert ended.status is JobStatus.FAILED, ended.result
    assert not any(path.exists() for path in own_files + earlier_files), "a failed training job left its files"


@pytest.mark.parametrize("trains", [True, False])
def test_a_training_worker_removes_ended_jobs_files_as_its_job_process_starts(
    worker_settings: Settings, tmp_path: Path, trains: bool
) -> None:
    """A job lost with a worker that never came back left its files; the next worker of the training
    queue removes them as it starts, before any training job ends there. Other workers leave them."""
    settings = worker_settings.model_copy(update={"BLIP2_DATA_DIR": tmp_path})
    setup = WorkerRuntime(settings=settings, preload=None)
    lost = train_job(setup.sessions, queue=f"test-leftovers-{uuid4().hex[:8]}")
    with session_scope(setup.sessions) as session:
        assert claim_job(session, lost, "b-gone") is not None
        assert fail_unfinished_job(session, lost, "worker_lost", "its worker died 3 times") is not None
    paths = files_of(tmp_path, lost)

    WorkerRuntime(settings=settings, preload=None, trains=trains).start()

    assert [path.exists() for path in paths] == [not trains] * len(paths)
