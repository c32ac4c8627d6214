"""Taking the next batch of queued jobs off a queue: which jobs run, and together with which.

A worker's Celery message names one job, but the message only says "there is work on this queue":
the claim takes the next jobs in fair order, whichever message triggered it. Celery stays the
transport; this decides what runs. Every queued job has a message of its own on its queue, and
every message claims at least one job while any is queued, so no job is left without one. (A worker
drops, unread, the message of a job it ran already, worker/batches.py: that job is not queued.)
Long jobs (worker/long_jobs.py) are claimed the same way, in batches of one.

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
the job rows the claim takes, then the queue's share rows (only ever touched under the clock row).
The jobs are chosen by plain reads: under the clock row no other claim can take them. The claim's
UPDATE then locks them, waiting the moment a sweep (re-sending them) or a cancel holds one, and
leaves out any no longer queued on this queue. A job held that moment is still its tenant's next:
skipping it (SKIP LOCKED) made the tenant look idle for that claim, so another took its turn and its
place in the fair share was lost. No cycle of waits can form: whatever else locks queued job rows
either locks one (a cancel) or skips rows it would wait for (sweeps), and nothing else takes the
clock row.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any
from uuid import UUID

from sqlalchemy import CTE, ColumnElement, Exists, Select, String, bindparam, exists, func, or_, select, true
from sqlalchemy.orm import Session, aliased

from jobs.fair_share import FairShare, lock_fair_share, named_tenants, save_fair_share
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
    if not _any_queued(session, _Shape(), rules, queue=queue):
        # What the message of a job that already ran in another's batch mostly finds: one read, no
        # lock taken. A job queued a moment later has a message of its own to claim it.
        return []
    share = lock_fair_share(session, queue)
    urgent, heads = _first_runnable(session, _Shape(), rules, queue=queue, limit=1)
    if not heads:
        return []
    share.load(session, heads.keys())
    head = share.take(heads, 1, rules.cost)[0]
    batch = [head]
    if head.batch_key is not None and head.attempts == 0:
        room = rules.room(head) - 1
        mates_of = _Shape(urgent=urgent, same_batch=True, excluding_head=True, named_tenants=True)
        params = {"queue": queue, "limit": room, "batch_key": head.batch_key, "head": head.id, "tenants": list(heads)}
        mates = _first_per_tenant(session, mates_of, rules, **params)
        batch += share.take(mates, room, rules.cost)
    return _claimed(session, share, batch, batch_id, rules)


def claim_more(session: Session, queue: str, batch_key: str, batch_id: str, limit: int, rules: BatchRules) -> list[Job]:
    """Claim up to `limit` more queued jobs of a batch already running (that arrived while it gathered),
    in fair order, of the class that may run now."""
    if limit < 1 or not _any_queued(session, _Shape(same_batch=True), rules, queue=queue, batch_key=batch_key):
        return []  # what a gathering batch mostly finds: one read, and no lock taken
    share = lock_fair_share(session, queue)
    _, mates = _first_runnable(session, _Shape(same_batch=True), rules, queue=queue, limit=limit, batch_key=batch_key)
    share.load(session, mates.keys())
    more = share.take(mates, limit, rules.cost)
    return _claimed(session, share, more, batch_id, rules)


def _claimed(session: Session, share: FairShare, chosen: list[Job], batch_id: str, rules: BatchRules) -> list[Job]:
    """Claim the chosen jobs and save what the fair share charged: only for those claimed, should one
    have been canceled or moved to another queue between the read and the claim."""
    claimed = claim_jobs(session, share.queue, [job.id for job in chosen], batch_id)
    if len(claimed) < len(chosen):
        share.recharge(claimed, rules.cost)
    save_fair_share(session, share)
    return claimed


# ---- the statements ---------------------------------------------------------------------------
#
# A claim runs several times a second per worker. Its statements are built once per shape (which
# conditions they have) with bound parameters, so a claim spends its time in Postgres rather than
# in building SQL: a claim of 16 jobs took 12 ms of the worker's CPU when each was built per call.


@dataclass(frozen=True)
class _Shape:
    """Which conditions a claim's query has, besides "queued on this queue"."""

    urgent: bool = False  # only the class that may run first: interactive, or batch jobs past their wait
    same_batch: bool = False  # only jobs that may join a batch: its `batch_key`, never run before
    excluding_head: bool = False  # not the batch's head job, already taken
    named_tenants: bool = False  # only these tenants' jobs (else every tenant with jobs queued)


