"""Accepting a job: validate it, store its inline image, commit its row, then send its message.

One transaction per submission: the checks, the stored image, the job row (counted against the
tenant's limit by the jobs table's own trigger) and its Idempotency-Key commit together, and the
message is sent after the commit. That order is the outbox's guarantee: a worker never receives an
id it cannot find, and a send that fails, or a process that dies before sending, leaves the job
queued, and the sweeper sends it later.

An `image_url` is fetched, and a `webhook_url`'s address checked, before the transaction opens (it
may take FETCH_TIMEOUT_S), and only when the request is not a replay of an Idempotency-Key already
seen: a replay fetches nothing.

A job identical to one that already succeeded is answered from that job's result instead
(jobs/result_cache.py): its row is committed succeeded and `cached`, no message is sent, and it does
not count against the tenant's queue.

A batch (`submit_batch`) runs the same steps per job: every job is prepared (replay, fetch), then
each is recorded in a savepoint of the one transaction, so a refused job leaves nothing behind while
the others commit together; then the accepted jobs' messages are sent.

Single submissions that arrive together (`submit_together`, which the API uses for the submissions
that reach a process while it records others) share one transaction: one INSERT, one commit, one
connection, one worker thread for all of them. Each still gets exactly the outcome it would have had alone: if
any of them fails, the transaction is rolled back and each is submitted alone. Those that fetch,
resolve or decode something first (an `image_url`, a `webhook_url`, an inline image) always go alone
(`can_go_together`): they would hold up the others.
"""

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar
from uuid import UUID

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from blip2.errors import Blip2Error, DatasetNotFound, InvalidImage, ModelNotFound, UnsupportedOperation
from blip2.registry import ModelSpec, Registry, generation_limit
from jobs.broker import Dispatcher, JobMessage
from jobs.catalog import get_dataset, get_trained_model, resolve_trained, serving_model
from jobs.db import SessionFactory, is_tenant_queue_full
from jobs.errors import (
    BatchTooLarge,
    IdempotencyKeyReused,
    JobsError,
    ModelNameTaken,
    TenantQueueFull,
    TooManyJobs,
    UnknownImage,
)
from jobs.fetch import with_fetched_image
from jobs.image_store import ImageHashes, store_image
from jobs.inputs import EvaluateInput, GeneratingInput, ImageFields, JobInput, MatchInput, TrainInput
from jobs.kinds import KINDS, JobKind, batch_key
from jobs.models import TRAINING_NAME_INDEX, IdempotencyKey, Job
from jobs.presence import PresenceCache
from jobs.queues import queue_for_trained
from jobs.repository import NewJob, add_jobs, get_job
from jobs.result_cache import (
    SHARED_SCOPE,
    cache_key,
    cacheable,
    cached_result,
    checkpoint_fingerprint,
    trained_fingerprint,
)
from jobs.schemas import JobCreateBase
from jobs.settings import Settings
from jobs.status import JobStatus
from jobs.webhooks import check_webhook_url, ensure_secret

_T = TypeVar("_T")


@dataclass(frozen=True)
class Submission:
    """The services a submission needs, built once per process."""

    sessions: SessionFactory
    dispatcher: Dispatcher
    registry: Registry
    settings: Settings
    presence: PresenceCache = field(default_factory=PresenceCache)  # which trained models have workers
    images: ImageHashes = field(default_factory=ImageHashes)  # the images' content hashes read so far


@dataclass(frozen=True)
class Submitted:
    """The accepted job, and whether this request created it (False: an Idempotency-Key replay)."""

    job: Job
    created: bool


@dataclass(frozen=True)
class Refused:
    """A job of a batch that was not accepted, and why (the error a single submission would raise)."""

    error: JobsError | Blip2Error


@dataclass(frozen=True)
class BatchItem:
    """One job of a batch and its own Idempotency-Key."""

    request: JobCreateBase
    idempotency_key: str | None = None


@dataclass(frozen=True)
class _Target:
    """The model a job names, as the registry resolves it for the tenant."""

    name: str
    spec: ModelSpec | None  # None for a download (no model)
    owner: str  # the tenant, for the tenant's trained model; "" for a registry model


@dataclass(frozen=True)
class _Prepared:
    """A request that is not a replay, ready to record: its model, its fingerprint, its URL fetched."""

    request: JobCreateBase
    model: str
    fingerprint: str
    key: str | None


