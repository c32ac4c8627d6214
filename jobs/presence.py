"""Which queues a live worker serves: rows a worker refreshes, each good for a lease.

A worker of one tenant's trained model (`blip2-jobs worker --model NAME --tenant TENANT`) serves a
queue of its own, `infer.tenant.TENANT.NAME`. It announces that queue every HEARTBEAT_INTERVAL_S
with an expiry JOB_LEASE_S ahead (`announce`), and withdraws it when it stops; killed, its row simply
expires. Submission routes the model's jobs there while the row is live (read through
`PresenceCache`, at most once every PRESENCE_CACHE_S per queue and process), and to the base model's
workers otherwise (jobs/catalog.py). Jobs already queued there when its last worker died are moved
to the base model's queue by the sweeper (`reroute_orphaned_jobs`) and sent again, so none is lost.
"""

import threading
import time
from datetime import timedelta

from sqlalchemy import ColumnElement, Exists, delete, exists, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import InstrumentedAttribute, Session

from blip2.registry import Registry
from jobs.catalog import serving_model
from jobs.kinds import KINDS
from jobs.models import Job, WorkerPresence
from jobs.queues import TRAINED_QUEUE_PREFIX
from jobs.status import JobStatus

# How long a process trusts what it read about a queue's workers: a second or two of routing to a
# worker that just died costs nothing (the sweeper moves those jobs), a query per submission would.
PRESENCE_CACHE_S = 2.0


def announce(session: Session, queues: list[str], worker: str, ttl: timedelta) -> None:
    """Say that `worker` serves `queues` for `ttl` from now (the database's now)."""
    rows = [{"queue": queue, "worker": worker, "expires_at": func.now() + ttl} for queue in queues]
    statement = insert(WorkerPresence).values(rows)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["queue", "worker"], set_={"expires_at": statement.excluded.expires_at}
        )
    )


def withdraw(session: Session, worker: str) -> None:
    """Say that `worker` serves nothing any more (it is stopping)."""
    session.execute(delete(WorkerPresence).where(WorkerPresence.worker == worker))


def _live(queue: str | ColumnElement[str] | InstrumentedAttribute[str]) -> Exists:
    """A live row for the queue (a name, or a column naming one)."""
    return exists().where(WorkerPresence.queue == queue, WorkerPresence.expires_at > func.now())


def is_served(session: Session, queue: str) -> bool:
    """Whether a live worker serves `queue` now."""
    return bool(session.scalar(select(_live(queue))))


class PresenceCache:
    """`is_served`, remembered per queue for PRESENCE_CACHE_S (one per process, shared by its threads)."""

    def __init__(self, ttl_s: float = PRESENCE_CACHE_S) -> None:
        self._ttl_s = ttl_s
        self._seen: dict[str, tuple[bool, float]] = {}
        self._lock = threading.Lock()

    def is_served(self, session: Session, queue: str) -> bool:
        now = time.monotonic()
        with self._lock:
            known = self._seen.get(queue)
        if known is not None and now - known[1] < self._ttl_s:
            return known[0]
        served = is_served(session, queue)
        with self._lock:
            self._seen[queue] = (served, now)
        return served


def reroute_orphaned_jobs(session: Session, registry: Registry, limit: int) -> list[Job]:
    """Move queued jobs off trained-model queues no live worker serves, to their base model's queue;
    returns them, to be sent once this commits. Rows another sweeper holds are skipped."""
    orphaned = (
        select(Job)
        .where(Job.status == JobStatus.QUEUED, Job.queue.startswith(TRAINED_QUEUE_PREFIX), ~_live(Job.queue))
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    moved = []
    for job in session.scalars(orphaned):
        queue = KINDS[job.kind].queue(serving_model(session, registry, job.model, job.tenant))
        if queue != job.queue:  # never: no model's queue is a trained model's; else it would be re-sent each sweep
            job.queue = queue
            moved.append(job)
    session.flush()
    return moved
