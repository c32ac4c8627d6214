"""Accepting a job: validate it, store its inline images, commit its row, then send its message.

The order is the outbox's guarantee: the row (with any Idempotency-Key) is committed before the
message is sent, so a worker never receives an id it cannot find; a send that fails, or a process
that dies before sending, leaves the job queued and unsent, and the sweeper sends it later.
"""

import hashlib
import json
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from blip2.errors import InvalidImage, ModelNotFound
from blip2.registry import Registry
from jobs.broker import Dispatcher, queue_for_job
from jobs.catalog import get_dataset, get_trained_model, resolve_trained, serving_model
from jobs.db import SessionFactory, session_scope
from jobs.errors import (
    BatchTooLarge,
    DatasetNotFound,
    IdempotencyKeyReused,
    ImageNotFound,
    ModelNameTaken,
    TenantQueueFull,
)
from jobs.fetch import with_fetched_image
from jobs.image_store import missing_image_ids, store_image
from jobs.models import IdempotencyKey, Job
from jobs.repository import add_job, count_unfinished_jobs, get_job, mark_dispatched
from jobs.schemas import EvaluateInput, ImageFields, JobCreateBase, JobInput, MatchInput, TrainInput
from jobs.settings import Settings


@dataclass(frozen=True)
class Submission:
    """The services a submission needs, built once per process."""

    sessions: SessionFactory
    dispatcher: Dispatcher
    registry: Registry
    settings: Settings


@dataclass(frozen=True)
class Submitted:
    """The accepted job, and whether this request created it (False: an Idempotency-Key replay)."""

    job: Job
    created: bool


class _KeyTakenMeanwhile(Exception):
    """A concurrent request committed the same Idempotency-Key first."""


def submit_job(ctx: Submission, tenant: str, request: JobCreateBase, idempotency_key: str | None = None) -> Submitted:
    """Validate and record a job of `tenant`, then send its message; returns the existing job for a replayed key.

    Every name a job refers to (images, datasets, trained models) is looked up among the tenant's own.
    """
    model = "" if request.kind == "download" else request.model or ctx.settings.BLIP2_DEFAULT_MODEL
    with session_scope(ctx.sessions) as session:
        _check_references(session, ctx.registry, tenant, request.input, model)
    _check_batch_size(request.input, ctx.settings)
    fingerprint = _fingerprint(request, model)
    # An image_url is fetched (SSRF-guarded, size- and time-limited) before any transaction opens,
    # then stored for the tenant like an inline image; the fingerprint keeps the URL.
    request = request.model_copy(update={"input": with_fetched_image(request.input, ctx.settings)})
    try:
        submitted = _record(ctx, tenant, request, model, idempotency_key, fingerprint)
    except _KeyTakenMeanwhile:
        with session_scope(ctx.sessions) as session:
            return Submitted(_replay(session, tenant, str(idempotency_key), fingerprint), created=False)
    if submitted.created:
        _dispatch(ctx, submitted.job)
    return submitted


def _record(
    ctx: Submission, tenant: str, request: JobCreateBase, model: str, key: str | None, fingerprint: str
) -> Submitted:
    with session_scope(ctx.sessions) as session:
        if key is not None and _find_key(session, tenant, key) is not None:
            return Submitted(_replay(session, tenant, key, fingerprint), created=False)
        _check_queue_depth(session, tenant, ctx.settings)
        job_input = _store_inline_images(session, tenant, request.input, ctx.settings)
        _check_images_exist(session, tenant, job_input)
        data = job_input.model_dump(mode="json", exclude_none=True)
        queue = queue_for_job(request.kind, serving_model(session, model, tenant))
        job = add_job(session, tenant=tenant, kind=request.kind, model=model, queue=queue, input=data)
        if key is not None and not _claim_key(session, tenant, key, fingerprint, job.id):
            raise _KeyTakenMeanwhile
        return Submitted(job, created=True)


