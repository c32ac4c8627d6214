"""Reading jobs and moving them through their lifecycle, one conditional UPDATE per transition.

Every transition names the state it leaves (`UPDATE ... WHERE status = 'queued' RETURNING`), so
two deliveries of one message, a cancel racing a worker, or a sweeper racing a claim can never
run a job twice or overwrite a finished one: the loser's UPDATE matches no row.
"""

import base64
import binascii
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Select,
    String,
    Update,
    Uuid,
    any_,
    bindparam,
    column,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.sql.dml import ReturningInsert

from jobs.broker import JobMessage
from jobs.errors import InvalidCursor, JobNotCancelable, JobNotFound
from jobs.ids import time_ordered_id
from jobs.kinds import JobKind
from jobs.models import Attempt, Job, TenantQueue
from jobs.status import JobStatus, Priority
from jobs.webhooks import default_url_query

_UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)
# A second query for the jobs' webhook deliveries (a join would not do: FOR UPDATE refuses outer joins).
_WITH_WEBHOOK = joinedload(Job.webhook_delivery)  # in the same query: one round trip per read


@dataclass(frozen=True)
class JobPage:
    """One page of jobs, newest first, and the cursor of the next page (None on the last)."""

    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class NewJob:
    """A job to add, as its submission checked it. Its webhook is `webhook_url`, or with
    `tenants_webhook` its tenant's default, read by the job's INSERT itself (no round trip of its own).

    With `cached_result` (the result of an identical finished job) it is instead succeeded at once,
    marked cached: no worker runs it, no message is sent, and it never counts as unfinished.
    """

    tenant: str
    kind: JobKind
    model: str
    queue: str
    input: dict[str, Any]
    batch_key: str | None = None
    webhook_url: str | None = None
    tenants_webhook: bool = False
    priority: Priority = Priority.INTERACTIVE
    cache_key: str | None = None
    cached_result: dict[str, Any] | None = None


def add_job(session: Session, **columns: Any) -> Job:
    """A new job (the fields of `NewJob`), written in the open transaction, with its id and timestamps
    (committed by the caller)."""
    return add_jobs(session, [NewJob(**columns)])[0]


def add_jobs(session: Session, jobs: Sequence[NewJob]) -> list[Job]:
    """New jobs written in the open transaction (committed by the caller), in the order given, each with
    its id and timestamps: one INSERT for all of them, or one for each shape among them (queued or
    answered from the cache, with a webhook of its own or its tenant's) when they differ.

    A queued job counts as sent from now on (the outbox): the caller sends its message right after
    committing, and if that send is lost, the sweeper sends it again once QUEUED_TOO_LONG_S have passed.
    """
    rows = [_row(job) for job in jobs]
    shapes: dict[tuple[bool, str | None], list[dict[str, Any]]] = {}
    for job, row in zip(jobs, rows, strict=True):
        shapes.setdefault((job.cached_result is not None, job.tenant if job.tenants_webhook else None), []).append(row)
    added: dict[UUID, Job] = {}
    for (cached, default_webhook_of), same in shapes.items():
        added |= {job.id: job for job in session.execute(_insert(cached, default_webhook_of), same).scalars()}
    return [added[row["id"]] for row in rows]


def _row(job: NewJob) -> dict[str, Any]:
    """The job's column values that are parameters of its INSERT (the rest are SQL: `_insert`)."""
    row = {
        "id": time_ordered_id(), "tenant": job.tenant, "kind": job.kind, "model": job.model, "queue": job.queue,
        "input": job.input, "batch_key": job.batch_key, "priority": job.priority, "cache_key": job.cache_key,
    }  # fmt: skip
    if not job.tenants_webhook:
        row["webhook_url"] = job.webhook_url
    if job.cached_result is None:
        return row | {"status": JobStatus.QUEUED, "dispatch_count": 1}
    # worker_seconds 0: no worker ran it
    return row | {"status": JobStatus.SUCCEEDED, "result": job.cached_result, "cached": True, "progress": 1.0,
                  "worker_seconds": 0.0, "dispatch_count": 0}  # fmt: skip


