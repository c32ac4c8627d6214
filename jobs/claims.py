"""Taking the next batch of queued jobs off a queue: which jobs run, and together with which.

A worker's Celery message names one job, but the message only says "there is work on this queue":
the claim takes the next jobs in fair order, whichever message triggered it. Celery stays the
transport; this decides what runs. Every queued job has a message of its own on its queue, and
every message claims at least one job while any is queued, so no job is left without one.

Which job is next:
- **Priority.** Batch-priority jobs run only while no interactive job of the queue is waiting; one
  that has waited `batch_max_wait` counts as interactive from then on, so it is never starved.
- **Fair share.** Among the jobs of that class, tenants take turns by start-time fair queuing,
  weighted per tenant (jobs/fair_share.py); within a tenant, oldest first.

A batch is the head job so chosen and the queued jobs of the same class that may share its forward
pass (equal `batch_key`: same kind, model and batch-wide options), taken in the same fair order, as
many as fit: `batch_size` rows, each job taking as many as it generates side by side (its beams or
samples). A job run again after its worker died (`attempts > 0`) runs alone: if it was what killed
the worker, it takes no other job down with it.

Locks, in this order: the queue's clock row (claims on one queue take turns, for milliseconds), then
job rows with SKIP LOCKED (never waiting for a sweeper or a cancel), then the queue's share rows
(only ever touched under the clock row). Two claims can therefore never wait for each other in a cycle.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from sqlalchemy import CTE, ColumnElement, exists, func, or_, select, true
from sqlalchemy.orm import Session, aliased

from jobs.fair_share import lock_fair_share, named_tenants, save_fair_share
from jobs.models import Job
from jobs.repository import claim_jobs
from jobs.status import JobStatus, Priority


@dataclass(frozen=True)
class BatchRules:
    """How large a batch may be: `batch_size` rows, a job taking `cost(job)` of them (at least one job);
    and how long a batch-priority job waits before it counts as interactive."""

    batch_size: int
    cost: Callable[[Job], int]
    batch_max_wait: timedelta = timedelta(minutes=10)

    def room(self, head: Job) -> int:
        """How many jobs like `head` fit in one batch."""
        return max(1, self.batch_size // max(1, self.cost(head)))


def queue_of(session: Session, job_id: UUID) -> str | None:
    """The queue a job was sent to (None if there is no such job)."""
    return session.scalar(select(Job.queue).where(Job.id == job_id))


def claim_batch(session: Session, queue: str, batch_id: str, rules: BatchRules) -> list[Job]:
    """Claim the next batch on `queue` for the claim `batch_id`; empty when nothing is queued there."""
    if not _any_queued(session, queue, []):
        # What the message of a job that already ran in another's batch mostly finds: one read, no
        # lock taken. A job queued a moment later has a message of its own to claim it.
        return []
    share = lock_fair_share(session, queue)
    runnable, heads = _first_runnable(session, queue, rules, [], limit=1)
    if not heads:
        return []
    share.load(session, heads.keys())
    head = share.take(heads, 1, rules.cost)[0]
    batch = [head]
    if head.batch_key is not None and head.attempts == 0:
        room = rules.room(head) - 1
        where = [runnable, *_first_runs_of(head.batch_key), Job.id != head.id]
        mates = _first_per_tenant(session, queue, where, room, tenants=list(heads))
        batch += share.take(mates, room, rules.cost)
    save_fair_share(session, share)
    return claim_jobs(session, [job.id for job in batch], batch_id)


def claim_more(session: Session, queue: str, batch_key: str, batch_id: str, limit: int, rules: BatchRules) -> list[Job]:
    """Claim up to `limit` more queued jobs of a batch already running (that arrived while it gathered),
    in fair order, of the class that may run now."""
    if limit < 1 or not _any_queued(session, queue, _first_runs_of(batch_key)):
        return []  # what a gathering batch mostly finds: one read, and no lock taken
    share = lock_fair_share(session, queue)
    _, mates = _first_runnable(session, queue, rules, _first_runs_of(batch_key), limit)
    share.load(session, mates.keys())
    more = share.take(mates, limit, rules.cost)
    save_fair_share(session, share)
    return claim_jobs(session, [job.id for job in more], batch_id)


def _first_runs_of(batch_key: str) -> list[ColumnElement[bool]]:
    """Jobs that may join a batch of `batch_key`: its key, and never run before (a job run again runs alone)."""
    return [Job.batch_key == batch_key, Job.attempts == 0]


def _first_runnable(
    session: Session, queue: str, rules: BatchRules, where: Sequence[ColumnElement[bool]], limit: int
) -> tuple[ColumnElement[bool], dict[str, list[Job]]]:
    """Each tenant's first `limit` queued jobs matching `where`, of the class that may run now: the
    interactive ones (batch jobs past their wait included) while any waits, else all; and that class."""
    overdue = func.make_interval(0, 0, 0, 0, 0, 0, rules.batch_max_wait.total_seconds())
    urgent = or_(Job.priority == Priority.INTERACTIVE, Job.created_at <= func.now() - overdue)
    found = _first_per_tenant(session, queue, [urgent, *where], limit)
    if found or _any_queued(session, queue, [urgent]):
        return urgent, found
    return true(), _first_per_tenant(session, queue, where, limit)


def _any_queued(session: Session, queue: str, where: Sequence[ColumnElement[bool]]) -> bool:
    return bool(session.scalar(select(exists().where(Job.queue == queue, Job.status == JobStatus.QUEUED, *where))))


def _first_per_tenant(
    session: Session,
    queue: str,
    where: Sequence[ColumnElement[bool]],
    limit: int,
    tenants: Sequence[str] | None = None,
) -> dict[str, list[Job]]:
    """Each tenant's first `limit` queued jobs of `queue` matching `where`, oldest first, locked (SKIP
    LOCKED: a job a sweeper or a cancel holds is left for the next claim); of `tenants`, or of every
    tenant with jobs queued there."""
    if limit < 1 or tenants == []:
        return {}
    source = _tenants_waiting(queue) if tenants is None else named_tenants(tenants)
    first = (
        select(Job)
        .where(Job.queue == queue, Job.status == JobStatus.QUEUED, Job.tenant == source.c.tenant, *where)
        .order_by(Job.created_at, Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .lateral("first")
    )
    job = aliased(Job, first)
    query = select(job).select_from(source).join(first, true()).order_by(first.c.created_at, first.c.id)
    by_tenant: dict[str, list[Job]] = {}
    for row in session.scalars(query.execution_options(populate_existing=True)):
        by_tenant.setdefault(row.tenant, []).append(row)
    return by_tenant


def _tenants_waiting(queue: str) -> CTE:
    """The tenants with jobs queued on `queue`, walked through the index one tenant at a time (a loose
    index scan: a probe per tenant, however long their queues); the walk ends on a NULL."""
    queued = (Job.queue == queue, Job.status == JobStatus.QUEUED)
    walk = select(func.min(Job.tenant).label("tenant")).where(*queued).cte("walk", recursive=True)
    following = select(func.min(Job.tenant)).where(*queued, Job.tenant > walk.c.tenant).scalar_subquery()
    return walk.union_all(select(following).where(walk.c.tenant.is_not(None)))
