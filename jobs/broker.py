"""The Celery app both sides share, the queue routing, and sending a job's message.

Routing: inference jobs go to one queue per model, `infer.<model>`, so a worker holding a model
only receives that model's jobs; training and evaluation go to `train`, downloads to `download`. A message carries only
the job id; the job itself (input, state, result) lives in Postgres.
"""

import logging
import re
from uuid import UUID

from celery import Celery

from jobs.settings import Settings

log = logging.getLogger(__name__)

RUN_JOB_TASK = "blip2.run_job"
# The same work for jobs that run for hours: a task of its own, so it can have its own time limits.
RUN_LONG_JOB_TASK = "blip2.run_long_job"
INFERENCE_QUEUE_PREFIX = "infer."
TRAIN_QUEUE = "train"  # training and evaluation
DOWNLOAD_QUEUE = "download"
_UNSAFE_QUEUE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
# Sending gives up quickly: the job row is already committed, and the sweeper re-sends it later.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def queue_for_model(model: str) -> str:
    """The inference queue of a model name (a hub id or a path is made queue-name safe)."""
    return INFERENCE_QUEUE_PREFIX + _UNSAFE_QUEUE_CHARS.sub("_", model)


def queue_for_job(kind: str, model: str) -> str:
    """Where a job runs: long jobs on `train` / `download`, so they never block inference workers."""
    if kind == "download":
        return DOWNLOAD_QUEUE
    if kind in ("train", "evaluate"):
        return TRAIN_QUEUE
    return queue_for_model(model)


def task_for_queue(queue: str) -> str:
    return RUN_LONG_JOB_TASK if queue in (TRAIN_QUEUE, DOWNLOAD_QUEUE) else RUN_JOB_TASK


def create_celery(settings: Settings) -> Celery:
    """A Celery app on REDIS_URL, with no result backend: Postgres is the source of truth for jobs."""
    app = Celery("blip2-jobs", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # A worker that loses Redis reconnects however long it is away (Celery's default gives up after 100 tries).
        broker_connection_max_retries=None,
        broker_transport_options=_transport_options(settings),
    )
    return app


def _transport_options(settings: Settings) -> dict[str, object]:
    options: dict[str, object] = {"visibility_timeout": settings.broker_visibility_timeout_s}
    if settings.REDIS_KEY_PREFIX:
        options["global_keyprefix"] = settings.REDIS_KEY_PREFIX
    return options


class Dispatcher:
    """Sends `run_job(job_id)` messages to a job's queue."""

    def __init__(self, celery: Celery) -> None:
        self._celery = celery

    def send(self, job_id: UUID, queue: str) -> None:
        """Publish the job's message; raises if the broker cannot be reached."""
        task = task_for_queue(queue)
        self._celery.send_task(task, args=[str(job_id)], queue=queue, retry=True, retry_policy=_PUBLISH_RETRY)

    def try_send(self, job_id: UUID, queue: str) -> bool:
        """Publish, logging instead of raising on a broker failure (the sweeper will re-send)."""
        try:
            self.send(job_id, queue)
        except Exception:
            log.warning("could not send job %s to %s; the sweeper will re-send it", job_id, queue, exc_info=True)
            return False
        return True
