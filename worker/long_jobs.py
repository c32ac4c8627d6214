"""Download, train and evaluate jobs: long work on the `download` and `train` queues.

Each message claims the next job on its queue and runs it to a typed output, reporting typed progress
on the job row and stopping early when the job is canceled. Which job is next is the inference
queues' rule (jobs/claims.py) with batches of one: interactive before batch priority, then tenants
in turns by weight, so one tenant's twenty training jobs do not hold back another's first. (Every
long kind has the same time limits, so a message may run a job of another kind of its queue.)

Models load through the worker's holder, with the worker's device, dtype and quantization, as fresh
copies the job does not share (training changes the weights) and does not keep. Files go under
BLIP2_DATA_DIR, which workers on several machines share:

    tenants/TENANT/datasets/NAME/         a registered dataset (files + dataset.json)
    tenants/TENANT/models/NAME/           a trained model, a complete Hugging Face checkpoint
    tenants/TENANT/models/.NAME.JOB_ID/   a training job's model, until it registers NAME as its own
    training/JOB_ID/                      a training job's last checkpoint, for resuming after a worker dies

A job's two directories go when it succeeds, and when it ends any other way, after the next training
job (worker/leftovers.py).
"""

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from blip2.errors import Blip2Error, DatasetNotFound, InvalidArgument
from jobs.catalog import (
    LOSS_CURVE_FILE,
    get_dataset,
    get_trained_model,
    loss_curve_url,
    save_dataset,
    save_trained_model,
    tenant_data_dir,
)
from jobs.claims import BatchRules, claim_batch, queue_of
from jobs.db import is_connection_error
from jobs.errors import JobsError
from jobs.inputs import DownloadInput, EvaluateInput, JobInput, TrainInput
from jobs.kinds import KINDS, JobKind
from jobs.models import Dataset, Job, TrainedModel
from jobs.outputs import (
    DownloadOutput,
    DownloadProgressDetail,
    EvaluateOutput,
    EvaluateProgressDetail,
    JobOutput,
    TrainOutput,
    TrainProgressDetail,
    null_unless_finite,
)
from jobs.repository import fail_job, find_job, succeed_job
from worker import soft_limit
from worker.batches import is_out_of_memory
from worker.db_retry import retry_transaction
from worker.leftovers import sweep_ended_training_files
from worker.progress import JobProgress, heartbeating
from worker.runtime import WorkerRuntime

if TYPE_CHECKING:
    from blip2.data.formats import Dataset as OpenedDataset
    from blip2.data.records import CaptionRecord, VqaRecord

log = logging.getLogger(__name__)

T = TypeVar("T")
InputT = TypeVar("InputT", bound=JobInput)


class JobCanceled(Exception):
    """The job was canceled while it ran; it stopped at a step boundary and records nothing."""


@dataclass(frozen=True)
class LongJob(Generic[InputT]):
    """A claimed long job: its row, its typed input, and its link for progress and cancellation."""

    job: Job
    input: InputT
    runtime: WorkerRuntime
    progress: JobProgress

    @property
    def data_dir(self) -> Path:
        """The tenant's own directory under BLIP2_DATA_DIR."""
        return tenant_data_dir(self.runtime.settings.BLIP2_DATA_DIR, self.job.tenant)

    def transaction(self, what: str, work: Callable[[Session], T]) -> T:
        settings = self.runtime.settings
        return retry_transaction(self.runtime.sessions, work, what=what, limit_s=settings.DB_RETRY_S)