def submit_job(
    ctx: Submission,
    tenant: str,
    request: JobCreateBase,
    idempotency_key: str | None = None,
    *,
    session: Session | None = None,
) -> Submitted:
    """Validate and record a job of `tenant` in one transaction, then send its message; returns the
    existing job for a replayed Idempotency-Key. Runs in `session` (the request's) when given.

    Every name a job refers to (images, datasets, trained models) is looked up among the tenant's own.
    """
    if session is None:
        with ctx.sessions() as own:
            return submit_job(ctx, tenant, request, idempotency_key, session=own)
    outcome = _prepare(ctx, session, tenant, BatchItem(request, idempotency_key))
    if isinstance(outcome, _Prepared):
        outcome = _record_one(ctx, session, tenant, outcome, alone=True)
        session.commit()
        _send(ctx, [outcome])
    return outcome


def submit_batch(
    ctx: Submission, tenant: str, items: Sequence[BatchItem], *, session: Session
) -> list[Submitted | Refused]:
    """Submit many jobs in one transaction: each is checked, recorded or refused on its own (a refused
    job leaves nothing behind, the others are kept), all are committed together, then each accepted
    job's message is sent. Outcomes in the order of `items`.
    """
    if len(items) > ctx.settings.MAX_JOBS_PER_BATCH:
        raise TooManyJobs(f"{len(items)} jobs, over the limit of {ctx.settings.MAX_JOBS_PER_BATCH}", field="jobs")
    prepared = [_refused_or(partial(_prepare, ctx, session, tenant, item)) for item in items]
    outcomes = [
        _refused_or(partial(_record_one, ctx, session, tenant, p)) if isinstance(p, _Prepared) else p for p in prepared
    ]
    session.commit()
    _send(ctx, [o for o in outcomes if isinstance(o, Submitted)])
    return outcomes


def can_go_together(request: JobCreateBase) -> bool:
    """Whether a submission may share a transaction with others (`submit_together`): it fetches,
    resolves and decodes nothing before its row is written."""
    if request.webhook_url is not None:
        return False
    job_input = request.input
    return not isinstance(job_input, ImageFields) or (job_input.image_url is None and job_input.image is None)


def submit_together(
    ctx: Submission, items: Sequence[tuple[str, BatchItem]], *, session: Session
) -> list[Submitted | Exception]:
    """Submit single jobs (`tenant`, job) that arrived together in one transaction, then send their
    messages: each outcome as `submit_job` would have returned it, or the exception it would have
    raised, in the order of `items`. If any fails, whatever it is (a refused job, its tenant's queue
    full, an Idempotency-Key taken meanwhile), nothing of them is kept and each is submitted alone;
    then the jobs may be expired, and are read again on first use: use them while `session` is open.
    Only for jobs that `can_go_together`.
    """
    if len(items) > 1:
        try:
            together = _all_submitted(ctx, session, items)
            session.commit()
        except Exception:
            session.rollback()
        else:
            _send(ctx, together)
            return list(together)
    return [_alone(ctx, session, tenant, item) for tenant, item in items]


def _all_submitted(ctx: Submission, session: Session, items: Sequence[tuple[str, BatchItem]]) -> list[Submitted]:
    """Each job recorded in the open transaction, their rows written by one INSERT (`python -m
    bench.submission` prints what that saves). An Idempotency-Key's job is written on its own, after
    those before it, so that a key used twice in a group finds its job."""
    submitted: list[Submitted] = []
    unwritten: list[NewJob] = []
    for tenant, item in items:
        if item.idempotency_key is not None:
            submitted += [Submitted(job, created=True) for job in add_jobs(session, unwritten)]
            unwritten = []
            submitted.append(_submitted(ctx, session, tenant, item))
        else:
            prepared = _prepare(ctx, session, tenant, item)
            assert isinstance(prepared, _Prepared)  # only a key is ever replayed
            unwritten.append(_new_job(ctx, session, tenant, prepared))
    return submitted + [Submitted(job, created=True) for job in add_jobs(session, unwritten)]


def _submitted(ctx: Submission, session: Session, tenant: str, item: BatchItem) -> Submitted:
    """The job recorded in the open transaction, or the first job of its replayed Idempotency-Key."""
    outcome = _prepare(ctx, session, tenant, item)
    if isinstance(outcome, Submitted):
        return outcome
    return Submitted(_record(ctx, session, tenant, outcome), created=True)


def _alone(ctx: Submission, session: Session, tenant: str, item: BatchItem) -> Submitted | Exception:
    try:
        return submit_job(ctx, tenant, item.request, item.idempotency_key, session=session)
    except Exception as exc:
        session.rollback()  # the next job starts a transaction of its own
        return exc


