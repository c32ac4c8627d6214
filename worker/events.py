"""What Flower shows: one task per job, in the state the job is in.

Every job's Celery message carries the job id as its task id (jobs/broker.py), so Flower lists one
task per job, named by its kind (`blip2.caption`) with its job id, kind and model as its arguments.
A batch runs many jobs under one message, so the worker reports every job itself (a batch's events
in one message), with the task events Celery's own would be: `task-started` when a claim takes it,
then `task-succeeded`, `task-failed` (the job's error code and message as the exception) or `task-revoked` (canceled).
Celery's own events for these tasks are off (`send_events=False` on the tasks): they would describe
the message, not the job, and a task that raised to show a failure would cost the worker a copy of
its traceback each time (billiard keeps them: 500 failing jobs grew the job process by 110 MB).
"""

import logging
import time
from collections.abc import Iterable

from celery import Celery
from celery.utils.saferepr import saferepr

from jobs.broker import JobMessage
from jobs.models import Job
from jobs.status import JobStatus

log = logging.getLogger(__name__)


class TaskEvents:
    """Sends task events for jobs from the process that runs them."""

    def __init__(self, app: Celery, hostname: str) -> None:
        self._app = app
        self._hostname = hostname

    def started(self, jobs: Iterable[Job]) -> None:
        """The jobs a claim just took, each shown running on this worker."""
        self._send([("task-started", _started_fields(job)) for job in jobs])

    def ended(self, jobs: Iterable[Job], runtime_s: float) -> None:
        """Each job that reached its end, shown as it ended; jobs still running elsewhere are left out."""
        self._send([_ended(job, runtime_s) for job in jobs if job.status.is_terminal])

    def _send(self, events: list[tuple[str, dict[str, object]]]) -> None:
        """The events in one message (a list, as Celery's own buffered events go, and as Flower reads
        them); a broker that cannot be reached costs the dashboard an update, nothing more."""
        if not events:
            return
        try:
            with self._app.amqp.producer_pool.acquire(block=True) as producer:
                dispatcher = self._app.events.Dispatcher(
                    producer.connection, self._hostname, channel=producer.channel,
                    buffer_group=["task"], buffer_limit=len(events) + 1,
                )  # fmt: skip
                with dispatcher:
                    for kind, fields in events:
                        dispatcher.send(kind, **fields)
                    dispatcher.flush()
        except Exception as exc:
            log.warning("task events for %d jobs not sent: %s", len(events), exc)


def _task(job: Job) -> dict[str, object]:
    """The task as the job's own message names it: a job whose message has not been received yet (it
    waits behind the batch that ran it) still shows its kind and model."""
    message = JobMessage.of(job)
    return {"uuid": str(job.id), "name": message.task_name, "args": message.argsrepr, "kwargs": "{}"}


def _started_fields(job: Job) -> dict[str, object]:
    return _task(job) | {"retries": job.attempts - 1, "timestamp": time.time()}


def _ended(job: Job, runtime_s: float) -> tuple[str, dict[str, object]]:
    task = _task(job)
    if job.status is JobStatus.SUCCEEDED:
        return "task-succeeded", task | {"result": saferepr(summary(job)), "runtime": runtime_s}  # as Celery's own
    if job.status is JobStatus.CANCELED:
        return "task-revoked", task | {"terminated": False, "expired": False, "signum": None}
    return "task-failed", task | {"exception": f"JobFailed('{job.error_code}: {job.error_message}')", "traceback": ""}


def summary(job: Job, limit: int = 200) -> str:
    """A finished job's result, short enough for a dashboard row."""
    text = str(job.result)
    return text if len(text) <= limit else text[: limit - 1] + "…"