def run_long_job(
    runtime: WorkerRuntime,
    message_job: UUID,
    batch_id: str,
    on_claimed: Callable[[list[Job]], None] | None = None,
    queue: str | None = None,
) -> Job | None:
    """Claim the next long job on the message's queue (`queue`, else the queue of `message_job`) and run
    it; the job as it ended, or None if nothing was queued there. `on_claimed` hears of the job once it
    is claimed (the dashboard's events)."""

    def claim(session: Session) -> list[Job]:
        where = queue or queue_of(session, message_job)
        return [] if where is None else claim_batch(session, where, batch_id, _rules(runtime))

    claimed = _transaction(runtime, f"claiming the next job (message of job {message_job})", claim)
    if not claimed:
        log.info("nothing queued on %s (job %s already ran, or was canceled); message dropped",
                 queue or "its queue", message_job)  # fmt: skip
        return None
    job = claimed[0]
    if job.id != message_job:
        log.info("job %s runs first, its tenant's turn (message of job %s)", job.id, message_job)
    if on_claimed is not None:
        on_claimed([job])
    try:
        job_input = KINDS[job.kind].parse(job.input)
    except ValidationError as exc:  # a row written by hand, or by an older version: it fails alone
        message = f"the stored input is not a {job.kind.value} input: {exc}"
        _fail(runtime, job, "invalid_input", message, started=time.monotonic())
    else:
        progress = JobProgress(job.attempt, runtime.sessions)
        with heartbeating([job.attempt], runtime.sessions, runtime.settings.HEARTBEAT_INTERVAL_S):
            _run_to_an_end(LongJob(job, job_input, runtime, progress))
    ended = _transaction(runtime, f"reading job {job.id}", lambda s: find_job(s, job.id))
    if job.kind is JobKind.TRAIN:  # its files if it did not succeed, and those of any other that ended
        sweep_ended_training_files(runtime.settings.BLIP2_DATA_DIR, runtime.sessions)
    return ended


def _rules(runtime: WorkerRuntime) -> BatchRules:
    """Long jobs run one at a time, each counted as one turn of its tenant, however long it runs."""
    max_wait = timedelta(seconds=runtime.settings.BATCH_PRIORITY_MAX_WAIT_S)
    return BatchRules(batch_size=1, cost=lambda _: 1, batch_max_wait=max_wait)


def _run_to_an_end(long_job: LongJob[Any]) -> None:
    """Run the job's handler and record its outcome with the time it took (the tenant's usage)."""
    job, started = long_job.job, time.monotonic()
    try:
        output = LONG_HANDLERS[job.kind](long_job)
        soft_limit.check()  # it fired, and whatever ran then swallowed it (worker/soft_limit.py)
    except JobCanceled as exc:
        log.info("job %s canceled while running: %s", job.id, exc)
        return
    except (Blip2Error, JobsError) as exc:
        return _fail(long_job.runtime, job, exc.code, str(exc), started)
    except SoftTimeLimitExceeded:
        return _fail(long_job.runtime, job, "time_limit_exceeded", "the job ran past the soft time limit", started)
    except Exception as exc:
        if is_connection_error(exc):
            raise  # Postgres went away: not the job's fault; its lease runs out and it runs again
        if is_out_of_memory(exc):  # as an inference job's: a code the client can act on
            log.warning("job %s ran out of memory: %s", job.id, exc)
            message = (
                f"out of memory: {exc} (a smaller batch_size, with grad_accum_steps to make up for it, needs less)"
            )
            return _fail(long_job.runtime, job, "out_of_memory", message, started)
        log.exception("job %s failed unexpectedly", job.id)
        return _fail(long_job.runtime, job, "internal_error", f"{type(exc).__name__}: {exc}", started)
    result, seconds = output.model_dump(mode="json"), time.monotonic() - started
    what = f"recording job {job.id}'s result"

    def record(session: Session) -> Job | None:
        return succeed_job(session, job.attempt, result, seconds)

    try:
        try:
            recorded = long_job.transaction(what, record)
        except SoftTimeLimitExceeded:  # it fired while the result was being written: the result is known
            recorded = long_job.transaction(what, record)
    except DBAPIError as exc:  # as an inference job's (worker/batches.py): it fails now, not after its lease
        if is_connection_error(exc):
            raise
        message = f"the result could not be stored: {exc.orig}"
        return _fail(long_job.runtime, job, "result_not_storable", message, started)
    if recorded is None:
        log.info("job %s was canceled while it ran; its result is dropped", job.id)


def _fail(runtime: WorkerRuntime, job: Job, code: str, message: str, started: float) -> None:
    log.info("job %s failed: %s: %s", job.id, code, message)
    seconds = time.monotonic() - started
    _transaction(runtime, "recording an error", lambda s: fail_job(s, job.attempt, code, message, seconds))


# ---- download -------------------------------------------------------------------------------