def _insert(cached: bool, default_webhook_of: str | None) -> ReturningInsert[Job]:
    """The INSERT of jobs of one shape, its timestamps the database's clock, as every transition's;
    RETURNING each job whole, in the order of its rows."""
    now = func.now()
    values: dict[str, Any] = {"started_at": now, "finished_at": now} if cached else {"dispatched_at": now}
    if default_webhook_of is not None:
        values["webhook_url"] = default_url_query(default_webhook_of).scalar_subquery()
    return insert(Job).values(**values).returning(Job, sort_by_parameter_order=True)


def find_job(session: Session, job_id: UUID) -> Job | None:
    """The job with this id, read afresh, or None."""
    return session.get(Job, job_id, populate_existing=True)


def get_job(session: Session, job_id: UUID, tenant: str | None = None) -> Job:
    """The job with this id (of `tenant`, when given), or JobNotFound: another tenant's job is not found.

    Its webhook delivery is loaded with it, so it can be shown after the session has closed.
    """
    job = session.get(Job, job_id, populate_existing=True, options=[_WITH_WEBHOOK])
    return tenants_job(job, job_id, tenant)


def get_jobs(session: Session, job_ids: Collection[UUID]) -> dict[UUID, Job]:
    """The jobs with these ids, by id (those that exist), in one statement, each as `get_job` reads it."""
    query = select(Job).where(Job.id.in_(job_ids)).options(_WITH_WEBHOOK).execution_options(populate_existing=True)
    return {job.id: job for job in session.scalars(query)}


def tenants_job(job: Job | None, job_id: UUID, tenant: str | None) -> Job:
    """`job`, read by its id, if there is one and it is the tenant's (any tenant's when None); else JobNotFound."""
    if job is None or (tenant is not None and job.tenant != tenant):
        raise JobNotFound(f"no job with id {job_id}")
    return job


def count_unfinished_jobs(session: Session, tenant: str) -> int:
    """How many of the tenant's jobs are queued or running (a counter the jobs table's trigger keeps)."""
    return int(session.scalar(select(TenantQueue.unfinished).where(TenantQueue.tenant == tenant)) or 0)


def list_jobs(
    session: Session,
    *,
    tenant: str,
    limit: int,
    cursor: str | None = None,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
) -> JobPage:
    """The tenant's jobs newest first, filtered by status and kind, after `cursor` when given."""
    query = _filtered(select(Job).where(Job.tenant == tenant), status, kind)
    if cursor is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < _decode_cursor(cursor))
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1).options(_WITH_WEBHOOK)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    page = rows[:limit]
    return JobPage(jobs=page, next_cursor=_encode_cursor(page[-1]) if more else None)


def _filtered(query: Select[Job], status: JobStatus | None, kind: JobKind | None) -> Select[Job]:
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    return query


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, job_id = raw.split("|")
        return datetime.fromisoformat(created_at), UUID(job_id)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor("cursor is not one this API returned", field="cursor") from exc


def _transition(session: Session, where: Sequence[ColumnElement[bool]], **values: Any) -> list[Job]:
    """Apply `values` to the jobs matching `where` (which names the states they leave); the updated jobs."""
    statement = update(Job).where(*where).values(**values).returning(Job).execution_options(populate_existing=True)
    return list(session.scalars(statement))


def _one(jobs: list[Job]) -> Job | None:
    return jobs[0] if jobs else None


def _running(attempt: Attempt) -> list[ColumnElement[bool]]:
    """This attempt of the job, still running: a write by a worker that lost the job (its lease ran
    out and another run took it, or it was canceled) matches nothing."""
    return [Job.id == attempt.job_id, Job.attempts == attempt.number, Job.status == JobStatus.RUNNING]


def _claim_values(batch_id: str | None) -> dict[str, Any]:
    return {
        "status": JobStatus.RUNNING,
        "started_at": func.now(),
        "attempts": Job.attempts + 1,
        "progress": 0.0,
        "heartbeat_at": func.now(),
        "batch_id": batch_id,
    }


