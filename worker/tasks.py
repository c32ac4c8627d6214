"""One Celery task per job kind (`blip2.caption`, `blip2.train` ...), each taking a job id.

A message says "there is work on this queue": an inference message runs the next batch there
(worker/batches.py), a long job's message the next long job (worker/long_jobs.py), in fair order
either way, whichever job the message names. The claim is a conditional UPDATE (queued -> running),
so a second delivery of a message, or a message for a canceled job, runs nothing twice. Every error
fails only its job; the process lives on to take the next one.

A task always returns: what Flower shows is each job's own state, reported by the worker as task
events (worker/events.py), not the message's. Each run's batch size and the jobs that ended in it go
to the worker's metrics (worker/metrics.py).
"""

import logging
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from celery import Celery, Task

from jobs.kinds import KINDS
from worker import metrics as worker_metrics
from worker import soft_limit
from worker.batches import run_batch_for
from worker.ended_here import DropEndedHere
from worker.events import TaskEvents
from worker.long_jobs import run_long_job
from worker.runtime import WorkerRuntime
from worker.time_limits import claim_id

log = logging.getLogger(__name__)


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    """Attach one task per job kind to the worker's app: inference kinds run batches, long kinds one job."""
    limit = runtime.settings.LONG_TASK_TIME_LIMIT_S
    for spec in KINDS.values():
        options: dict[str, Any] = {"soft_time_limit": limit, "time_limit": limit + 60} if spec.long else {}
        run = _long_task(runtime) if spec.long else _inference_task(runtime)
        if not spec.long and runtime.ended_here is not None:  # their messages first meet the main process
            options["Strategy"] = DropEndedHere(runtime.ended_here)
        app.task(
            name=spec.task_name,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
            send_events=False,  # the jobs' own events stand in for the message's (worker/events.py)
            **options,
        )(run)


def _inference_task(runtime: WorkerRuntime) -> Callable[[Task, str], str]:
    def run_inference(task: Task, job_id: str) -> str:
        soft_limit.arm()
        events, started = _events(task), time.monotonic()
        # Most messages find their job already run in another's batch: the queue they came by (the
        # routing key: jobs/broker.py sends each to its job's queue) spares reading the job's row.
        claim = _claim(task)
        ended = run_batch_for(runtime, UUID(job_id), claim, events.started, queue=_queue(task))
        events.ended(ended, time.monotonic() - started)
        worker_metrics.batch_ran(ended, claim, runtime.models.registry)
        return f"{len(ended)} jobs run" if ended else "nothing queued"

    return run_inference


def _long_task(runtime: WorkerRuntime) -> Callable[[Task, str], str]:
    def run_long(task: Task, job_id: str) -> str:
        soft_limit.arm()
        events, started = _events(task), time.monotonic()
        claim = _claim(task)
        ended = run_long_job(runtime, UUID(job_id), claim, events.started, queue=_queue(task))
        events.ended([ended] if ended else [], time.monotonic() - started)
        worker_metrics.jobs_ended([ended] if ended else [], claim, runtime.models.registry)
        return ended.status.value if ended else "not queued"

    return run_long


def _claim(task: Task) -> str:
    """The `batch_id` of this run's claim: the message's task id on this worker node."""
    return claim_id(task.request.hostname or "", task.request.id)


def _queue(task: Task) -> str | None:
    """The queue the message came by: its routing key (jobs/broker.py sends each to its job's queue)."""
    queue = (task.request.delivery_info or {}).get("routing_key")
    return queue if isinstance(queue, str) else None


def _events(task: Task) -> TaskEvents:
    return TaskEvents(task.app, task.request.hostname or "")
