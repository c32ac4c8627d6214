"""What Flower shows: one task per job, in the state the job ended in.

Every job's Celery message carries the job id as its task id (jobs/broker.py), so Flower lists one
task per job, named by its kind (`blip2.caption`) with its job id, kind and model in the arguments.
A batch runs many jobs under one message, so the worker reports the others itself, with the task
events Celery's own would be (`task-succeeded`, `task-failed` with the job's error code and message,
`task-revoked` for a job canceled while it ran). Flower ranks a task's states, so a later event of
a lower rank (the no-op delivery of a job's own message after its batch ran it) never hides one.
Each event also names the task and its arguments as the job's message does: a job whose own message
has not been received yet (it waits behind the batch that ran it) still shows its kind and model.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from celery import Celery
from celery.utils.saferepr import saferepr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobEvent:
    """How one job ended, as a task event: `error` is "code: message" for a failure."""

    job_id: str
    name: str  # the task's name, `blip2.<kind>`
    args: str  # the message's argsrepr: job id, kind, model
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
    task: dict[str, object] = {"uuid": event.job_id, "name": event.name, "args": event.args}
    if event.canceled:
        return "task-revoked", task | {"terminated": False, "expired": False, "signum": None}
    if event.succeeded:
        return "task-succeeded", task | {"result": saferepr(event.summary), "runtime": runtime_s}  # as Celery's own
    return "task-failed", task | {"exception": f"JobFailed({event.error!r})", "traceback": ""}
