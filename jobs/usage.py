"""Usage per tenant: the jobs it submitted, the images it stored, and the model time its jobs took.

    usage = tenant_usage(session, "acme", UsageWindow(start, end))

Worker-seconds come from `jobs.worker_seconds`, written by the worker with the job's terminal
transition and guarded by its attempt token (worker/batches.py, worker/long_jobs.py): a job's time
is recorded exactly once, by the run whose outcome stands, and a run that lost its job records
nothing. They count in the window in which the job finished; jobs and images in the one in which
they were made. `GET /v1/usage` and `blip2-jobs usage` both answer with this.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from jobs.errors import InvalidTimeRange
from jobs.models import Image, Job
from jobs.schemas import ImagesUsagePublic, JobCountPublic, ModelUsagePublic, UsagePublic


@dataclass(frozen=True)
class UsageWindow:
    """From `start` until `end` (either open when None); a time without a zone is UTC."""

    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _aware(self.start))
        object.__setattr__(self, "end", _aware(self.end))
        if self.start is not None and self.end is not None and self.end <= self.start:
            message = f"the window ends ({self.end.isoformat()}) before it starts ({self.start.isoformat()})"
            raise InvalidTimeRange(message, field="to")

    def holds(
        self, column: InstrumentedAttribute[datetime] | InstrumentedAttribute[datetime | None]
    ) -> list[ColumnElement[bool]]:
        """The conditions that put `column` in the window."""
        conditions = []
        if self.start is not None:
            conditions.append(column >= self.start)
        if self.end is not None:
            conditions.append(column < self.end)
        return conditions


def _aware(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def tenant_usage(session: Session, tenant: str, window: UsageWindow) -> UsagePublic:
    """The tenant's usage in the window (see the module docstring)."""
    models = _models(session, tenant, window)
    return UsagePublic(
        tenant=tenant,
        **{"from": window.start},  # a keyword in Python, the field's name in JSON
        to=window.end,
        jobs=_job_counts(session, tenant, window),
        images=_images(session, tenant, window),
        models=models,
        worker_seconds=sum(model.worker_seconds for model in models),
    )


def _job_counts(session: Session, tenant: str, window: UsageWindow) -> list[JobCountPublic]:
    query = (
        select(Job.kind, Job.status, func.count())
        .where(Job.tenant == tenant, *window.holds(Job.created_at))
        .group_by(Job.kind, Job.status)
        .order_by(Job.kind, Job.status)
    )
    return [JobCountPublic(kind=kind, status=status, count=count) for kind, status, count in session.execute(query)]


def _images(session: Session, tenant: str, window: UsageWindow) -> ImagesUsagePublic:
    query = select(func.count(), func.coalesce(func.sum(Image.size_bytes), 0)).where(
        Image.tenant == tenant, *window.holds(Image.created_at)
    )
    count, size = session.execute(query).one()
    return ImagesUsagePublic(count=count, bytes=size)


def _models(session: Session, tenant: str, window: UsageWindow) -> list[ModelUsagePublic]:
    query = (
        select(Job.model, func.sum(Job.worker_seconds), func.count())
        .where(Job.tenant == tenant, Job.worker_seconds.is_not(None), *window.holds(Job.finished_at))
        .group_by(Job.model)
        .order_by(Job.model)
    )
    rows = session.execute(query)
    return [
        ModelUsagePublic(model=model, worker_seconds=float(seconds or 0.0), jobs=jobs) for model, seconds, jobs in rows
    ]