def _refused_or(step: Callable[[], _T]) -> _T | Refused:
    """The step's result, or Refused with the typed error it raised (any other error propagates)."""
    try:
        return step()
    except (JobsError, Blip2Error) as exc:
        return Refused(exc)


def _prepare(ctx: Submission, session: Session, tenant: str, item: BatchItem) -> Submitted | _Prepared:
    """The first job of a replayed Idempotency-Key, or the request ready to record.

    What may take seconds happens here, before the job's transaction opens, and only for a request
    that is not a replay: the webhook URL's address check and the image_url's fetch.
    """
    request = item.request
    model = _model_name(ctx, request)
    fingerprint = _fingerprint(request, model)
    key = item.idempotency_key
    if key is not None and (replayed := _replay(session, tenant, key, fingerprint)):
        return Submitted(replayed, created=False)
    image_url = request.input.image_url if isinstance(request.input, ImageFields) else None
    if request.webhook_url is not None or image_url is not None:
        session.rollback()  # no transaction stays open while addresses are resolved and URLs fetched
    if request.webhook_url is not None:
        check_webhook_url(request.webhook_url, ctx.settings.fetch_allowed_hosts)
    if image_url is not None:
        request = request.model_copy(update={"input": with_fetched_image(request.input, ctx.settings)})
    return _Prepared(request, model, fingerprint, key)


def _record_one(
    ctx: Submission, session: Session, tenant: str, prepared: _Prepared, *, alone: bool = False
) -> Submitted:
    """Record the job in the open transaction. Among a batch's jobs, in a savepoint: if it is refused,
    or its Idempotency-Key was taken meanwhile, nothing of it stays and the others do. `alone`, the
    transaction is the job's own (no savepoint's two round trips), and such an outcome rolls it back."""
    try:
        if alone:
            job = _record(ctx, session, tenant, prepared)
        else:
            with session.begin_nested():
                job = _record(ctx, session, tenant, prepared)
    except DBAPIError as exc:
        if is_tenant_queue_full(exc):
            raise _queue_full(ctx.settings) from exc
        if _is_name_in_training(exc):
            raise _name_in_training(prepared.request) from exc
        raise
    except _KeyTakenMeanwhile:
        if alone:
            session.rollback()
        return Submitted(_replay_or_fail(session, tenant, str(prepared.key), prepared.fingerprint), created=False)
    return Submitted(job, created=True)


def _send(ctx: Submission, submitted: Sequence[Submitted]) -> None:
    """Send the message of each job this request created (its row is committed), but for those the
    result cache answered: they are never queued."""
    queued = [JobMessage.of(item.job) for item in submitted if item.created and item.job.status is JobStatus.QUEUED]
    ctx.dispatcher.try_send_all(queued)


class _KeyTakenMeanwhile(Exception):
    """A concurrent request committed the same Idempotency-Key first."""


def _record(ctx: Submission, session: Session, tenant: str, prepared: _Prepared) -> Job:
    job = add_jobs(session, [_new_job(ctx, session, tenant, prepared)])[0]
    if prepared.key is not None and not _claim_key(session, tenant, prepared.key, prepared.fingerprint, job.id):
        raise _KeyTakenMeanwhile
    return job


def _new_job(ctx: Submission, session: Session, tenant: str, prepared: _Prepared) -> NewJob:
    """The job to add for the request, once every check has passed (its inline image stored)."""
    request = prepared.request
    target = _resolve_target(session, ctx.registry, tenant, prepared.model)
    _check_request(session, ctx, tenant, request, target)
    job_input = _store_inline_image(session, tenant, request.input, ctx.settings)
    stored_now = job_input is not request.input  # an inline image, stored in this transaction
    images = _check_images_exist(session, ctx.images, tenant, job_input, remember=not stored_now)
    kind = JobKind(request.kind)
    result_key = _result_key(session, ctx, tenant, kind, job_input, target, images)
    answer = cached_result(session, result_key) if result_key is not None and request.cache else None
    if request.webhook_url is not None:
        ensure_secret(session, tenant)  # the first time a tenant names one: every delivery is signed
    return NewJob(
        tenant=tenant,
        kind=kind,
        model=target.name,
        queue=_route(session, ctx, tenant, kind, target),
        input=job_input.model_dump(mode="json", exclude_none=True),
        batch_key=batch_key(kind, job_input, target.name, target.owner),
        webhook_url=request.webhook_url,
        tenants_webhook=request.webhook_url is None,
        priority=request.priority,
        cache_key=result_key,
        cached_result=answer,
    )


