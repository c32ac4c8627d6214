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

from sqlalchemy import ColumnElement, String, column, exists, func, or_, select, true, values
from sqlalchemy.orm import Session

from jobs.fair_share import FairShare, lock_fair_share, save_fair_share
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
    share = lock_fair_share(session, queue)
    runnable = _runnable(session, queue, rules)
    tenants = _tenants_waiting(session, queue)
    heads = _first_per_tenant(session, queue, tenants, [runnable], limit=1)
    if not heads:
        return []
    share.load(session, tenants)
    head = share.take(heads, 1, rules.cost)[0]
    batch = [head]
    if head.batch_key is not None and head.attempts == 0:
        room = rules.room(head) - 1
        batch += _take_mates(session, share, tenants, head.batch_key, rules, room, runnable, exclude=head.id)
    save_fair_share(session, share)
    return claim_jobs(session, [job.id for job in batch], batch_id)


def claim_more(session: Session, queue: str, batch_key: str, batch_id: str, limit: int, rules: BatchRules) -> list[Job]:
    """Claim up to `limit` more queued jobs of a batch already running (that arrived while it gathered),
    in fair order, of the class that may run now."""
    if limit < 1:
        return []
    share = lock_fair_share(session, queue)
    runnable = _runnable(session, queue, rules)
    tenants = _tenants_waiting(session, queue)
    share.load(session, tenants)
    more = _take_mates(session, share, tenants, batch_key, rules, limit, runnable)
    save_fair_share(session, share)
    return claim_jobs(session, [job.id for job in more], batch_id)


def _take_mates(
    session: Session,
    share: FairShare,
    tenants: Sequence[str],
    batch_key: str,
    rules: BatchRules,
    room: int,
    runnable: ColumnElement[bool],
    exclude: UUID | None = None,
) -> list[Job]:
    """Up to `room` queued first runs with `batch_key`, in fair order across tenants."""
    where = [runnable, Job.batch_key == batch_key, Job.attempts == 0]
    if exclude is not None:
        where.append(Job.id != exclude)
    waiting = _first_per_tenant(session, queue=share.queue, tenants=tenants, where=where, limit=room)
    return share.take(waiting, room, rules.cost)


def _runnable(session: Session, queue: str, rules: BatchRules) -> ColumnElement[bool]:
    """Which queued jobs may run now: the interactive ones (batch jobs past their wait included) while
    any waits, else every one."""
    overdue = func.make_interval(0, 0, 0, 0, 0, 0, rules.batch_max_wait.total_seconds())
    urgent = or_(Job.priority == Priority.INTERACTIVE, Job.created_at <= func.now() - overdue)
    waiting = session.scalar(select(exists().where(Job.queue == queue, Job.status == JobStatus.QUEUED, urgent)))
    return urgent if waiting else true()


def _tenants_waiting(session: Session, queue: str) -> list[str]:
    """The tenants with jobs queued on `queue`, read from the index one tenant at a time (a loose index
    scan: one probe per tenant, however long their queues)."""
    queued = (Job.queue == queue, Job.status == JobStatus.QUEUED)
    walk = select(func.min(Job.tenant).label("tenant")).where(*queued).cte("walk", recursive=True)
    following = select(func.min(Job.tenant)).where(*queued, Job.tenant > walk.c.tenant).scalar_subquery()
    walk = walk.union_all(select(following).where(walk.c.tenant.is_not(None)))
    return [tenant for tenant in session.scalars(select(walk.c.tenant)) if tenant is not None]


def _first_per_tenant(
    session: Session, queue: str, tenants: Sequence[str], where: Sequence[ColumnElement[bool]], limit: int
) -> dict[str, list[Job]]:
    """Each tenant's first `limit` queued jobs of `queue` matching `where`, oldest first, locked
    (SKIP LOCKED: a job a sweeper or a cancel holds is left for the next claim)."""
    if not tenants or limit < 1:
        return {}
    waiting = values(column("tenant", String()), name="waiting").data([(tenant,) for tenant in tenants])
    first = (
        select(Job.id)
        .where(Job.queue == queue, Job.status == JobStatus.QUEUED, Job.tenant == waiting.c.tenant, *where)
        .order_by(Job.created_at, Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .lateral("first")
    )
    ids = list(session.scalars(select(first.c.id).select_from(waiting).join(first, true())))
    by_tenant: dict[str, list[Job]] = {}
    rows = select(Job).where(Job.id.in_(ids)).order_by(Job.created_at, Job.id)
    for job in session.scalars(rows.execution_options(populate_existing=True)):
        by_tenant.setdefault(job.tenant, []).append(job)
    return by_tenant