def claim_job(session: Session, job_id: UUID, batch_id: str | None = None) -> Job | None:
    """Mark a queued job running for its next attempt; None if it is not queued (run, canceled, gone)."""
    return _one(_transition(session, [Job.id == job_id, Job.status == JobStatus.QUEUED], **_claim_values(batch_id)))


def claim_jobs(session: Session, queue: str, job_ids: Sequence[UUID], batch_id: str) -> list[Job]:
    """Mark these jobs, queued on `queue`, running as one batch; those no longer queued there (run,
    canceled, moved to another queue) are left out. A row another transaction holds is waited for."""
    if not job_ids:
        return []
    params = {"ids": list(job_ids), "batch_id": batch_id, "claim_queue": queue}
    claimed = {job.id: job for job in session.scalars(_claim_jobs_statement(), params)}
    return [claimed[job_id] for job_id in job_ids if job_id in claimed]


@cache
def _claim_jobs_statement() -> Update:
    """`claim_jobs`, built once (workers claim several times a second): the ids bound as one array.
    The claimed rows come back whole (RETURNING), so no loaded object needs the ORM's own update."""
    where = [
        Job.id == any_(bindparam("ids", type_=ARRAY(Uuid()))),
        Job.status == JobStatus.QUEUED,
        Job.queue == bindparam("claim_queue", type_=String()),
    ]
    claim = _claim_values(None) | {"batch_id": bindparam("batch_id", type_=String())}
    statement = update(Job).where(*where).values(**claim).returning(Job)
    return statement.execution_options(populate_existing=True, synchronize_session=False)


def heartbeat(session: Session, attempts: Sequence[Attempt]) -> list[Attempt]:
    """Note that these jobs' worker is alive; returns those still running this attempt (not canceled or lost)."""
    if not attempts:
        return []
    pairs = tuple_(Job.id, Job.attempts).in_([(a.job_id, a.number) for a in attempts])
    alive = _transition(session, [pairs, Job.status == JobStatus.RUNNING], heartbeat_at=func.now())
    return [job.attempt for job in alive]


def report_progress(session: Session, attempt: Attempt, fraction: float, detail: dict[str, Any]) -> bool:
    """Record a running job's progress (a heartbeat too); False once this attempt is no longer running."""
    values = {"progress": min(max(fraction, 0.0), 1.0), "progress_detail": detail, "heartbeat_at": func.now()}
    return bool(_transition(session, _running(attempt), **values))


def succeed_job(
    session: Session, attempt: Attempt, result: dict[str, Any], worker_seconds: float | None = None
) -> Job | None:
    """Record the result of this attempt of a running job and the model time it took; None if it no
    longer runs (canceled, lost)."""
    return _one(succeed_jobs(session, {attempt: Outcome(result, worker_seconds)}))


@dataclass(frozen=True)
class Outcome:
    """What one attempt of a job produced: its result, and the model time it took (its usage)."""

    result: dict[str, Any]
    worker_seconds: float | None = None


def succeed_jobs(session: Session, outcomes: Mapping[Attempt, Outcome]) -> list[Job]:
    """Record the results of a batch in one statement, each with its usage; returns the jobs that took
    theirs (the others were canceled or lost meanwhile, and their usage is not counted)."""
    if not outcomes:
        return []
    rows = [{"id": str(a.job_id), "attempt": a.number, "result": outcome.result, "seconds": outcome.worker_seconds}
            for a, outcome in outcomes.items()]  # fmt: skip
    return list(session.scalars(_succeed_jobs_statement(), {"rows": rows}))


