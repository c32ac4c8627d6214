"""A long job whose numbers came out NaN, or whose result Postgres still refuses, ends at once and right.

A diverging training's NaN loss used to make its progress write raise, failing hours of training as
`internal_error` with SQL in its message; a NaN metric made its result write raise outside the job's
handler, so the job stayed running until its lease ran out, ran again and failed on its own model name.
Now a NaN or infinite loss or metric is stored, and read back, as null (jobs/outputs.py `Measure`: JSON
has no such numbers), a report Postgres refuses is skipped, and a result it refuses fails the job
`result_not_storable`, as an inference job's does. An embedding is no measure: a NaN in one is a broken
model's output, and Postgres still refuses it.
"""

import logging
import math
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import pytest
import torch
from sqlalchemy.exc import DataError

from jobs.catalog import get_trained_model
from jobs.db import SessionFactory, session_scope
from jobs.kinds import JobKind
from jobs.models import Job
from jobs.outputs import (
    DownloadProgressDetail,
    EmbedOutput,
    EvaluateOutput,
    JobOutput,
    TrainOutput,
    TrainProgressDetail,
)
from jobs.repository import add_job, claim_job, get_job, succeed_job
from jobs.schemas import job_public
from jobs.settings import Settings
from jobs.status import JobStatus
from tests.support.auth import TENANT
from worker import long_jobs
from worker.long_jobs import LongJob, run_long_job
from worker.progress import JobProgress
from worker.runtime import WorkerRuntime


def claimed(sessions: SessionFactory, kind: JobKind, job_input: dict[str, object]) -> Job:
    with session_scope(sessions) as session:
        job = add_job(session, tenant=TENANT, kind=kind, model="tiny-opt", queue="test-non-finite", input=job_input)
        running = claim_job(session, job.id)
    assert running is not None
    return running


def read(sessions: SessionFactory, job_id: UUID) -> Job:
    with session_scope(sessions) as session:
        return get_job(session, job_id)


def test_a_nan_loss_is_reported_as_null_and_the_training_goes_on(sessions: SessionFactory) -> None:
    train = {"dataset": "squares", "output_model": f"diverged-{uuid4().hex[:8]}", "max_steps": 10}
    job = claimed(sessions, JobKind.TRAIN, train)
    progress = JobProgress(job.attempt, sessions, min_interval_s=0)
    progress.report(0.4, TrainProgressDetail(step=4, max_steps=10, epoch=0, loss=math.nan, lr=1e-4, val_loss=math.inf))
    assert not progress.should_stop()
    stored = read(sessions, job.id)
    assert stored.progress_detail is not None
    assert (stored.progress_detail["loss"], stored.progress_detail["val_loss"]) == (None, None)
    public = job_public(stored)
    assert public.progress == 0.4
    assert isinstance(public.progress_detail, TrainProgressDetail), "the progress read back as stored, untyped"
    detail = public.progress_detail
    assert (detail.step, detail.loss, detail.val_loss) == (4, None, None), "a NaN loss did not read back as null"


