"""A worker's Prometheus metrics, recorded in the process that runs the jobs (the prefork child).

`blip2-jobs worker --metrics-port P` serves them on 127.0.0.1:P (`--metrics-host` to widen it): the
worker's main process answers, reading what its children recorded through prometheus-client's
multiprocess files (jobs/metrics_dir.py), since the counters change in a child it only forks.

- `blip2_worker_batch_size{kind, model}`: jobs per batch, a histogram.
- `blip2_worker_model_load_seconds{model}`: how long each model load took.
- `blip2_worker_jobs_total{kind, model, outcome}`: jobs this worker ran to an end.
- `blip2_job_queued_seconds{kind, model}` / `blip2_job_run_seconds{kind, model, outcome}`: a finished
  job's time from submission to the start of its last run, and of that run.
- `blip2_worker_gpu_memory_allocated_bytes{device}` / `..._max_allocated_bytes`: torch's allocator, after
  each batch and model load; only where CUDA is available.
"""

import os
import sys
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from blip2.registry import Registry
from jobs.metrics import model_label
from jobs.models import Job

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LOAD_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)

BATCH_SIZE = Histogram(
    "blip2_worker_batch_size", "Jobs per batch, run as one forward pass", ["kind", "model"], buckets=_BATCH_BUCKETS
)
MODEL_LOAD = Histogram("blip2_worker_model_load_seconds", "Time to load a model", ["model"], buckets=_LOAD_BUCKETS)
JOBS_RUN = Counter("blip2_worker_jobs", "Jobs this worker ran to an end", ["kind", "model", "outcome"])
JOB_QUEUED = Histogram(
    "blip2_job_queued_seconds", "From submission to the start of a job's last run", ["kind", "model"],
    buckets=_JOB_BUCKETS,
)  # fmt: skip
JOB_RUN = Histogram(
    "blip2_job_run_seconds", "A finished job's last run", ["kind", "model", "outcome"], buckets=_JOB_BUCKETS
)
# One value per live process: a child that exits takes its values with it (mark_process_dead).
GPU_ALLOCATED = Gauge(
    "blip2_worker_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated", ["device"],
    multiprocess_mode="livemostrecent",
)  # fmt: skip
GPU_MAX_ALLOCATED = Gauge(
    "blip2_worker_gpu_memory_max_allocated_bytes", "torch.cuda.max_memory_allocated", ["device"],
    multiprocess_mode="livemostrecent",
)  # fmt: skip


def batch_ran(jobs: list[Job], batch_id: str, registry: Registry) -> None:
    """A batch ended: its size, and each of its jobs that ended in it."""
    if jobs:
        BATCH_SIZE.labels(jobs[0].kind.value, model_label(registry, jobs[0].model)).observe(len(jobs))
    jobs_ended(jobs, batch_id, registry)
    gpu_memory()


def jobs_ended(jobs: Iterable[Job], batch_id: str, registry: Registry) -> None:
    """Count and time the jobs that reached an end in this run (`batch_id`: its claim's, `claim_id`); a
    job taken for lost and run again elsewhere is the other run's to count."""
    for job in jobs:
        if not job.status.is_terminal or job.batch_id != batch_id:
            continue
        kind, model, outcome = job.kind.value, model_label(registry, job.model), job.status.value
        JOBS_RUN.labels(kind, model, outcome).inc()
        if job.started_at is not None:
            JOB_QUEUED.labels(kind, model).observe((job.started_at - job.created_at).total_seconds())
            if job.finished_at is not None:
                JOB_RUN.labels(kind, model, outcome).observe((job.finished_at - job.started_at).total_seconds())


def model_loaded(name: str, seconds: float, registry: Registry) -> None:
    MODEL_LOAD.labels(model_label(registry, name)).observe(seconds)
    gpu_memory()


def gpu_memory() -> None:
    """torch's view of each GPU's memory, where this process has CUDA (torch is never imported for it)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    for index in range(torch.cuda.device_count()):
        GPU_ALLOCATED.labels(str(index)).set(torch.cuda.memory_allocated(index))
        GPU_MAX_ALLOCATED.labels(str(index)).set(torch.cuda.max_memory_allocated(index))


def process_exited(**_signal: object) -> None:
    """A child's live gauges go with it (Celery's worker_process_shutdown)."""
    from prometheus_client import multiprocess

    from jobs.metrics_dir import metrics_are_shared

    if metrics_are_shared():
        multiprocess.mark_process_dead(os.getpid())
