"""Taking the next batch of queued jobs off a queue: which jobs run, and together with which.

A worker's Celery message names one job, but the message only says "there is work on this queue":
the claim takes the next jobs in queue order, whichever message triggered it. Celery stays the
transport; this decides what runs. Every queued job has a message of its own on its queue, and
every message claims at least one job while any is queued, so no job is left without one.

A batch is the head job and the queued jobs that may share its forward pass (equal `batch_key`:
same kind, model and batch-wide options), as many as fit: `batch_size` rows, each job taking as
many as it generates side by side (its beams or samples). A job run again after its worker died
(`attempts > 0`) runs alone: if it was what killed the worker, it takes no other job down with it.

Rows are locked with SKIP LOCKED, so workers claiming from one queue at once never take the same
job and never wait for each other.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.models import Job
from jobs.repository import claim_jobs
from jobs.status import JobStatus


@dataclass(frozen=True)
class BatchRules:
    """How large a batch may be: `batch_size` rows, a job taking `cost(job)` of them (at least one job)."""

    batch_size: int
    cost: Callable[[Job], int]

    def room(self, head: Job) -> int:
        """How many jobs like `head` fit in one batch."""
        return max(1, self.batch_size // max(1, self.cost(head)))


def queue_of(session: Session, job_id: UUID) -> str | None:
    """The queue a job was sent to (None if there is no such job)."""
    return session.scalar(select(Job.queue).where(Job.id == job_id))


def claim_batch(session: Session, queue: str, batch_id: str, rules: BatchRules) -> list[Job]:
    """Claim the next batch on `queue` for the claim `batch_id`; empty when nothing is queued there."""
    heads = _queued(session, queue, limit=1)
    if not heads:
        return []
    head = heads[0]
    if head.batch_key is None or head.attempts > 0:
        return claim_jobs(session, [head.id], batch_id)
    mates = _queued(session, queue, limit=rules.room(head) - 1, batch_key=head.batch_key, exclude=[head.id])
    return claim_jobs(session, [head.id, *(job.id for job in mates)], batch_id)


def claim_more(session: Session, queue: str, batch_key: str, batch_id: str, limit: int) -> list[Job]:
    """Claim up to `limit` more queued jobs of a batch already running (that arrived while it gathered)."""
    if limit < 1:
        return []
    return claim_jobs(session, [job.id for job in _queued(session, queue, limit=limit, batch_key=batch_key)], batch_id)


def _queued(
    session: Session, queue: str, *, limit: int, batch_key: str | None = None, exclude: Sequence[UUID] = ()
) -> list[Job]:
    """The first queued jobs of `queue` in the order they run, locked; with `batch_key`, only first runs of it."""
    if limit < 1:
        return []
    query = select(Job).where(Job.queue == queue, Job.status == JobStatus.QUEUED)
    if batch_key is not None:
        query = query.where(Job.batch_key == batch_key, Job.attempts == 0)
    if exclude:
        query = query.where(Job.id.not_in(exclude))
    query = query.order_by(Job.created_at, Job.id).limit(limit).with_for_update(skip_locked=True)
    return list(session.scalars(query))