def _route(session: Session, ctx: Submission, tenant: str, kind: JobKind, target: _Target) -> str:
    """The job's queue: its trained model's own workers while one lives, else its (base) model's."""
    spec = KINDS[kind]
    if target.owner and not spec.long:
        own = queue_for_trained(tenant, target.name)
        if ctx.presence.is_served(session, own):
            return own
    return spec.queue(serving_model(session, ctx.registry, target.name, tenant))


def _result_key(
    session: Session,
    ctx: Submission,
    tenant: str,
    kind: JobKind,
    job_input: JobInput,
    target: _Target,
    images: Mapping[UUID, str],
) -> str | None:
    """The job's result-cache key; None for jobs whose result answers no other (see jobs/result_cache.py)."""
    if target.spec is None or not cacheable(kind, job_input):
        return None
    checkpoint = _checkpoint_fingerprint(session, tenant, target)
    if checkpoint is None:
        return None
    shared = ctx.settings.RESULT_CACHE_SHARED and not target.owner
    scope = SHARED_SCOPE if shared else tenant
    return cache_key(scope=scope, kind=kind, model=target.name, checkpoint=checkpoint, job_input=job_input,
                     image_hashes=images)  # fmt: skip


def _checkpoint_fingerprint(session: Session, tenant: str, target: _Target) -> str | None:
    if not target.owner:
        return checkpoint_fingerprint(target.spec) if target.spec is not None else None
    trained = get_trained_model(session, tenant, target.name)
    return None if trained is None else trained_fingerprint(trained)


# ---- checks ---------------------------------------------------------------------------------


def _model_name(ctx: Submission, request: JobCreateBase) -> str:
    if request.kind == JobKind.DOWNLOAD:
        return ""
    if request.model:
        return request.model
    if KINDS[request.kind].needs_retrieval_model(request.input):
        return ctx.settings.BLIP2_DEFAULT_MATCH_MODEL
    return ctx.settings.BLIP2_DEFAULT_MODEL


def _resolve_target(session: Session, registry: Registry, tenant: str, name: str, field: str = "model") -> _Target:
    """The job's model for the tenant: a registry name, a hub id, or one of the tenant's trained models
    ("" for a download, which names none). Never a path on the server's disk: it may be another tenant's."""
    if not name:
        return _Target("", None, "")
    resolved = resolve_trained(session, registry, name, tenant)
    if not resolved.names_or_hub_id(name):
        known = ", ".join(sorted(spec.name for spec in registry.specs()))
        raise ModelNotFound(f"unknown model {name!r} (known: {known}; or a hub id)", field=field)
    return _Target(name, resolved.resolve(name), "" if registry.is_known(name) else tenant)


def _check_request(session: Session, ctx: Submission, tenant: str, request: JobCreateBase, target: _Target) -> None:
    """Refuse what can only fail: a kind the model cannot run, more new tokens than it has positions,
    a dataset never downloaded, an output name already taken, more candidates than a batch holds."""
    job_input = request.input
    if target.spec is not None:
        _check_model_fits(target.spec, JobKind(request.kind), job_input)
    if isinstance(job_input, TrainInput | EvaluateInput) and get_dataset(session, tenant, job_input.dataset) is None:
        raise DatasetNotFound(f"no dataset named {job_input.dataset!r}; download it first", field="input.dataset")
    if isinstance(job_input, TrainInput) and job_input.start_from is not None:
        # Named by the client like the job's model, so resolved by the same rules (no paths).
        _resolve_target(session, ctx.registry, tenant, job_input.start_from, field="input.start_from")
    if isinstance(job_input, TrainInput):
        # A name a queued or running training job will take is refused as the row is written (`_record_one`).
        name = job_input.output_model
        if ctx.registry.is_known(name) or get_trained_model(session, tenant, name) is not None:
            raise ModelNameTaken(f"a model named {name!r} already exists", field="input.output_model")
    if isinstance(job_input, MatchInput) and job_input.candidate_count > ctx.settings.MAX_BATCH_SIZE:
        raise BatchTooLarge(
            f"{job_input.candidate_count} candidates, over the limit of {ctx.settings.MAX_BATCH_SIZE}",
            field=job_input.candidates_field,
        )


def _check_model_fits(spec: ModelSpec, kind: JobKind, job_input: JobInput) -> None:
    refusal = KINDS[kind].refusal(spec.family, job_input)
    if refusal is not None:
        raise UnsupportedOperation(f"model {spec.name!r} cannot run {kind.value} jobs: {refusal}", field="model")
    limit = generation_limit(spec)
    requested = job_input.decoding.max_new_tokens if isinstance(job_input, GeneratingInput) else None
    if limit is not None and requested is not None and requested > limit:
        raise UnsupportedOperation(
            f"at most {limit} new tokens for model {spec.name!r} (its language model's positions, less its"
            f" image tokens); {requested} asked",
            field="input.decoding.max_new_tokens",
        )