def test_a_report_postgres_refuses_is_skipped_and_the_job_goes_on(
    sessions: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    job = claimed(sessions, JobKind.DOWNLOAD, {"dataset": "coco-captions"})
    progress = JobProgress(job.attempt, sessions, min_interval_s=0)
    # Postgres's jsonb has no NUL character: the report is refused.
    refused = DownloadProgressDetail(bytes_done=1, bytes_total=2, percent=50.0, url="http://host/a\x00b")
    with caplog.at_level(logging.WARNING, logger="worker.progress"):
        progress.report(0.5, refused)
    assert f"job {job.id}: progress not recorded, Postgres refused it" in caplog.text
    assert not progress.should_stop()
    progress.report(0.75, DownloadProgressDetail(bytes_done=3, bytes_total=4, percent=75.0, url="http://host/ab"))
    assert read(sessions, job.id).progress == 0.75, "a report after a refused one was not recorded"


def test_a_training_result_with_a_nan_loss_and_metric_reads_back_with_nulls() -> None:
    trained = TrainOutput(model="diverged", steps=10, final_loss=math.nan, metrics={"cider": -math.inf, "bleu_4": 0.5},
                          loss_curve="curve.png")  # fmt: skip
    stored = trained.model_dump(mode="json")
    assert (stored["final_loss"], stored["metrics"]) == (None, {"cider": None, "bleu_4": 0.5})
    assert TrainOutput.model_validate(stored).metrics == {"cider": None, "bleu_4": 0.5}, "nulls did not read back"


@pytest.fixture
def runtime(worker_settings: Settings) -> WorkerRuntime:
    return WorkerRuntime(settings=worker_settings, preload=None)


def evaluated_as(
    runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch, output: Callable[[LongJob[Any]], JobOutput]
) -> Job:
    """An evaluate job run by the worker's long-job path, its handler standing in for the model's scoring."""
    monkeypatch.setitem(long_jobs.LONG_HANDLERS, JobKind.EVALUATE, output)
    queue = f"test-non-finite-{uuid4().hex[:8]}"
    with session_scope(runtime.sessions) as session:
        job = add_job(session, tenant=TENANT, kind=JobKind.EVALUATE, model="tiny-opt", queue=queue,
                      input={"dataset": "squares"})  # fmt: skip
    ended = run_long_job(runtime, job.id, f"b-{job.id}", queue=queue)  # nothing escapes the task
    assert ended is not None and ended.id == job.id
    return ended


def test_a_nan_metric_is_stored_as_null_and_reads_typed(
    runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = {"cider": math.nan, "bleu_4": math.inf, "exact_match": 0.5}
    ended = evaluated_as(runtime, monkeypatch, lambda _: EvaluateOutput(metrics=metrics, records=2))
    assert (ended.status, ended.attempts) == (JobStatus.SUCCEEDED, 1), ended.error_message
    assert ended.result == {"metrics": {"cider": None, "bleu_4": None, "exact_match": 0.5}, "records": 2}
    public = job_public(ended)
    assert isinstance(public.result, EvaluateOutput), "the result read back as stored, untyped"
    assert public.result.metrics == {"cider": None, "bleu_4": None, "exact_match": 0.5}


def test_a_result_postgres_refuses_fails_its_long_job_at_once(
    runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended = evaluated_as(runtime, monkeypatch, lambda _: EvaluateOutput(metrics={"cider\x00": 1.0}, records=2))
    assert (ended.status, ended.error_code, ended.attempts) == (JobStatus.FAILED, "result_not_storable", 1)
    assert ended.error_message and ended.error_message.startswith("the result could not be stored: ")
    assert "UPDATE" not in ended.error_message, "the statement's SQL reached the job's error message"


def test_a_nan_embedding_is_still_refused(sessions: SessionFactory) -> None:
    job = claimed(sessions, JobKind.EMBED, {"mode": "text", "text": "a red square"})
    result = EmbedOutput(embedding=[0.5, math.nan], dim=2).model_dump(mode="json")
    with pytest.raises(DataError, match="json"), session_scope(sessions) as session:
        succeed_job(session, job.attempt, result)


def test_a_trained_model_with_a_nan_metric_is_registered_with_null(
    runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registration's row keeps the metrics too: a NaN there failed the finished training."""
    name = f"nan-{uuid4().hex[:8]}"

    def trained(long_job: LongJob[Any]) -> JobOutput:  # stands in for the steps; registers as run_train does
        metrics = long_jobs._register_trained(long_job, "opt", {"val_loss": math.nan, "cider": 2.0})
        return TrainOutput(model=name, steps=1, final_loss=math.inf, metrics=metrics, loss_curve="-")

    monkeypatch.setitem(long_jobs.LONG_HANDLERS, JobKind.TRAIN, trained)
    queue = f"test-non-finite-{uuid4().hex[:8]}"
    with session_scope(runtime.sessions) as session:
        job = add_job(session, tenant=TENANT, kind=JobKind.TRAIN, model="tiny-opt", queue=queue,
                      input={"dataset": "squares", "output_model": name})  # fmt: skip
    ended = run_long_job(runtime, job.id, f"b-{job.id}", queue=queue)
    assert ended is not None and ended.status is JobStatus.SUCCEEDED, ended and ended.error_message
    assert ended.result is not None and ended.result["metrics"] == {"val_loss": None, "cider": 2.0}
    assert ended.result["final_loss"] is None
    with session_scope(runtime.sessions) as session:
        registered = get_trained_model(session, TENANT, name)
        assert registered is not None and registered.metrics == {"val_loss": None, "cider": 2.0}


def test_a_long_job_out_of_memory_fails_as_out_of_memory(
    runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training too large for its device gets the code an inference job gets (it was internal_error).
    A CUDA device cannot run out here: its error stands in."""

    def too_large(_: LongJob[Any]) -> JobOutput:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    ended = evaluated_as(runtime, monkeypatch, too_large)
    assert (ended.status, ended.error_code) == (JobStatus.FAILED, "out_of_memory"), ended.error_message
    assert ended.error_message is not None and "batch_size" in ended.error_message