@cache
def _succeed_jobs_statement() -> Update:
    """`succeed_jobs`, built once (a worker records a batch several times a second): the batch's rows
    are one JSON array, bound as a parameter and read back as a table (jsonb_to_recordset), so the
    statement is the same whatever the batch and SQLAlchemy compiles it once, not once per batch."""
    columns = (
        column("id", Uuid()),
        column("attempt", Integer()),
        column("result", JSONB()),
        column("seconds", Float()),
    )
    rows = func.jsonb_to_recordset(bindparam("rows", type_=JSONB())).table_valued(*columns)
    results = rows.render_derived(name="results", with_types=True)
    statement = (
        update(Job)
        .where(Job.id == results.c.id, Job.attempts == results.c.attempt, Job.status == JobStatus.RUNNING)
        .values(
            status=JobStatus.SUCCEEDED,
            result=results.c.result,
            finished_at=func.now(),
            progress=1.0,
            worker_seconds=results.c.seconds,
        )
        .returning(Job)
    )
    return statement.execution_options(populate_existing=True, synchronize_session=False)


def fail_job(
    session: Session, attempt: Attempt, code: str, message: str, worker_seconds: float | None = None
) -> Job | None:
    """Record why this attempt of a running job failed, and the model time it took; None if it no
    longer runs (canceled, lost, finished)."""
    return _one(_transition(session, _running(attempt), **_failed(code, message), worker_seconds=worker_seconds))


def fail_unfinished_job(session: Session, job_id: UUID, code: str, message: str) -> Job | None:
    """Fail a job whatever attempt it is on (an operator's or the API's decision); None once it finished."""
    return _one(_transition(session, [Job.id == job_id, Job.status.in_(_UNFINISHED)], **_failed(code, message)))


def fail_batch(session: Session, batch_id: str, code: str, message: str) -> list[Job]:
    """Fail every job still running in the batch a claim took (its process was killed at the hard time limit).

    Nothing measured the killed process's model time, so each job's usage is its time since its claim,
    shared equally among the batch's jobs: the time the batch held its worker.
    """
    where = [Job.batch_id == batch_id, Job.status == JobStatus.RUNNING]
    size = select(func.count()).where(*where).scalar_subquery()
    held = func.extract("epoch", func.now() - Job.started_at) / size
    return _transition(session, where, **_failed(code, message), worker_seconds=held)


def _failed(code: str, message: str) -> dict[str, Any]:
    return {"status": JobStatus.FAILED, "error_code": code, "error_message": message, "finished_at": func.now()}


def cancel_job(session: Session, job_id: UUID, tenant: str) -> Job:
    """Cancel the tenant's unfinished job; a queued one will never run. JobNotCancelable once it has finished."""
    existing = get_job(session, job_id, tenant)
    where = [Job.id == existing.id, Job.status.in_(_UNFINISHED)]
    job = _one(_transition(session, where, status=JobStatus.CANCELED, finished_at=func.now()))
    if job is not None:
        return job
    finished = get_job(session, job_id, tenant)  # read again: it may have finished since
    raise JobNotCancelable(f"job {job_id} already {finished.status.value}")


def mark_dispatched(session: Session, job_ids: Collection[UUID]) -> None:
    """Note that a message for each of these jobs was just sent (the outbox's record). A job whose row
    another transaction holds keeps its marks: a claim or a cancel is moving it on (and a sweep that
    waited here while holding rows a claim waits for would deadlock with it)."""
    if not job_ids:
        return
    marks = {"dispatched_at": func.now(), "dispatch_count": Job.dispatch_count + 1}
    session.execute(update(Job).where(Job.id.in_(_unlocked(Job.id.in_(list(job_ids))))).values(**marks))


def send_again_if_queued(session: Session, job_id: UUID) -> JobMessage | None:
    """The message of the job, marked as sent now, if it is still queued; else None. For a job whose
    message ran a batch of other jobs that came first in fair order (worker/batches.py). Its count of
    messages stays: the one it had was spent, so this one is no duplicate to back off from
    (`take_overdue_queued_jobs`). A row another transaction holds is left alone: a claim, a cancel or
    a sweep is moving it on (the sweep sends a message of its own)."""
    marked = update(Job).where(Job.id.in_(_unlocked(Job.id == job_id, Job.status == JobStatus.QUEUED)))
    returning = marked.values(dispatched_at=func.now()).returning(Job.id, Job.queue, Job.kind, Job.model)
    row = session.execute(returning, execution_options={"synchronize_session": False}).one_or_none()
    return None if row is None else JobMessage(*row)