def _is_name_in_training(exc: DBAPIError) -> bool:
    """True when the jobs table refused the row because another unfinished training job of the tenant
    makes a model of the same name (its unique index, migration 0009)."""
    return getattr(getattr(exc.orig, "diag", None), "constraint_name", None) == TRAINING_NAME_INDEX


def _name_in_training(request: JobCreateBase) -> ModelNameTaken:
    """The training job's output_model is the name another of the tenant's queued or running training
    jobs will register. The index decides, not a read before the insert: of two submissions at once,
    or two jobs of one batch or group, exactly one is accepted."""
    assert isinstance(request.input, TrainInput)  # the index holds training jobs only
    name = request.input.output_model
    message = f"a model named {name!r} is already being trained (by a queued or running job of this tenant)"
    return ModelNameTaken(message, field="input.output_model")


def _queue_full(settings: Settings) -> TenantQueueFull:
    """The tenant already has MAX_UNFINISHED_JOBS_PER_TENANT jobs queued or running.

    The jobs table's insert trigger admits a job only below the limit, counting in a row per tenant
    that the insert locks until its transaction ends: two submissions of one tenant at once are
    counted one after the other, exactly, while other tenants never wait.
    """
    limit = settings.MAX_UNFINISHED_JOBS_PER_TENANT
    return TenantQueueFull(
        f"{limit} jobs of this tenant are already queued or running; try again when some finish",
        retry_after_s=settings.TENANT_QUEUE_FULL_RETRY_AFTER_S,
    )


def _fingerprint(request: JobCreateBase, model: str) -> str:
    body = request.model_dump(mode="json") | {"model": model}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _store_inline_image(session: Session, tenant: str, job_input: JobInput, settings: Settings) -> JobInput:
    """The input with an inline base64 `image` replaced by the `image_id` it is stored under."""
    if not isinstance(job_input, ImageFields) or job_input.image is None:
        return job_input
    try:
        stored = store_image(session, tenant, job_input.image, settings)
    except InvalidImage as exc:
        raise type(exc)(str(exc), field="input.image") from exc
    return job_input.model_copy(update={"image": None, "image_id": stored.id})


def _check_images_exist(
    session: Session, hashes: ImageHashes, tenant: str, job_input: JobInput, *, remember: bool
) -> dict[UUID, str]:
    """The content hash of every image the input names; UnknownImage if one is not the tenant's.
    `remember`: whether the hashes read may be kept for later submissions (see ImageHashes)."""
    if not isinstance(job_input, ImageFields):
        return {}
    wanted = job_input.referenced_image_ids()
    found = hashes(session, wanted, tenant, remember=remember)
    missing = set(wanted) - found.keys()
    if missing:
        field = "input.image_ids" if isinstance(job_input, MatchInput) and job_input.image_ids else "input.image_id"
        raise UnknownImage(f"no uploaded image with id {', '.join(sorted(map(str, missing)))}", field=field)
    return found


# ---- idempotency keys -----------------------------------------------------------------------


def _replay(session: Session, tenant: str, key: str, fingerprint: str) -> Job | None:
    """The job first created with this key if the request is the same one; None for a new key."""
    record = session.get(IdempotencyKey, {"tenant": tenant, "key": key}, populate_existing=True)
    if record is None:
        return None
    if record.request_hash != fingerprint:
        raise IdempotencyKeyReused(f"Idempotency-Key {key!r} was used for a different request")
    return get_job(session, record.job_id, tenant)


def _replay_or_fail(session: Session, tenant: str, key: str, fingerprint: str) -> Job:
    job = _replay(session, tenant, key, fingerprint)
    if job is None:  # the competing request's key row vanished again: its job was deleted
        raise IdempotencyKeyReused(f"Idempotency-Key {key!r} could not be claimed; send the request again")
    return job


def _claim_key(session: Session, tenant: str, key: str, fingerprint: str, job_id: UUID) -> bool:
    """Record the key for this job; False if another request holds it (its insert committed first)."""
    statement = (
        insert(IdempotencyKey)
        .values(tenant=tenant, key=key, request_hash=fingerprint, job_id=job_id)
        .on_conflict_do_nothing(index_elements=["tenant", "key"])
        .returning(IdempotencyKey.key)
    )
    return session.execute(statement).first() is not None