def _queued_here() -> list[ColumnElement[bool]]:
    """Queued on the queue bound as `queue`."""
    return [Job.queue == bindparam("queue", type_=String()), Job.status == JobStatus.QUEUED]


def _conditions(shape: _Shape) -> list[ColumnElement[bool]]:
    where = _queued_here()
    if shape.urgent:
        overdue = func.make_interval(0, 0, 0, 0, 0, 0, bindparam("overdue_s"))
        where.append(or_(Job.priority == Priority.INTERACTIVE, Job.created_at <= func.now() - overdue))
    if shape.same_batch:
        # A job run again (after its worker died) runs alone.
        where += [Job.batch_key == bindparam("batch_key", type_=String()), Job.attempts == 0]
    if shape.excluding_head:
        where.append(Job.id != bindparam("head"))
    return where


@cache
def _exists_statement(shape: _Shape) -> Select[bool]:
    found: Exists = exists().where(*_conditions(shape))
    return select(found)


@cache
def _first_per_tenant_statement(shape: _Shape) -> Select[Job]:
    source = named_tenants() if shape.named_tenants else _tenants_waiting()
    first = (
        select(Job)
        .where(*_conditions(shape), Job.tenant == source.c.tenant)
        .order_by(Job.created_at, Job.id)
        .limit(bindparam("limit"))
        .lateral("first")
    )
    job = aliased(Job, first)
    query = select(job).select_from(source).join(first, true()).order_by(first.c.created_at, first.c.id)
    return query.execution_options(populate_existing=True)


def _any_queued(session: Session, shape: _Shape, rules: BatchRules, **params: Any) -> bool:
    return bool(session.scalar(_exists_statement(shape), _bound(shape, rules, params)))


def _first_runnable(
    session: Session, shape: _Shape, rules: BatchRules, **params: Any
) -> tuple[bool, dict[str, list[Job]]]:
    """Each tenant's first `limit` queued jobs of `shape`, of the class that may run now: the
    interactive ones (batch jobs past their wait included) while any waits, else all; and whether
    that class was the urgent one."""
    urgent = _Shape(urgent=True, same_batch=shape.same_batch)
    found = _first_per_tenant(session, urgent, rules, **params)
    if found or _any_queued(session, _Shape(urgent=True), rules, queue=params["queue"]):
        return True, found
    return False, _first_per_tenant(session, shape, rules, **params)


def _first_per_tenant(session: Session, shape: _Shape, rules: BatchRules, **params: Any) -> dict[str, list[Job]]:
    """Each tenant's first `limit` queued jobs of `shape`, oldest first (read, not locked: the claim
    locks what it takes); of `tenants`, or of every tenant with jobs queued there."""
    if params["limit"] < 1 or params.get("tenants") == []:
        return {}
    by_tenant: dict[str, list[Job]] = {}
    for row in session.scalars(_first_per_tenant_statement(shape), _bound(shape, rules, params)):
        by_tenant.setdefault(row.tenant, []).append(row)
    return by_tenant


def _bound(shape: _Shape, rules: BatchRules, params: Mapping[str, Any]) -> Mapping[str, Any]:
    """The parameters of a statement of `shape`: the caller's, and how long a batch job waits (urgent shapes)."""
    return {**params, "overdue_s": rules.batch_max_wait.total_seconds()} if shape.urgent else params


def _tenants_waiting() -> CTE:
    """The tenants with jobs queued on `queue`, walked through the index one tenant at a time (a loose
    index scan: a probe per tenant, however long their queues); the walk ends on a NULL."""
    queued = _queued_here()
    walk = select(func.min(Job.tenant).label("tenant")).where(*queued).cte("walk", recursive=True)
    following = select(func.min(Job.tenant)).where(*queued, Job.tenant > walk.c.tenant).scalar_subquery()
    return walk.union_all(select(following).where(walk.c.tenant.is_not(None)))
