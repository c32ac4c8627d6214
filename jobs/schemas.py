"""The HTTP API's schemas: one family per resource (images, jobs, models, datasets, usage).

The job request and response schemas are built from the table of job kinds (jobs/kinds.py): one
request model and one response model per kind, each a member of a union discriminated by `kind`, so
the OpenAPI document says exactly which input and which result go with which kind.
"""

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, WrapSerializer, create_model

from jobs.inputs import JobInput
from jobs.kinds import KINDS, JobKind, KindSpec
from jobs.outputs import JobOutput, ProgressDetail
from jobs.settings import JOBS_PER_BATCH_CEILING
from jobs.status import JobStatus, Priority

WEBHOOK_URL_PATTERN = r"^https?://[^\x00-\x1f\x7f]*$"  # no control characters, as PRINTABLE_PATTERN
# Text stored or looked up in Postgres (an Idempotency-Key, a model's name): no control characters
# (Postgres refuses NUL in text).
PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f]+$"
IDEMPOTENCY_KEY_PATTERN = PRINTABLE_PATTERN
WEBHOOK_URL_LENGTH = 2000  # as the column (jobs/models.py, which this module may not import)

if TYPE_CHECKING:
    from jobs.models import Job

log = logging.getLogger(__name__)

# ---- images ---------------------------------------------------------------------------------


class ImageBase(BaseModel):
    """What the service knows about an uploaded image."""

    sha256: str
    width: int
    height: int
    format: str


class ImagePublic(ImageBase):
    """An uploaded image as the API returns it; the same bytes always give the same id."""

    model_config = ConfigDict(from_attributes=True)

    id: UUID


class ImagesPublic(BaseModel):
    """The tenant's images with a given content hash: none, or the one (`GET /v1/images?sha256=`)."""

    data: list[ImagePublic]


# ---- job requests ---------------------------------------------------------------------------


