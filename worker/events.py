"""What Flower shows: one task per job, in the state the job ended in.

Every job's Celery message carries the job id as its task id (jobs/broker.py), so Flower lists one
task per job, named by its kind (`blip2.caption`) with its job id, kind and model in the arguments.
A batch runs many jobs under one message, so the worker reports the others itself, with the task
events Celery's own would be (`task-succeeded`, `task-failed` with the job's error code and message,
`task-revoked` for a job canceled while it ran). Flower ranks a task's states, so a later event of
a lower rank (the no-op delivery of a job's own message after its batch ran it) never hides one.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from celery import Celery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobEvent:
    """How one job ended, as a task event: `error` is "code: message" for a failure."""

    job_id: str
    succeeded: bool
    summary: str = ""  # a succeeded job's result, short
    error: str = ""
    canceled: bool = False


class TaskEvents:
    """Sends task events for jobs from the process that ran them."""

    def __init__(self, app: Celery, hostname: str) -> None:
        self._app = app
        self._hostname = hostname

    def send(self, events: Iterable[JobEvent], runtime_s: float) -> None:
        """One event per job; a broker that cannot be reached costs the dashboard an update, nothing more."""
        events = list(events)
        if not events:
            return
        try:
            with self._app.events.default_dispatcher(hostname=self._hostname) as dispatcher:
                for event in events:
                    kind, fields = _event(event, runtime_s)
                    dispatcher.send(kind, **fields)
        except Exception as exc:
            log.warning("task events for %d jobs not sent: %s", len(events), exc)


def _event(event: JobEvent, runtime_s: float) -> tuple[str, dict[str, object]]:
    if event.canceled:
        return "task-revoked", {"uuid": event.job_id, "terminated": False, "expired": False, "signum": None}
    if event.succeeded:
        return "task-succeeded", {"uuid": event.job_id, "result": event.summary, "runtime": runtime_s}
    return "task-failed", {"uuid": event.job_id, "exception": f"JobFailed({event.error!r})", "traceback": ""}