def _unlocked(*where: ColumnElement[bool]) -> Select[UUID]:
    """The ids of the jobs matching `where`, locked, less those another transaction holds (SKIP LOCKED)."""
    return select(Job.id).where(*where).with_for_update(skip_locked=True)


@dataclass(frozen=True)
class Overdue:
    """A queued job taken for re-sending, and how it was marked before (to give back if the send fails)."""

    message: JobMessage
    dispatched_at: datetime | None
    dispatch_count: int


def take_overdue_queued_jobs(session: Session, *, after: timedelta, limit: int) -> list[Overdue]:
    """Queued jobs whose last send is older than `after` (doubling per re-send), oldest first, marked
    as sent now by the same statement.

    The caller commits, then sends: no row stays locked while the messages go out, so a worker's claim,
    which waits for the rows it takes, waits only for this statement (a sweep of a hundred sent while
    holding its locks took a hundred milliseconds and more). SKIP LOCKED and the new mark keep two
    sweepers from taking one job, and this statement from ever waiting. A job whose send fails
    gets its marks back (`unmark_dispatched`), so the next sweep tries it again; the doubling keeps a
    long but healthy backlog from being flooded with duplicate messages.
    """
    backoff = func.power(2, func.least(func.greatest(Job.dispatch_count - 1, 0), 6))
    last_sent = func.coalesce(Job.dispatched_at, Job.created_at)
    overdue = last_sent < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, after.total_seconds() * backoff)
    due = (
        select(Job.id, Job.dispatched_at, Job.dispatch_count)
        .where(Job.status == JobStatus.QUEUED, overdue)
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    statement = (
        update(Job)
        .where(Job.id == due.c.id)
        .values(dispatched_at=func.now(), dispatch_count=Job.dispatch_count + 1)
        .returning(Job.id, Job.queue, Job.kind, Job.model, due.c.dispatched_at, due.c.dispatch_count)
    )
    rows = session.execute(statement, execution_options={"synchronize_session": False})
    return [
        Overdue(JobMessage(job_id, queue, kind, model), at, count) for job_id, queue, kind, model, at, count in rows
    ]


def unmark_dispatched(session: Session, overdue: Overdue) -> None:
    """Give a job taken by `take_overdue_queued_jobs` its previous marks back: its message was not sent.
    Nothing changes if the job has moved on since (claimed, canceled, or sent again), nor while another
    transaction holds its row (a claim or a cancel moving it on; see `mark_dispatched`)."""
    mine = [
        Job.id == overdue.message.job_id,
        Job.status == JobStatus.QUEUED,
        Job.dispatch_count == overdue.dispatch_count + 1,
    ]
    session.execute(
        update(Job)
        .where(Job.id.in_(_unlocked(*mine)))
        .values(dispatched_at=overdue.dispatched_at, dispatch_count=overdue.dispatch_count)
    )


def requeue_lost_jobs(session: Session, *, lease: timedelta, max_attempts: int) -> list[Job]:
    """Running jobs whose heartbeat is older than the lease (their worker died): fail those at
    max_attempts, queue the rest again. Returns the re-queued jobs, to be sent once this commits."""
    last_sign_of_life = func.coalesce(Job.heartbeat_at, Job.started_at)
    lost = [Job.status == JobStatus.RUNNING, last_sign_of_life < func.now() - lease]
    session.execute(
        update(Job)
        .where(*lost, Job.attempts >= max_attempts)
        .values(
            status=JobStatus.FAILED,
            error_code="worker_lost",
            error_message=f"the worker running this job stopped, {max_attempts} times",
            finished_at=func.now(),
        )
    )
    requeued = update(Job).where(*lost).values(status=JobStatus.QUEUED, started_at=None, batch_id=None).returning(Job)
    return list(session.scalars(requeued))