class JobCreateBase(BaseModel):
    """Fields every job request shares; `model` defaults to BLIP2_DEFAULT_MODEL, or to
    BLIP2_DEFAULT_MATCH_MODEL for a job only a retrieval model can run (match, text embeddings)."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    model: str | None = Field(default=None, min_length=1, max_length=500, pattern=PRINTABLE_PATTERN)
    input: JobInput
    # Where to POST the finished job (signed; see README "Webhooks"); default: the tenant's, if any.
    webhook_url: str | None = Field(default=None, pattern=WEBHOOK_URL_PATTERN, max_length=WEBHOOK_URL_LENGTH)
    # Batch jobs run only while no interactive job of their queue waits (or once they waited too long):
    # the model's queue, or for long jobs (train, evaluate, download) the queue of their kind.
    priority: Priority = Priority.INTERACTIVE
    # False: run it even if an identical job already succeeded (true: answer from that job's result;
    # inference jobs only, never sampling without a seed).
    cache: bool = True


def _camel(kind: JobKind) -> str:
    return kind.value.capitalize()


def _request_model(spec: KindSpec[JobInput]) -> type[JobCreateBase]:
    return create_model(
        f"{_camel(spec.kind)}JobCreate",
        __base__=JobCreateBase,
        __doc__=f"A request for a {spec.kind.value} job.",
        kind=(Literal[spec.kind.value], ...),  # type: ignore[arg-type]
        input=(spec.input, ...),
    )


JOB_CREATE_MODELS: dict[JobKind, type[JobCreateBase]] = {kind: _request_model(spec) for kind, spec in KINDS.items()}

if TYPE_CHECKING:
    JobCreate = JobCreateBase
else:
    # The body of POST /v1/jobs: `kind` picks which input schema validates `input`.
    JobCreate = Annotated[Union[tuple(JOB_CREATE_MODELS.values())], Field(discriminator="kind")]  # noqa: UP007
JOB_CREATE_ADAPTER: TypeAdapter[JobCreateBase] = TypeAdapter(JobCreate)


# ---- jobs -----------------------------------------------------------------------------------


class WebhookPublic(BaseModel):
    """Where a job's webhook goes and how its delivery went.

    `status`: `waiting` until the job finishes, then `pending` while it is (re)tried, `delivered` once
    the receiver answered 2xx, `failed` after WEBHOOK_MAX_ATTEMPTS.
    """

    url: str
    status: Literal["waiting", "pending", "delivered", "failed"]
    attempts: int
    last_status: int | None  # the receiver's HTTP status on the last attempt (None: no answer)
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None


class JobErrorPublic(BaseModel):
    """Why a job failed: a stable code and a human message."""

    code: str
    message: str


class JobPublicBase(BaseModel):
    """A job as the API returns it."""

    id: UUID
    kind: JobKind
    model: str
    status: JobStatus
    input: JobInput
    result: JobOutput | None
    error: JobErrorPublic | None
    attempts: int
    priority: Priority
    cached: bool  # answered from an identical job's result at submission; no worker ran it
    progress: float | None  # 0..1 while running
    progress_detail: ProgressDetail | None  # what a long job reports: steps and loss, bytes, records
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    webhook: WebhookPublic | None = None  # None: the job has no webhook


# A job's input, result and progress read back as stored when they no longer validate (`job_as_stored`):
# such a value is a plain dict, written out as it is. No return type, so the field's documented schema
# stays its own (a return type of Any would document it as anything).
_AS_STORED = WrapSerializer(lambda value, handler: value if isinstance(value, dict) else handler(value))
# The fields a newer version may no longer accept as stored: what the job's kind types.
_KIND_TYPED = ("input", "result", "progress_detail")


def _response_model(spec: KindSpec[JobInput]) -> type[JobPublicBase]:
    fields: dict[str, object] = {
        "kind": (Literal[spec.kind.value], ...),
        "input": (Annotated[spec.input, _AS_STORED], ...),
        "result": (Annotated[spec.output | None, _AS_STORED], ...),
        "progress_detail": (Annotated[(spec.progress or ProgressDetail) | None, _AS_STORED], None),
    }
    return create_model(  # type: ignore[call-overload, no-any-return]
        f"{_camel(spec.kind)}Job", __base__=JobPublicBase, __doc__=f"A {spec.kind.value} job.", **fields
    )


JOB_PUBLIC_MODELS: dict[JobKind, type[JobPublicBase]] = {kind: _response_model(spec) for kind, spec in KINDS.items()}

if TYPE_CHECKING:
    JobPublic = JobPublicBase
else:
    # A job as the API returns it: `kind` says which input, result and progress it carries.
    JobPublic = Annotated[Union[tuple(JOB_PUBLIC_MODELS.values())], Field(discriminator="kind")]  # noqa: UP007

_JOB_PUBLIC = TypeAdapter(JobPublic)


class _StoredJob(JobPublicBase):
    """A job whose kind-typed fields are taken as they are: the rest is checked as ever."""

    input: Any
    result: Any
    progress_detail: Any = None


def job_public(job: "Job") -> JobPublicBase:
    """The public view of a job row, its input, result and progress parsed by the job's kind."""
    error = None if job.error_code is None else JobErrorPublic(code=job.error_code, message=job.error_message or "")
    fields = {
        "id": job.id,
        "kind": job.kind.value,
        "model": job.model,
        "status": job.status,
        "input": job.input,
        "result": job.result,
        "error": error,
        "attempts": job.attempts,
        "priority": job.priority,
        "cached": job.cached,
        "progress": job.progress,
        "progress_detail": job.progress_detail,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "webhook": _webhook_public(job),
    }
    try:
        return JOB_PUBLIC_MODELS[job.kind].model_validate(fields)
    except ValidationError as exc:
        log.warning("job %s: stored %s not valid in this version, answered as stored: %s", job.id,
                    " and ".join(_invalid_fields(exc)), exc)  # fmt: skip
        return job_as_stored(fields)


def job_as_stored(fields: dict[str, Any]) -> JobPublicBase:
    """A job with its input, result and progress exactly as stored, unchecked, the rest checked.

    What a job written by an older version reads back as once a newer one narrows what its kind
    accepts (a lower bound on `max_new_tokens`, a field renamed): the job as it was submitted and
    run, rather than an error for it, and for every page of the listing it is on. A ValidationError
    if anything else is wrong (an unknown `kind`, a bad status or id)."""
    stored = _StoredJob.model_validate(fields)
    model = JOB_PUBLIC_MODELS[stored.kind]
    return model.model_construct(
        **{name: getattr(stored, name) for name in model.model_fields} | {"kind": stored.kind.value}
    )


def parse_job_public(data: object) -> JobPublicBase:
    """A job from the API's JSON, decoded (the client's reading of it): typed by its kind, or as stored,
    as the API answered it."""
    try:
        return _JOB_PUBLIC.validate_python(data)
    except ValidationError as exc:
        if not isinstance(data, dict) or not set(_invalid_fields(exc)) <= set(_KIND_TYPED):
            raise
        return job_as_stored(data)


