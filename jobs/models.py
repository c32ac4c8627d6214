"""The tables, as SQLAlchemy 2 typed ORM classes: API keys, jobs, images, idempotency keys, datasets,
trained models, tenants and their fair-share state, worker presence, webhook secrets and deliveries.

Everything a client makes belongs to the tenant of the API key that made it (`tenant` columns);
every read is filtered by it, so another tenant's id looks exactly like one that does not exist.

The schema itself is created only by the Alembic migrations in `migrations/`; these classes must
match them (tests/jobs/test_migrations.py checks that they do).
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Enum,
    FetchedValue,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from jobs.ids import time_ordered_id
from jobs.kinds import JobKind
from jobs.schemas import WEBHOOK_URL_LENGTH
from jobs.status import JobStatus, Priority


class Base(DeclarativeBase):
    """The declarative base all tables share (and Alembic's target metadata)."""


def _now_column(nullable: bool = False) -> Mapped[Any]:
    return mapped_column(DateTime(timezone=True), server_default=None if nullable else func.now())


# Tenant names are also directory names under BLIP2_DATA_DIR/tenants/ (see jobs/tenancy.py).
TENANT_LENGTH = 64


def _tenant_column() -> Mapped[str]:
    return mapped_column(String(TENANT_LENGTH))


def _string_enum(enum: type[StrEnum], length: int) -> Enum:
    """A StrEnum stored as its values in a VARCHAR (no database enum type to migrate when a member is added)."""
    return Enum(enum, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e])


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; `prefix` (its first characters) identifies it in lists."""

    __tablename__ = "api_keys"

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid4)
    tenant: Mapped[str] = _tenant_column()
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _now_column()
    revoked_at: Mapped[datetime | None] = _now_column(nullable=True)


class Image(Base):
    """An uploaded image, stored once per tenant by content hash in Postgres so every worker can read it."""

    __tablename__ = "images"
    # Per tenant: the same bytes uploaded by two tenants are two rows, so an id never crosses tenants.
    __table_args__ = (UniqueConstraint("tenant", "sha256", name="uq_images_tenant_sha256"),)

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid4)
    tenant: Mapped[str] = _tenant_column()
    sha256: Mapped[str] = mapped_column(String(64))
    # Deferred: listing or deduplicating images never reads the bytes.
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    width: Mapped[int]
    height: Mapped[int]
    format: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int]
    created_at: Mapped[datetime] = _now_column()


@dataclass(frozen=True)
class Attempt:
    """One run of a job: its id and its attempt number (`jobs.attempts` once claimed), the token every
    write of that run is checked against, so a run that lost its job can never overwrite the next one's."""

    job_id: UUID
    number: int


# The unique index a second unfinished training job of the same tenant and `output_model` violates
# (migration 0009): the submission answers model_name_taken.
TRAINING_NAME_INDEX = "uq_jobs_training_output_model"


class Job(Base):
    """One unit of work: its typed input, where it is in its lifecycle, and its result or error.

    `dispatched_at` / `dispatch_count` are the outbox: a queued job whose last send is too old is
    sent again by the sweeper, so a lost message never strands a job. `batch_key` says which queued
    jobs may share a forward pass (jobs/kinds.py); `batch_id` names the claim (the Celery task) that
    took the job into its batch, and `attempts` doubles as the attempt token every worker write checks.
    `priority` and the tenant decide when a claim takes the job (jobs/fair_share.py); `cache_key` says
    which request its result answers (jobs/result_cache.py), `cached` that it was answered so;
    `worker_seconds` is the model time it took, written with its terminal transition (usage).
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_tenant_created_at_id", "tenant", "created_at", "id"),
        Index("ix_jobs_tenant_status", "tenant", "status"),
        # The claim reads a queue's queued jobs in order; the index holds only those.
        Index("ix_jobs_queued", "queue", "created_at", postgresql_where=text("status = 'queued'")),
        Index("ix_jobs_batch_id", "batch_id", postgresql_where=text("status = 'running'")),
        # The fair claim reads each tenant's first queued jobs of a queue.
        Index(
            "ix_jobs_queued_tenant", "queue", "tenant", "created_at", "id", postgresql_where=text("status = 'queued'")
        ),
        Index("ix_jobs_cache_key", "cache_key", postgresql_where=text("status = 'succeeded'")),
        Index("ix_jobs_tenant_finished_at", "tenant", "finished_at"),  # usage: worker-seconds by time
        # A tenant's queued or running training jobs each make a model of a name of its own.
        Index(
            TRAINING_NAME_INDEX,
            "tenant",
            text("(input ->> 'output_model')"),
            unique=True,
            postgresql_where=text("kind = 'train' AND status IN ('queued', 'running')"),
        ),
    )
    # Server defaults (created_at ...) come back with the INSERT itself (RETURNING), not a second query.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012

    id: Mapped[UUID] = mapped_column(primary_key=True, default=time_ordered_id)  # sorts in submission order
    tenant: Mapped[str] = _tenant_column()
    kind: Mapped[JobKind] = mapped_column(_string_enum(JobKind, 32))
    model: Mapped[str] = mapped_column(String(500))
    queue: Mapped[str] = mapped_column(String(600))
    status: Mapped[JobStatus] = mapped_column(_string_enum(JobStatus, 16), default=JobStatus.QUEUED)
    input: Mapped[dict[str, Any]] = mapped_column(JSONB)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None]
    attempts: Mapped[int] = mapped_column(default=0)
    progress: Mapped[float | None]
    # What a long job reports while it runs: step, epoch, loss, lr (training); bytes (downloads).
    progress_detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now_column()
    started_at: Mapped[datetime | None] = _now_column(nullable=True)
    finished_at: Mapped[datetime | None] = _now_column(nullable=True)
    dispatched_at: Mapped[datetime | None] = _now_column(nullable=True)
    dispatch_count: Mapped[int] = mapped_column(default=0)
    # Refreshed by the worker while the job runs; a stale one means the worker is gone.
    heartbeat_at: Mapped[datetime | None] = _now_column(nullable=True)
    batch_key: Mapped[str | None] = mapped_column(String(32))
    batch_id: Mapped[str | None] = mapped_column(Text)  # task id @ node name (worker/time_limits.py claim_id)
    # Where the job's outcome is POSTed once it is terminal (the request's, or its tenant's default).
    # FetchedValue: a submission sets it to a subquery of its INSERT (the tenant's default), and the
    # INSERT's RETURNING gives it back (eager_defaults) instead of a SELECT when it is read.
    webhook_url: Mapped[str | None] = mapped_column(String(WEBHOOK_URL_LENGTH), server_default=FetchedValue())
    # The delivery of the webhook, once the job has finished. Read on access; the API's reads load it
    # with the job (jobs/repository.py), so a job read in a session that has closed can still be shown.
    webhook_delivery: Mapped["WebhookDelivery | None"] = relationship(viewonly=True)
    priority: Mapped[Priority] = mapped_column(_string_enum(Priority, 16), default=Priority.INTERACTIVE)
    cached: Mapped[bool] = mapped_column(default=False)
    cache_key: Mapped[str | None] = mapped_column(String(64))
    worker_seconds: Mapped[float | None]

    @property
    def attempt(self) -> Attempt:
        """This run of the job (after its claim): the token its worker's writes carry."""
        return Attempt(self.id, self.attempts)