def run_download(long_job: LongJob[DownloadInput]) -> DownloadOutput:
    from blip2.data.download import DownloadProgress
    from blip2.data.formats import dataset_path
    from blip2.data.manifest import fetch_dataset, fetch_url
    from blip2.data.url_guard import guarded_client

    job, job_input, progress = long_job.job, long_job.input, long_job.progress

    def on_progress(p: DownloadProgress) -> None:
        fraction = p.bytes_done / p.bytes_total if p.bytes_total else 0.0
        progress.report(fraction, DownloadProgressDetail(bytes_done=p.bytes_done, bytes_total=p.bytes_total,
                                                         percent=p.percent, url=p.url))  # fmt: skip

    hooks: dict[str, Any] = {"on_progress": on_progress, "should_stop": progress.should_stop}
    # Every request, redirects included, is checked against internal addresses (SSRF).
    with guarded_client(long_job.runtime.settings.fetch_allowed_hosts) as client:
        if job_input.dataset is not None:
            info = fetch_dataset(job_input.dataset, long_job.data_dir, client=client, **hooks)
        else:
            assert job_input.url and job_input.sha256 and job_input.name and job_input.format  # DownloadInput checks
            info = fetch_url(job_input.url, job_input.sha256, job_input.name, job_input.format, long_job.data_dir,
                             options=job_input.options, client=client, **hooks)  # fmt: skip
    row = Dataset(
        tenant=job.tenant,
        name=info.name,
        format=info.format,
        path=str(dataset_path(long_job.data_dir, info.name)),
        tasks=info.tasks,
        splits=info.splits,
        source=job_input.dataset or job_input.url,
        job_id=job.id,
    )
    long_job.transaction("registering a dataset", lambda s: save_dataset(s, row))
    log.info("dataset %s registered: %s", info.name, info.splits)
    return DownloadOutput(dataset=info.name, format=info.format, tasks=info.tasks, splits=info.splits)


# ---- train ----------------------------------------------------------------------------------


def run_train(long_job: LongJob[TrainInput]) -> TrainOutput:
    from blip2.training import TrainConfig, TrainProgress, start_from, train

    job, job_input, progress = long_job.job, long_job.input, long_job.progress
    lm = long_job.runtime.models.load_fresh(job.model, job.tenant)
    if job_input.start_from is not None:
        start_from(lm, long_job.runtime.models.load_fresh(job_input.start_from, job.tenant))
    dataset = _open_dataset(long_job, job_input.dataset)
    config = TrainConfig(
        task=job_input.task,
        max_steps=job_input.max_steps,
        batch_size=job_input.batch_size,
        lr=job_input.lr,
        grad_accum_steps=job_input.grad_accum_steps,
        checkpoint_every=job_input.checkpoint_every,
        train=tuple(job_input.train),
        seed=job_input.seed,
        swap_negatives=tuple(tuple(group) for group in job_input.swap_negatives),
    )
    if job_input.warmup_steps is not None:
        config = replace(config, warmup_steps=job_input.warmup_steps)

    def on_progress(p: TrainProgress) -> None:
        detail = TrainProgressDetail(step=p.step, max_steps=p.max_steps, epoch=p.epoch, loss=p.loss, lr=p.lr,
                                     val_loss=p.val_loss, elapsed_s=p.elapsed_s)  # fmt: skip
        progress.report(p.step / p.max_steps, detail, force=p.step == p.max_steps)

    work_dir = long_job.runtime.settings.BLIP2_DATA_DIR / "training" / str(job.id)
    train_records, val_records = _records(dataset, job_input.task, "train"), _records(dataset, job_input.task, "val")
    result = train(lm, train_records, val_records, config, output_dir=_saved_dir(long_job), work_dir=work_dir,
                   on_progress=on_progress, should_stop=progress.should_stop)  # fmt: skip
    if result.stopped:
        raise JobCanceled(f"training stopped at step {result.steps}")
    metrics = _register_trained(long_job, lm.family.value, result.metrics)
    shutil.rmtree(work_dir, ignore_errors=True)  # the finished model replaces the resume checkpoint
    return TrainOutput(
        model=job_input.output_model,
        steps=result.steps,
        final_loss=result.final_loss,
        metrics=metrics,
        loss_curve=str(_output_dir(long_job) / LOSS_CURVE_FILE),
        loss_curve_url=loss_curve_url(job_input.output_model),
        resumed_from_step=result.resumed_from,
    )


def _output_dir(long_job: LongJob[TrainInput]) -> Path:
    """Where the job's model is served from once it is registered under its output_model."""
    return long_job.data_dir / "models" / long_job.input.output_model