def _invalid_fields(exc: ValidationError) -> list[str]:
    """The top-level fields a job's errors are in (a union's errors start with the member's tag)."""
    found: list[str] = []
    for error in exc.errors():
        loc = error["loc"][1:] if error["loc"] and error["loc"][0] in JOB_PUBLIC_MODELS else error["loc"]
        if loc and str(loc[0]) not in found:
            found.append(str(loc[0]))
    return found


def _webhook_public(job: "Job") -> WebhookPublic | None:
    if job.webhook_url is None:
        return None
    delivery = job.webhook_delivery
    if delivery is None:
        return WebhookPublic(
            url=job.webhook_url, status="waiting", attempts=0, last_status=None, last_error=None,
            delivered_at=None, next_attempt_at=None,
        )  # fmt: skip
    pending = delivery.status == "pending"
    return WebhookPublic(
        url=delivery.url,
        status=delivery.status.value,
        attempts=delivery.attempts,
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        delivered_at=delivery.delivered_at,
        next_attempt_at=delivery.next_attempt_at if pending else None,
    )


class ErrorDetail(BaseModel):
    """What went wrong: a stable machine-readable `code`, a message, and the input field at fault."""

    code: str
    message: str
    field: str | None = None


class JobsPublic(BaseModel):
    """A page of jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""

    data: list[JobPublic]
    next_cursor: str | None


# ---- batches --------------------------------------------------------------------------------


class JobsBatchItem(BaseModel):
    """One job of a batch, with its own Idempotency-Key (the header's role for a single job)."""

    model_config = ConfigDict(extra="forbid")

    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255, pattern=IDEMPOTENCY_KEY_PATTERN)
    job: JobCreate


class JobsBatchCreate(BaseModel):
    """The body of POST /v1/jobs:batch: up to MAX_JOBS_PER_BATCH jobs, accepted in one transaction."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobsBatchItem] = Field(min_length=1, max_length=JOBS_PER_BATCH_CEILING)


class JobsBatchItemResult(BaseModel):
    """What became of one job of a batch: `status` is the HTTP status it would have had alone (202, or
    its error's), with the job (`created` False for an Idempotency-Key replay) or the error."""

    status: int
    job: JobPublic | None = None
    created: bool | None = None
    error: ErrorDetail | None = None


class JobsBatchPublic(BaseModel):
    """The answer to a batch: one result per job, in the request's order."""

    items: list[JobsBatchItemResult]


# ---- models and datasets --------------------------------------------------------------------


class ModelPublic(BaseModel):
    """A model jobs may name: a registry entry or one a training job produced."""

    name: str
    family: str | None
    checkpoint: str
    description: str
    trained: bool  # produced by a training job of this service
    metrics: dict[str, float | None] | None = None  # null: a metric that came out NaN or infinite
    loss_curve_url: str | None = None  # its training's loss curve (a PNG), where it has one


class ModelsPublic(BaseModel):
    """Every model jobs may name (besides any hub id)."""

    data: list[ModelPublic]


class DatasetPublic(BaseModel):
    """A dataset a download job registered, for training and evaluation jobs."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    format: str
    tasks: list[str]
    splits: dict[str, int]
    source: str
    created_at: datetime


class DatasetsPublic(BaseModel):
    """Every registered dataset."""

    data: list[DatasetPublic]


# ---- usage ----------------------------------------------------------------------------------


class JobCountPublic(BaseModel):
    """How many of the tenant's jobs of one kind are in one status."""

    kind: JobKind
    status: JobStatus
    count: int


class ImagesUsagePublic(BaseModel):
    """The images the tenant stored (uploads, inline and fetched images)."""

    count: int
    bytes: int


class ModelUsagePublic(BaseModel):
    """The model time the tenant's jobs took on one model, each job's share of its batch's."""

    model: str
    worker_seconds: float
    jobs: int  # the jobs whose time is counted


class UsagePublic(BaseModel):
    """A tenant's usage from `from` until `to` (unbounded where not given): jobs submitted, by kind and
    status; images stored; worker-seconds by model, counted when each job finished."""

    model_config = ConfigDict(populate_by_name=True)

    tenant: str
    from_: datetime | None = Field(alias="from")
    to: datetime | None
    jobs: list[JobCountPublic]
    images: ImagesUsagePublic
    models: list[ModelUsagePublic]
    worker_seconds: float  # all models together
