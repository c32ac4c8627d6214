"""One Celery task per job kind (`blip2.caption`, `blip2.train` ...), each taking a job id.

An inference message runs the next batch on its queue (worker/batches.py); a long job's message
claims and runs that job (worker/long_jobs.py). Either way the claim is a conditional UPDATE
(queued -> running), so a second delivery of a message, or a message for a canceled job, runs
nothing twice. Every error fails only its job; the process lives on to take the next one.

What the task itself returns is what Flower shows for the message's own job (worker/events.py):
its result when it succeeded, a `JobFailed` carrying its error code and message when it failed,
and nothing (Celery's `Ignore`) while it is still queued or running under another message.
Each run's batch size and the jobs that ended in it go to the worker's metrics (worker/metrics.py).
"""

import logging
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from celery import Celery, Task
from celery.exceptions import Ignore

from jobs.broker import JobMessage
from jobs.kinds import KINDS
from jobs.models import Job
from jobs.repository import find_job
from jobs.status import JobStatus
from worker import metrics as worker_metrics
from worker.batches import run_batch_for
from worker.db_retry import retry_transaction
from worker.events import JobEvent, TaskEvents
from worker.long_jobs import run_long_job
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """A job ended failed: what Flower shows for its task ("code: message")."""


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    """Attach one task per job kind to the worker's app: inference kinds run batches, long kinds one job."""
    limit = runtime.settings.LONG_TASK_TIME_LIMIT_S
    for spec in KINDS.values():
        options: dict[str, Any] = {"soft_time_limit": limit, "time_limit": limit + 60} if spec.long else {}
        run = _long_task(runtime) if spec.long else _inference_task(runtime)
        app.task(
            name=spec.task_name,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
            throws=(JobFailed,),  # an expected outcome: logged in a line, without a traceback
            **options,
        )(run)


def _inference_task(runtime: WorkerRuntime) -> Callable[[Task, str], str]:
    def run_inference(task: Task, job_id: str) -> str:
        own, started = UUID(job_id), time.monotonic()
        ended = run_batch_for(runtime, own, batch_id=task.request.id)
        worker_metrics.batch_ran(ended, task.request.id, runtime.models.registry)
        others = [job for job in ended if job.id != own and job.status.is_terminal]
        TaskEvents(task.app, task.request.hostname or "").send(map(job_event, others), time.monotonic() - started)
        return report(task, runtime, own, next((job for job in ended if job.id == own), None))

    return run_inference


def _long_task(runtime: WorkerRuntime) -> Callable[[Task, str], str]:
    def run_long(task: Task, job_id: str) -> str:
        own = UUID(job_id)
        ended = run_long_job(runtime, own, batch_id=task.request.id)
        worker_metrics.jobs_ended([ended] if ended else [], task.request.id, runtime.models.registry)
        return report(task, runtime, own, ended)

    return run_long


def report(task: Task, runtime: WorkerRuntime, job_id: UUID, ended: Job | None) -> str:
    """The task's own outcome, mirroring its job's: see the module docstring."""
    job = ended or retry_transaction(runtime.sessions, lambda s: find_job(s, job_id), what="reading a job", limit_s=5)
    if job is None or not job.status.is_terminal:
        raise Ignore()
    event = job_event(job)
    if event.canceled:
        TaskEvents(task.app, task.request.hostname or "").send([event], 0.0)
        raise Ignore()
    if not event.succeeded:
        raise JobFailed(event.error)
    return event.summary


def job_event(job: Job) -> JobEvent:
    """How a finished job shows in Flower."""
    message = JobMessage.of(job)
    task = (str(job.id), message.task_name, message.argsrepr)
    if job.status is JobStatus.SUCCEEDED:
        return JobEvent(*task, succeeded=True, summary=_summary(job))
    if job.status is JobStatus.CANCELED:
        return JobEvent(*task, succeeded=False, canceled=True)
    return JobEvent(*task, succeeded=False, error=f"{job.error_code}: {job.error_message}")


def _summary(job: Job, limit: int = 200) -> str:
    text = str(job.result)
    return text if len(text) <= limit else text[: limit - 1] + "…"