class TenantQueue(Base):
    """How many jobs a tenant has queued or running, kept by a trigger on `jobs` (migration 0004), so
    the per-tenant limit is one row read at submission, not a count over the table."""

    __tablename__ = "tenant_queues"

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    unfinished: Mapped[int] = mapped_column(default=0)


class Tenant(Base):
    """A tenant's settings: its weight in the fair share of every queue (a tenant without a row weighs 1)."""

    __tablename__ = "tenants"
    __table_args__ = (CheckConstraint("weight > 0", name="ck_tenants_weight_positive"),)

    name: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    weight: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = _now_column()


class QueueClock(Base):
    """A queue's virtual time in start-time fair queuing: the start tag of the last job a claim took."""

    __tablename__ = "queue_clocks"

    queue: Mapped[str] = mapped_column(String(600), primary_key=True)
    virtual_time: Mapped[float]


class QueueShare(Base):
    """A tenant's place in a queue's fair share: the virtual time at which its next job starts."""

    __tablename__ = "queue_shares"

    queue: Mapped[str] = mapped_column(String(600), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    virtual_finish: Mapped[float]


class WorkerPresence(Base):
    """A live worker serving a queue, until `expires_at` (it refreshes the row while it lives)."""

    __tablename__ = "worker_presence"

    queue: Mapped[str] = mapped_column(String(600), primary_key=True)
    worker: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class IdempotencyKey(Base):
    """An Idempotency-Key header seen on POST /v1/jobs, the request it came with, and its job (per tenant)."""

    __tablename__ = "idempotency_keys"

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = _now_column()


class Dataset(Base):
    """A dataset registered by a download job: its files live at `path` (under the tenant's data directory)."""

    __tablename__ = "datasets"

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    format: Mapped[str] = mapped_column(String(32))
    path: Mapped[str]
    tasks: Mapped[list[str]] = mapped_column(JSONB)
    splits: Mapped[dict[str, int]] = mapped_column(JSONB)
    source: Mapped[str]  # the manifest name or the URL it came from
    job_id: Mapped[UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now_column()


class TrainedModel(Base):
    """A model a training job produced, servable by `name` (to its tenant) like any registry entry."""

    __tablename__ = "trained_models"

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    family: Mapped[str] = mapped_column(String(16))
    path: Mapped[str]
    base_model: Mapped[str] = mapped_column(String(500))
    task: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, float | None]] = mapped_column(JSONB)
    job_id: Mapped[UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now_column()


class DeliveryStatus(StrEnum):
    """Where a webhook delivery is: still to be sent (or sent again), acknowledged, or given up."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class TenantWebhook(Base):
    """A tenant's webhook signing secret (`whsec_...`) and the URL its jobs use when they name none."""

    __tablename__ = "tenant_webhooks"

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    url: Mapped[str | None] = mapped_column(String(WEBHOOK_URL_LENGTH))
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _now_column()


class WebhookDelivery(Base):
    """The outbox row of one job's webhook: written by a trigger on `jobs` in the transaction that makes
    the job terminal (migration 0006_webhooks), then sent and re-sent by the deliverers until
    acknowledged or given up. `attempts` doubles as the token a sender's result write is checked against."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid4)
    job_id: Mapped[UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    tenant: Mapped[str] = _tenant_column()
    url: Mapped[str] = mapped_column(String(WEBHOOK_URL_LENGTH))
    status: Mapped[DeliveryStatus] = mapped_column(_string_enum(DeliveryStatus, 16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_status: Mapped[int | None]  # the receiver's HTTP status on the last attempt (None: no answer)
    last_error: Mapped[str | None]  # why the last attempt failed
    next_attempt_at: Mapped[datetime] = _now_column()
    delivered_at: Mapped[datetime | None] = _now_column(nullable=True)
    created_at: Mapped[datetime] = _now_column()
