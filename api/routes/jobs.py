"""/v1/jobs: submit (one, or many in a batch), read (with long-poll, or as an event stream), list and
cancel the tenant's jobs."""

from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Depends, Header, Query, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.deps import ContextDep, CurrentPrincipal, SessionDep, SubmissionDep, get_principal
from api.errors import error_detail, status_for
from api.long_poll import follow_job, wait_for_job
from api.preferences import PreferHeader, preferred_wait_s
from api.responses import COMMON_ERRORS, error_responses
from jobs.kinds import JobKind
from jobs.repository import cancel_job, get_job, list_jobs
from jobs.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    JobCreate,
    JobPublic,
    JobsBatchCreate,
    JobsBatchItemResult,
    JobsBatchPublic,
    JobsPublic,
    job_public,
)
from jobs.status import JobStatus
from jobs.submission import BatchItem, Refused, Submitted, submit_batch

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    dependencies=[Depends(get_principal)],
    responses=error_responses(*COMMON_ERRORS),
)

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Same key, same job.",
    ),
]
WaitQuery = Annotated[float, Query(ge=0, description="Wait up to this many seconds (at most 30) for a result.")]


# Where a created job's id leads (OpenAPI links). Not to its event stream: that stays open until the job ends.
_JOB_LINKS = {
    "read": {"operationId": "read_job", "parameters": {"job_id": "$response.body#/id"}},
    "cancel": {"operationId": "cancel_job", "parameters": {"job_id": "$response.body#/id"}},
}


@router.post(
    "",
    status_code=202,
    operation_id="create_job",
    responses=error_responses(409, 413, 415)
    | {201: {"description": "With `Prefer: wait=N`: the job, finished within the wait.", "model": JobPublic}},
    openapi_extra={"responses": {"202": {"links": _JOB_LINKS}}},
)
async def create_job(
    body: Annotated[JobCreate, Body()],
    context: ContextDep,
    principal: CurrentPrincipal,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
    prefer: PreferHeader = None,
) -> JobPublic:
    """Queue a job; 202 with the job and its Location. A repeated Idempotency-Key returns the first job.

    With `Prefer: wait=N` (RFC 7240; N at most 30), answers once the job has finished, 201 with its
    result, or after N seconds, 202 with the job as it is then: a submission and its long-poll in one request.
    """
    job, public = await context.submissions.submit(principal.tenant, body, idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if (wait_s := preferred_wait_s(prefer, context.settings.LONG_POLL_MAX_S)) is not None:
        response.headers["Preference-Applied"] = f"wait={wait_s:g}"
        ended = await wait_for_job(context.events, context.reads, job.id, principal.tenant, wait_s, known=job)
        response.status_code = 201 if ended.status.is_terminal else 202
        if ended is not job:  # read again: as it ended, or as it is when the wait ran out
            public = job_public(ended)
    return public


@router.post(":batch", operation_id="create_jobs", responses=error_responses(413))
def create_jobs(
    body: JobsBatchCreate, submission: SubmissionDep, session: SessionDep, principal: CurrentPrincipal
) -> JobsBatchPublic:
    """Queue up to MAX_JOBS_PER_BATCH jobs in one transaction, each with its own Idempotency-Key.

    One result per job, in order: `status` 202 with the job, or the status and error the job would have
    had alone (a refused job creates nothing; the others are accepted all the same).
    """
    items = [BatchItem(item.job, item.idempotency_key) for item in body.jobs]
    outcomes = submit_batch(submission, principal.tenant, items, session=session)
    return JobsBatchPublic(items=[_batch_result(outcome) for outcome in outcomes])


def _batch_result(outcome: Submitted | Refused) -> JobsBatchItemResult:
    if isinstance(outcome, Refused):
        return JobsBatchItemResult(status=status_for(outcome.error), error=error_detail(outcome.error))
    return JobsBatchItemResult(status=202, job=job_public(outcome.job), created=outcome.created)


CursorQuery = Annotated[
    str | None, Query(pattern=r"^[A-Za-z0-9_-]+$", max_length=200, description="A `next_cursor` this API returned.")
]


@router.get("", operation_id="read_jobs")
def read_jobs(
    session: SessionDep,
    principal: CurrentPrincipal,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: CursorQuery = None,
) -> JobsPublic:
    """The tenant's jobs newest first; pass `next_cursor` back as `cursor` for the next page."""
    page = list_jobs(session, tenant=principal.tenant, limit=limit, cursor=cursor, status=status, kind=kind)
    return JobsPublic(data=[job_public(job) for job in page.jobs], next_cursor=page.next_cursor)


@router.get("/{job_id}", operation_id="read_job", responses=error_responses(404))
async def read_job(job_id: UUID, context: ContextDep, principal: CurrentPrincipal, wait: WaitQuery = 0) -> JobPublic:
    """A job; with `wait`, answers as soon as it is terminal or when the wait is over."""
    wait_s = min(wait, context.settings.LONG_POLL_MAX_S)
    job = await wait_for_job(context.events, context.reads, job_id, principal.tenant, wait_s)
    return job_public(job)


class JobEventStream(EventSourceResponse):
    """The event stream's response class, without a media type of its own: FastAPI still answers (and
    documents) the stream as text/event-stream, and documents the route's errors, answered before any
    stream starts, as the JSON they are (it gives them the route's media type otherwise)."""

    media_type = None  # type: ignore[assignment]


def existing_job_id(job_id: UUID, context: ContextDep, principal: CurrentPrincipal) -> UUID:
    """The id of one of the tenant's jobs; 404 before any response starts, for a stream's sake.

    Its own short session: a request's session would hold a connection for as long as the stream lasts.
    """
    with context.sessions() as session:
        return get_job(session, job_id, principal.tenant).id


@router.get(
    "/{job_id}/events", operation_id="job_events", response_class=JobEventStream, responses=error_responses(404)
)
async def job_events(
    job_id: Annotated[UUID, Depends(existing_job_id)], context: ContextDep, principal: CurrentPrincipal
) -> AsyncIterator[ServerSentEvent]:
    """The job's status and progress as server-sent events until it ends: `event: job` with the job's
    JSON now and at every change, then `event: end` with the finished job, and the stream closes."""
    async for job in follow_job(context.events, context.reads, job_id, principal.tenant):
        yield ServerSentEvent(event="end" if job.status.is_terminal else "job", raw_data=job.model_dump_json())


@router.post("/{job_id}/cancel", operation_id="cancel_job", responses=error_responses(404, 409))
def cancel(job_id: UUID, session: SessionDep, principal: CurrentPrincipal) -> JobPublic:
    """Cancel a job that has not finished (a queued one never runs); 409 once it has."""
    job = cancel_job(session, job_id, principal.tenant)
    session.commit()
    return job_public(job)
