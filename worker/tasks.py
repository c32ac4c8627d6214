"""The one task, `run_job(job_id)`: claim the job, run its handler, record the result or the error.

The claim is a conditional UPDATE (queued -> running): a second delivery of the same message, or a
message for a canceled job, claims nothing and is dropped. Every error fails only its job; the
process lives on to take the next one.
"""

import logging
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session

from blip2.errors import Blip2Error
from blip2.images import decode_image
from jobs.broker import RUN_JOB_TASK, RUN_LONG_JOB_TASK
from jobs.db import is_connection_error
from jobs.errors import JobsError
from jobs.image_store import load_image_bytes
from jobs.models import Job
from jobs.repository import claim_job, fail_job, succeed_job
from jobs.schemas import LONG_KINDS, ImageFields, JobInput, JobKind, parse_input
from worker.db_retry import retry_transaction
from worker.handlers import Work, run_batch
from worker.long_jobs import JobCanceled, run_long_job
from worker.progress import heartbeating
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

T = TypeVar("T")


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    """Attach `run_job` (inference) and `run_long_job` (train, evaluate, download) to the worker's app."""

    @app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_job(job_id: str) -> None:
        execute_job(runtime, UUID(job_id))

    limit = runtime.settings.LONG_TASK_TIME_LIMIT_S
    long_options = {"soft_time_limit": limit, "time_limit": limit + 60}

    @app.task(name=RUN_LONG_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True, **long_options)
    def run_long_job(job_id: str) -> None:
        execute_job(runtime, UUID(job_id))


def execute_job(runtime: WorkerRuntime, job_id: UUID) -> None:
    """Run one job to its result or its error, unless another delivery or a cancel got there first."""
    job = _transaction(runtime, f"claiming job {job_id}", lambda session: claim_job(session, job_id))
    if job is None:
        log.info("job %s is not queued (already run, running, canceled or gone); message dropped", job_id)
        return
    try:
        with heartbeating(job_id, runtime.sessions, runtime.settings.HEARTBEAT_INTERVAL_S):
            result = _run(runtime, job)
    except JobCanceled as exc:
        log.info("job %s canceled while running: %s", job_id, exc)
    except (Blip2Error, JobsError) as exc:
        _fail(runtime, job_id, exc.code, str(exc))
    except SoftTimeLimitExceeded:
        _fail(runtime, job_id, "time_limit_exceeded", "the job ran past the soft time limit")
    except Exception as exc:
        if is_connection_error(exc):
            # Postgres went away under the job's own reads or writes: not the job's fault, so it is not
            # failed; it stays running, silent, and the sweeper runs it again once its lease runs out.
            raise
        log.exception("job %s failed unexpectedly", job_id)
        _fail(runtime, job_id, "internal_error", f"{type(exc).__name__}: {exc}")
    else:
        succeeded = _transaction(runtime, f"recording job {job_id}'s result", lambda s: succeed_job(s, job_id, result))
        if succeeded is None:
            log.info("job %s was canceled while it ran; its result is dropped", job_id)


def _run(runtime: WorkerRuntime, job: Job) -> dict[str, object]:
    kind: JobKind = job.kind  # type: ignore[assignment]
    job_input = parse_input(kind, job.input)
    if kind in LONG_KINDS:
        return run_long_job(job, job_input, runtime.settings, runtime.sessions).model_dump(mode="json")
    work = Work(input=job_input, images=_images(runtime, job, job_input))
    model = runtime.models.get(job.model, job.tenant)
    [output] = run_batch(kind, model, [work])
    return output.model_dump(mode="json")


def _images(runtime: WorkerRuntime, job: Job, job_input: JobInput) -> list:  # type: ignore[type-arg]
    if not isinstance(job_input, ImageFields):
        return []
    ids = job_input.referenced_image_ids()
    data = _transaction(runtime, f"loading job {job.id}'s images", lambda s: load_image_bytes(s, ids, job.tenant))
    return [decode_image(item, max_pixels=runtime.settings.MAX_IMAGE_PIXELS) for item in data]


def _fail(runtime: WorkerRuntime, job_id: UUID, code: str, message: str) -> None:
    log.info("job %s failed: %s: %s", job_id, code, message)
    _transaction(runtime, f"recording job {job_id}'s error", lambda session: fail_job(session, job_id, code, message))


def _transaction(runtime: WorkerRuntime, what: str, work: Callable[[Session], T]) -> T:
    """`work` in a transaction of its own, retried for up to DB_RETRY_S while Postgres is unreachable."""
    return retry_transaction(runtime.sessions, work, what=what, limit_s=runtime.settings.DB_RETRY_S)