def _saved_dir(long_job: LongJob[TrainInput]) -> Path:
    """Where the job saves its model until the name is its own: a directory no other job writes (and no
    model is named: names never start with ".")."""
    return _output_dir(long_job).with_name(f".{long_job.input.output_model}.{long_job.job.id}")


def _register_trained(
    long_job: LongJob[TrainInput], family: str, measured: dict[str, float]
) -> dict[str, float | None]:
    """Register the model under the job's output_model and move its files there, in one transaction:
    a concurrent registration of the name waits for it to end, and one that ended first keeps its model
    and files as they are, while this job fails. The registered model's metrics."""
    from blip2.training import move_trained_model

    job, job_input = long_job.job, long_job.input
    saved, output_dir = _saved_dir(long_job), _output_dir(long_job)
    metrics = {name: null_unless_finite(value) for name, value in measured.items()}  # jsonb holds no NaN
    row = TrainedModel(tenant=job.tenant, name=job_input.output_model, family=family, path=str(output_dir),
                       base_model=job.model, task=job_input.task, dataset=job_input.dataset, metrics=metrics,
                       job_id=job.id)  # fmt: skip

    def claim(session: Session) -> dict[str, float | None] | None:
        if save_trained_model(session, row):
            if saved.exists():  # else a try whose commit was lost moved it, and what it moved is this job's
                move_trained_model(saved, output_dir)
            return metrics
        holder = get_trained_model(session, job.tenant, row.name)
        # A run of this job registered it (and moved its files) before it stopped: that model stays.
        return holder.metrics if holder is not None and holder.job_id == job.id else None

    registered = long_job.transaction("registering a trained model", claim)
    shutil.rmtree(saved, ignore_errors=True)  # gone already once moved
    if registered is None:
        raise InvalidArgument(
            f"a model named {job_input.output_model!r} is registered by another job; that model is kept as it"
            " was, and this job's is discarded"
        )
    return registered


# ---- evaluate -------------------------------------------------------------------------------


def run_evaluate(long_job: LongJob[EvaluateInput]) -> EvaluateOutput:
    from blip2.evaluation import evaluate

    job, job_input, progress = long_job.job, long_job.input, long_job.progress
    lm = long_job.runtime.models.load_fresh(job.model, job.tenant)
    records = _records(_open_dataset(long_job, job_input.dataset), job_input.task, job_input.split)
    if job_input.limit is not None:
        records = records[: job_input.limit]

    def on_progress(done: int, total: int) -> None:
        progress.report(done / max(total, 1), EvaluateProgressDetail(records_done=done, records_total=total))
        if progress.should_stop():
            raise JobCanceled("evaluation canceled")

    metrics = evaluate(lm, records, job_input.task, batch_size=job_input.batch_size, on_progress=on_progress)
    return EvaluateOutput(metrics=metrics, records=len(records))


# ---- shared ---------------------------------------------------------------------------------


def _open_dataset(long_job: LongJob[Any], name: str) -> "OpenedDataset":
    from blip2.data.formats import open_dataset

    row = long_job.transaction("reading a dataset", lambda s: get_dataset(s, long_job.job.tenant, name))
    if row is None:
        raise DatasetNotFound(f"no dataset named {name!r}")
    return open_dataset(Path(row.path))


def _records(dataset: "OpenedDataset", task: str, split: str) -> "Sequence[CaptionRecord | VqaRecord]":
    from blip2.data.records import Split

    chosen = Split(split)
    if task == "caption_vqa":
        return [*dataset.captions(chosen), *dataset.questions(chosen)]
    return dataset.questions(chosen) if task == "vqa" else dataset.captions(chosen)


def _transaction(runtime: WorkerRuntime, what: str, work: Callable[[Session], T]) -> T:
    return retry_transaction(runtime.sessions, work, what=what, limit_s=runtime.settings.DB_RETRY_S)


LongHandler = Callable[[LongJob[Any]], JobOutput]
# One handler per long kind (the inference kinds' are in worker/handlers.py); tests check none is missing.
LONG_HANDLERS: dict[JobKind, LongHandler] = {
    JobKind.DOWNLOAD: run_download,
    JobKind.TRAIN: run_train,
    JobKind.EVALUATE: run_evaluate,
}
