"""The Celery app both sides share, and sending a job's message.

A message carries only the job id, on the queue the job was routed to (jobs/queues.py), named by the
task of its kind (`blip2.caption` ...); the job itself (input, state, result) lives in Postgres.
The job id is also the message's task id, so Flower lists one task per job, however many times the
sweeper sends it again, and shows the job's kind and model beside its id.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

from celery import Celery
from kombu.messaging import Producer

from jobs.kinds import KINDS, JobKind
from jobs.redis_transport import use_for_redis_urls
from jobs.settings import Settings

if TYPE_CHECKING:
    from jobs.models import Job

log = logging.getLogger(__name__)

# Sending gives up quickly: the job row is already committed, and the sweeper re-sends it later.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


@dataclass(frozen=True)
class JobMessage:
    """What a job's message needs: where it goes, which task it names, and what Flower shows of it."""

    job_id: UUID
    queue: str
    kind: JobKind
    model: str

    @classmethod
    def of(cls, job: "Job") -> "JobMessage":
        return cls(job.id, job.queue, job.kind, job.model)

    @property
    def task_name(self) -> str:
        return KINDS[self.kind].task_name

    @property
    def argsrepr(self) -> str:
        """The arguments as Flower lists them: the job's id, kind and model (the worker's own events repeat it)."""
        return f"job={self.job_id} kind={self.kind.value} model={self.model or '-'}"


def create_celery(settings: Settings) -> Celery:
    """A Celery app on REDIS_URL, with no result backend: Postgres is the source of truth for jobs."""
    use_for_redis_urls()  # one Redis client per connection pool, not one per command
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
    """Sends a job's message to its queue."""

    def __init__(self, celery: Celery) -> None:
        self._celery = celery

    def send(self, message: JobMessage, producer: Producer | None = None) -> None:
        """Publish the job's message (through `producer` when given); raises if the broker cannot be reached."""
        self._celery.send_task(
            message.task_name,
            args=[str(message.job_id)],
            task_id=str(message.job_id),
            argsrepr=message.argsrepr,
            queue=message.queue,
            retry=True,
            retry_policy=_PUBLISH_RETRY,
            producer=producer,
        )

    def try_send_all(self, messages: Sequence[JobMessage]) -> None:
        """Publish the messages in one round trip (kombu's publish batch: one Redis pipeline). If that
        fails, each is sent alone as `try_send` sends it: a message of the batch that got through is then
        sent twice, and the second copy finds its job claimed or ended, which costs a worker one read."""
        if len(messages) < 2:
            for message in messages:
                self.try_send(message)
            return
        try:
            with self._celery.producer_or_acquire() as producer, producer.batch():
                for message in messages:
                    self.send(message, producer)
        except Exception:
            log.warning("could not send %d messages together; sending each alone", len(messages), exc_info=True)
            for message in messages:
                self.try_send(message)

    def try_send(self, message: JobMessage) -> bool:
        """Publish, logging instead of raising on a broker failure (the sweeper will re-send)."""
        try:
            self.send(message)
        except Exception:
            log.warning("could not send job %s to %s; the sweeper will re-send it", message.job_id, message.queue,
                        exc_info=True)  # fmt: skip
            return False
        return True