def _check_queue_depth(session: Session, tenant: str, settings: Settings) -> None:
    """TenantQueueFull once the tenant has MAX_UNFINISHED_JOBS_PER_TENANT jobs queued or running.

    A transaction-scoped advisory lock per tenant makes count-then-insert exact: two submissions
    of one tenant at once are counted one after the other, while other tenants never wait.
    """
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"blip2-jobs tenant {tenant}"))))
    limit = settings.MAX_UNFINISHED_JOBS_PER_TENANT
    if count_unfinished_jobs(session, tenant) >= limit:
        raise TenantQueueFull(
            f"{limit} jobs of this tenant are already queued or running; try again when some finish",
            retry_after_s=settings.TENANT_QUEUE_FULL_RETRY_AFTER_S,
        )


def _dispatch(ctx: Submission, job: Job) -> None:
    if ctx.dispatcher.try_send(job.id, job.queue):
        with session_scope(ctx.sessions) as session:
            mark_dispatched(session, job.id)


def _check_references(session: Session, registry: Registry, tenant: str, job_input: JobInput, model: str) -> None:
    """The model, dataset and output names a job refers to exist for the tenant (or, for an output, are free)."""
    if model:
        _check_model(resolve_trained(session, registry, model, tenant), model)
    if isinstance(job_input, TrainInput | EvaluateInput) and get_dataset(session, tenant, job_input.dataset) is None:
        raise DatasetNotFound(f"no dataset named {job_input.dataset!r}; download it first", field="input.dataset")
    if isinstance(job_input, TrainInput):
        name = job_input.output_model
        if registry.is_known(name) or get_trained_model(session, tenant, name) is not None:
            raise ModelNameTaken(f"a model named {name!r} already exists", field="input.output_model")


def _check_model(registry: Registry, model: str) -> None:
    if not registry.names_or_hub_id(model):
        names = ", ".join(sorted(spec.name for spec in registry.specs()))
        raise ModelNotFound(f"model: unknown model {model!r} (known: {names}; or a hub id)")


def _check_batch_size(job_input: JobInput, settings: Settings) -> None:
    if isinstance(job_input, MatchInput) and job_input.candidate_count > settings.MAX_BATCH_SIZE:
        field = "input.texts" if job_input.texts is not None else "input.image_ids"
        raise BatchTooLarge(
            f"{job_input.candidate_count} candidates, over the limit of {settings.MAX_BATCH_SIZE}",
            field=field,
        )


def _fingerprint(request: JobCreateBase, model: str) -> str:
    body = request.model_dump(mode="json") | {"model": model}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _store_inline_images(session: Session, tenant: str, job_input: JobInput, settings: Settings) -> JobInput:
    """The input with an inline base64 `image` replaced by the `image_id` it is stored under."""
    if not isinstance(job_input, ImageFields) or job_input.image is None:
        return job_input
    try:
        stored = store_image(session, tenant, job_input.image, settings)
    except InvalidImage as exc:
        raise type(exc)(f"input.image: {exc}") from exc
    return job_input.model_copy(update={"image": None, "image_id": stored.id})


def _check_images_exist(session: Session, tenant: str, job_input: JobInput) -> None:
    if not isinstance(job_input, ImageFields):
        return
    missing = missing_image_ids(session, job_input.referenced_image_ids(), tenant)
    if missing:
        field = "input.image_ids" if isinstance(job_input, MatchInput) and job_input.image_ids else "input.image_id"
        raise ImageNotFound(f"no uploaded image with id {', '.join(sorted(map(str, missing)))}", field=field)


def _find_key(session: Session, tenant: str, key: str) -> IdempotencyKey | None:
    return session.get(IdempotencyKey, {"tenant": tenant, "key": key}, populate_existing=True)


def _replay(session: Session, tenant: str, key: str, fingerprint: str) -> Job:
    """The job first created with this key, if the request is the same one."""
    record = _find_key(session, tenant, key)
    if record is None:
        raise _KeyTakenMeanwhile
    if record.request_hash != fingerprint:
        raise IdempotencyKeyReused(f"Idempotency-Key {key!r} was used for a different request")
    return get_job(session, record.job_id, tenant)


def _claim_key(session: Session, tenant: str, key: str, fingerprint: str, job_id: UUID) -> bool:
    """Record the key for this job; False if another request holds it (its insert committed first)."""
    statement = (
        insert(IdempotencyKey)
        .values(tenant=tenant, key=key, request_hash=fingerprint, job_id=job_id)
        .on_conflict_do_nothing(index_elements=["tenant", "key"])
        .returning(IdempotencyKey.key)
    )
    return session.execute(statement).first() is not None
