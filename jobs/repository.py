"""Reading jobs and moving them through their lifecycle, one conditional UPDATE per transition.

Every transition names the state it leaves (`UPDATE ... WHERE status = 'queued' RETURNING`), so
two deliveries of one message, a cancel racing a worker, or a sweeper racing a claim can never
run a job twice or overwrite a finished one: the loser's UPDATE matches no row.
"""

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Select, func, select, tuple_, update
from sqlalchemy.orm import Session

from jobs.errors import InvalidCursor, JobNotCancelable, JobNotFound
from jobs.models import Job
from jobs.status import JobStatus

_UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class JobPage:
    """One page of jobs, newest first, and the cursor of the next page (None on the last)."""

    jobs: list[Job]
    next_cursor: str | None


def add_job(session: Session, *, tenant: str, kind: str, model: str, queue: str, input: dict[str, Any]) -> Job:
    """A new queued job of `tenant`, flushed so it has its id and timestamps (committed by the caller)."""
    job = Job(tenant=tenant, kind=kind, model=model, queue=queue, input=input, status=JobStatus.QUEUED)
    session.add(job)
    session.flush()
    session.refresh(job)
    return job


def get_job(session: Session, job_id: UUID, tenant: str | None = None) -> Job:
    """The job with this id (of `tenant`, when given), or JobNotFound: another tenant's job is not found."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or (tenant is not None and job.tenant != tenant):
        raise JobNotFound(f"no job with id {job_id}")
    return job


def count_unfinished_jobs(session: Session, tenant: str) -> int:
    """How many of the tenant's jobs are queued or running."""
    query = select(func.count()).select_from(Job).where(Job.tenant == tenant, Job.status.in_(_UNFINISHED))
    return int(session.scalar(query) or 0)


def list_jobs(
    session: Session,
    *,
    tenant: str,
    limit: int,
    cursor: str | None = None,
    status: JobStatus | None = None,
    kind: str | None = None,
) -> JobPage:
    """The tenant's jobs newest first, filtered by status and kind, after `cursor` when given."""
    query = _filtered(select(Job).where(Job.tenant == tenant), status, kind)
    if cursor is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < _decode_cursor(cursor))
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    page = rows[:limit]
    return JobPage(jobs=page, next_cursor=_encode_cursor(page[-1]) if more else None)


def _filtered(query: Select[Job], status: JobStatus | None, kind: str | None) -> Select[Job]:
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


def _transition(session: Session, job_id: UUID, leaving: Sequence[JobStatus], **values: Any) -> Job | None:
    """Apply `values` if the job is in one of the `leaving` states; the updated job, or None."""
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_(leaving))
        .values(**values)
        .returning(Job)
        .execution_options(populate_existing=True)
    )
    return session.scalars(statement).one_or_none()


def claim_job(session: Session, job_id: UUID) -> Job | None:
    """Mark a queued job running for this attempt; None if it is not queued (run, canceled, gone)."""
    return _transition(
        session,
        job_id,
        [JobStatus.QUEUED],
        status=JobStatus.RUNNING,
        started_at=func.now(),
        attempts=Job.attempts + 1,
        progress=0.0,
        heartbeat_at=func.now(),
    )


def heartbeat(session: Session, job_id: UUID) -> bool:
    """Note that the job's worker is alive; False once the job is no longer running (e.g. canceled)."""
    return _transition(session, job_id, [JobStatus.RUNNING], heartbeat_at=func.now()) is not None


def report_progress(session: Session, job_id: UUID, fraction: float, detail: dict[str, Any]) -> bool:
    """Record a running job's progress (a heartbeat too); False once it is no longer running."""
    values = {"progress": min(max(fraction, 0.0), 1.0), "progress_detail": detail, "heartbeat_at": func.now()}
    return _transition(session, job_id, [JobStatus.RUNNING], **values) is not None


def succeed_job(session: Session, job_id: UUID, result: dict[str, Any]) -> Job | None:
    """Record the result of a running job; None if it is no longer running (e.g. canceled)."""
    return _transition(
        session,
        job_id,
        [JobStatus.RUNNING],
        status=JobStatus.SUCCEEDED,
        result=result,
        finished_at=func.now(),
        progress=1.0,
    )


def fail_job(session: Session, job_id: UUID, code: str, message: str) -> Job | None:
    """Record why an unfinished job failed; None if it had already finished."""
    return _transition(
        session,
        job_id,
        _UNFINISHED,
        status=JobStatus.FAILED,
        error_code=code,
        error_message=message,
        finished_at=func.now(),
    )


def cancel_job(session: Session, job_id: UUID, tenant: str) -> Job:
    """Cancel the tenant's unfinished job; a queued one will never run. JobNotCancelable once it has finished."""
    existing = get_job(session, job_id, tenant)
    job = _transition(session, existing.id, _UNFINISHED, status=JobStatus.CANCELED, finished_at=func.now())
    if job is not None:
        return job
    finished = get_job(session, job_id, tenant)  # read again: it may have finished since
    raise JobNotCancelable(f"job {job_id} already {finished.status.value}")


def mark_dispatched(session: Session, job_id: UUID) -> None:
    """Note that a message for the job was just sent (the outbox's record)."""
    session.execute(
        update(Job).where(Job.id == job_id).values(dispatched_at=func.now(), dispatch_count=Job.dispatch_count + 1)
    )


def overdue_queued_jobs(session: Session, *, after: timedelta, limit: int) -> list[Job]:
    """Queued jobs whose last send is older than `after` (doubling per re-send), locked for re-sending.

    The doubling keeps a long but healthy backlog from being flooded with duplicate messages;
    SKIP LOCKED lets several sweepers run at once without sending one job twice.
    """
    backoff = func.power(2, func.least(func.greatest(Job.dispatch_count - 1, 0), 6))
    last_sent = func.coalesce(Job.dispatched_at, Job.created_at)
    overdue = last_sent < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, after.total_seconds() * backoff)
    query = (
        select(Job)
        .where(Job.status == JobStatus.QUEUED, overdue)
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(query))


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
    requeued = update(Job).where(*lost).values(status=JobStatus.QUEUED, started_at=None).returning(Job)
    return list(session.scalars(requeued))
