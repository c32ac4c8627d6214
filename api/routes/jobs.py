"""/v1/jobs: submit, read (with long-poll), list and cancel the tenant's jobs."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Depends, Header, Query, Response

from api.deps import ContextDep, CurrentPrincipal, SessionDep, SubmissionDep, get_principal
from api.long_poll import wait_for_job
from api.responses import COMMON_ERRORS, error_responses
from jobs.kinds import JobKind
from jobs.repository import cancel_job, list_jobs
from jobs.schemas import JobCreate, JobPublic, JobsPublic, job_public
from jobs.status import JobStatus
from jobs.submission import submit_job

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    dependencies=[Depends(get_principal)],
    responses=error_responses(*COMMON_ERRORS),
)

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255, description="Same key, same job."),
]
WaitQuery = Annotated[float, Query(ge=0, description="Wait up to this many seconds (at most 30) for a result.")]


@router.post("", status_code=202, responses=error_responses(409, 413, 415))
def create_job(
    body: Annotated[JobCreate, Body()],
    submission: SubmissionDep,
    session: SessionDep,
    principal: CurrentPrincipal,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobPublic:
    """Queue a job; 202 with the job and its Location. A repeated Idempotency-Key returns the first job."""
    submitted = submit_job(submission, principal.tenant, body, idempotency_key, session=session)
    response.headers["Location"] = f"/v1/jobs/{submitted.job.id}"
    return job_public(submitted.job)


@router.get("")
def read_jobs(
    session: SessionDep,
    principal: CurrentPrincipal,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> JobsPublic:
    """The tenant's jobs newest first; pass `next_cursor` back as `cursor` for the next page."""
    page = list_jobs(session, tenant=principal.tenant, limit=limit, cursor=cursor, status=status, kind=kind)
    return JobsPublic(data=[job_public(job) for job in page.jobs], next_cursor=page.next_cursor)


@router.get("/{job_id}", responses=error_responses(404))
async def read_job(job_id: UUID, context: ContextDep, principal: CurrentPrincipal, wait: WaitQuery = 0) -> JobPublic:
    """A job; with `wait`, answers as soon as it is terminal or when the wait is over."""
    wait_s = min(wait, context.settings.LONG_POLL_MAX_S)
    job = await wait_for_job(context.events, context.sessions, job_id, principal.tenant, wait_s)
    return job_public(job)


@router.post("/{job_id}/cancel", responses=error_responses(404, 409))
def cancel(job_id: UUID, session: SessionDep, principal: CurrentPrincipal) -> JobPublic:
    """Cancel a job that has not finished (a queued one never runs); 409 once it has."""
    job = cancel_job(session, job_id, principal.tenant)
    session.commit()
    return job_public(job)
