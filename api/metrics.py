"""The API's Prometheus metrics: HTTP requests, and the jobs table read at scrape time. `GET /metrics`.

- `http_requests_total{handler, method, status}` and the `http_request_duration_seconds` histogram,
  by route template (`/v1/jobs/{job_id}`, never the id), recorded by prometheus-fastapi-instrumentator.
- `blip2_jobs{status, kind, model}`, `blip2_job_failures_total{code, kind, model}` and
  `blip2_queue_depth{queue}` (queued jobs), from one GROUP BY over `jobs` per scrape, cached for
  METRICS_JOBS_CACHE_S, so several Prometheus servers, or a dashboard's refreshes, cost one query.

Postgres is the source of truth, so the job counts are read from it rather than counted by the
processes that change them: a job failed by the sweeper or canceled through the API counts the same
as one a worker ran. /metrics is not public: it takes an API key, like every /v1 route.
"""

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_fastapi_instrumentator import Instrumentator, metrics
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from blip2.registry import Registry
from jobs.db import SessionFactory
from jobs.metrics import exposition, model_label, queue_label
from jobs.models import Job
from jobs.status import JobStatus

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)

# Long-polls (`?wait=`) hold a request for up to LONG_POLL_MAX_S, so the buckets reach a minute.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
JOB_LABELS = ["status", "kind", "model"]
FAIL_LABELS = ["code", "kind", "model"]


@dataclass
class ApiMetrics:
    """One app's metrics: what its requests recorded, and the jobs table's counts."""

    jobs: "JobsCollector"
    # An app's own registry: tests build many apps in one process, and names must not collide.
    recorded: CollectorRegistry = field(default_factory=CollectorRegistry)

    def instrument(self, app: FastAPI) -> None:
        """Count and time every request by route template and exact status (401 and 404 are different news)."""
        instrumentator = Instrumentator(
            should_group_status_codes=False, excluded_handlers=["/metrics"], registry=self.recorded
        )
        instrumentator.add(
            metrics.requests(registry=self.recorded),
            metrics.latency(registry=self.recorded, buckets=LATENCY_BUCKETS),
        )
        instrumentator.instrument(app)

    def exposition(self) -> bytes:
        return exposition(self.recorded, self.jobs)


@dataclass(frozen=True)
class JobRow:
    """One group of the jobs table: how many jobs share these values."""

    status: str
    kind: str
    model: str
    queue: str
    error_code: str | None
    count: int


class JobsCollector:
    """The jobs table's counts as metric families (a prometheus-client custom collector)."""

    def __init__(self, sessions: SessionFactory, registry: Registry, cache_s: float) -> None:
        self._sessions = sessions
        self._registry = registry
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._rows: list[JobRow] = []

    def describe(self) -> Iterable[Metric]:
        """The families without samples: registering the collector reads nothing."""
        return _families([], self._registry)

    def collect(self) -> Iterable[Metric]:
        try:
            rows = self._current_rows()
        except SQLAlchemyError as exc:  # a scrape while Postgres is away still gets the HTTP metrics
            log.warning("jobs metrics not read: %s", exc)
            return []
        return _families(rows, self._registry)

    def _current_rows(self) -> list[JobRow]:
        with self._lock:
            if time.monotonic() - self._read_at >= self._cache_s:
                self._rows = self._read()
                self._read_at = time.monotonic()
            return self._rows

    def _read(self) -> list[JobRow]:
        columns = (Job.status, Job.kind, Job.model, Job.queue, Job.error_code)
        with self._sessions() as session:
            found = session.execute(select(*columns, func.count()).group_by(*columns)).all()
        return [JobRow(str(s.value), str(k.value), m, q, code, n) for s, k, m, q, code, n in found]


def _families(rows: Sequence[JobRow], registry: Registry) -> list[Metric]:
    def labels(row: JobRow, first: str) -> tuple[str, str, str]:
        return first, row.kind, model_label(registry, row.model)

    jobs = GaugeMetricFamily("blip2_jobs", "Jobs in Postgres by status, kind and model", labels=JOB_LABELS)
    for key, count in _sum_by(rows, lambda row: labels(row, row.status)).items():
        jobs.add_metric(list(key), count)
    failures = CounterMetricFamily(
        "blip2_job_failures", "Failed jobs by error code, kind and model", labels=FAIL_LABELS
    )
    failed = [row for row in rows if row.status == JobStatus.FAILED.value]
    for key, count in _sum_by(failed, lambda row: labels(row, row.error_code or "")).items():
        failures.add_metric(list(key), count)
    return [jobs, failures, _queue_depth(rows, registry)]


def _queue_depth(rows: Sequence[JobRow], registry: Registry) -> Metric:
    """Queued jobs by queue: every queue that has jobs, at 0 when none waits (a series that vanished
    would read as "no data", not as an empty queue)."""
    depth = GaugeMetricFamily("blip2_queue_depth", "Queued jobs by queue", labels=["queue"])
    label = lambda row: queue_label(registry, row.queue)  # noqa: E731
    queued = _sum_by([row for row in rows if row.status == JobStatus.QUEUED.value], label)
    for queue in dict.fromkeys(map(label, rows)):
        depth.add_metric([queue], queued.get(queue, 0))
    return depth


def _sum_by(rows: Iterable[JobRow], key: Callable[[JobRow], K]) -> dict[K, int]:
    totals: dict[K, int] = {}
    for row in rows:
        totals[key(row)] = totals.get(key(row), 0) + row.count
    return totals
