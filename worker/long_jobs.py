"""Download, train and evaluate jobs: long work on the `download` and `train` queues.

Each runs to a typed output while reporting progress on its job row, and stops early when the
job is canceled. They load what they need per job (a training job must not share the weights an
inference worker holds), and write under BLIP2_DATA_DIR, which workers on several machines share.

    tenants/TENANT/datasets/NAME/   a registered dataset (files + dataset.json)
    tenants/TENANT/models/NAME/     a trained model, a complete Hugging Face checkpoint
    training/JOB_ID/                a training job's last checkpoint, for resuming after a worker dies
"""

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from blip2.errors import InvalidArgument
from blip2.registry import Registry
from jobs.catalog import get_dataset, resolve_trained, save_dataset, save_trained_model, tenant_data_dir
from jobs.db import SessionFactory, session_scope
from jobs.models import Dataset, Job, TrainedModel
from jobs.schemas import (
    DownloadInput,
    DownloadOutput,
    EvaluateInput,
    EvaluateOutput,
    JobOutput,
    TrainInput,
    TrainOutput,
)
from jobs.settings import Settings
from worker.progress import JobProgress

log = logging.getLogger(__name__)


class JobCanceled(Exception):
    """The job was canceled while it ran; it stopped at a step boundary and records nothing."""


def run_long_job(job: Job, job_input: Any, settings: Settings, sessions: SessionFactory) -> JobOutput:
    progress = JobProgress(job.id, sessions)
    if isinstance(job_input, DownloadInput):
        return run_download(job, job_input, settings, sessions, progress)
    if isinstance(job_input, TrainInput):
        return run_train(job, job_input, settings, sessions, progress)
    if isinstance(job_input, EvaluateInput):
        return run_evaluate(job, job_input, settings, sessions, progress)
    raise InvalidArgument(f"{job.kind} is not a long job")


# ---- download -------------------------------------------------------------------------------


def run_download(
    job: Job, job_input: DownloadInput, settings: Settings, sessions: SessionFactory, progress: JobProgress
) -> DownloadOutput:
    from blip2.data.download import DownloadProgress
    from blip2.data.formats import dataset_path
    from blip2.data.manifest import fetch_dataset, fetch_url
    from blip2.data.url_guard import guarded_client

    def on_progress(p: DownloadProgress) -> None:
        fraction = p.bytes_done / p.bytes_total if p.bytes_total else 0.0
        detail = {"bytes_done": p.bytes_done, "bytes_total": p.bytes_total, "percent": p.percent, "url": p.url}
        progress.report(fraction, detail)

    data_dir, stop = tenant_data_dir(settings.BLIP2_DATA_DIR, job.tenant), progress.should_stop
    # Every request, redirects included, is checked against internal addresses (SSRF).
    with guarded_client(settings.fetch_allowed_hosts) as client:
        if job_input.dataset is not None:
            info = fetch_dataset(job_input.dataset, data_dir, on_progress=on_progress, should_stop=stop, client=client)
            source = job_input.dataset
        else:
            url, sha256, name, fmt = (
                str(job_input.url),
                str(job_input.sha256),
                str(job_input.name),
                str(job_input.format),
            )
            info = fetch_url(url, sha256, name, fmt, data_dir, options=job_input.options,
                             on_progress=on_progress, should_stop=stop, client=client)  # fmt: skip
            source = url
    directory = dataset_path(data_dir, info.name)
    with session_scope(sessions) as session:
        row = Dataset(tenant=job.tenant, name=info.name, format=info.format, path=str(directory), tasks=info.tasks,
                      splits=info.splits, source=source, job_id=job.id)  # fmt: skip
        save_dataset(session, row)
    log.info("dataset %s registered: %s", info.name, info.splits)
    return DownloadOutput(dataset=info.name, format=info.format, tasks=info.tasks, splits=info.splits)


# ---- train ----------------------------------------------------------------------------------


def run_train(
    job: Job, job_input: TrainInput, settings: Settings, sessions: SessionFactory, progress: JobProgress
) -> TrainOutput:
    from blip2.training import TrainConfig, TrainProgress, train

    lm = _load(job, settings, sessions)
    dataset = _open_dataset(job.tenant, job_input.dataset, sessions)
    config = TrainConfig(
        task=job_input.task,
        max_steps=job_input.max_steps,
        batch_size=job_input.batch_size,
        lr=job_input.lr,
        grad_accum_steps=job_input.grad_accum_steps,
        checkpoint_every=job_input.checkpoint_every,
        train=tuple(job_input.train),
        seed=job_input.seed,
    )
    if job_input.warmup_steps is not None:
        config = replace(config, warmup_steps=job_input.warmup_steps)

    def on_progress(p: TrainProgress) -> None:
        detail = {"step": p.step, "max_steps": p.max_steps, "epoch": p.epoch, "loss": p.loss, "lr": p.lr}
        progress.report(p.step / p.max_steps, detail, force=p.step == p.max_steps)

    output_dir = tenant_data_dir(settings.BLIP2_DATA_DIR, job.tenant) / "models" / job_input.output_model
    work_dir = settings.BLIP2_DATA_DIR / "training" / str(job.id)
    result = train(
        lm,
        _records(dataset, job_input.task, "train"),
        _records(dataset, job_input.task, "val"),
        config,
        output_dir=output_dir,
        work_dir=work_dir,
        on_progress=on_progress,
        should_stop=progress.should_stop,
    )
    if result.stopped:
        raise JobCanceled(f"training stopped at step {result.steps}; the last checkpoint is in {work_dir}")
    _register_trained(job, job_input, lm.family.value, output_dir, result.metrics, sessions)
    shutil.rmtree(work_dir, ignore_errors=True)  # the finished model replaces the resume checkpoint
    return TrainOutput(
        model=job_input.output_model,
        steps=result.steps,
        final_loss=result.final_loss,
        metrics=result.metrics,
        loss_curve=str(output_dir / "loss_curve.png"),
        resumed_from_step=result.resumed_from,
    )


def _register_trained(
    job: Job, job_input: TrainInput, family: str, output_dir: Path, metrics: dict[str, float], sessions: SessionFactory
) -> None:
    row = TrainedModel(
        tenant=job.tenant,
        name=job_input.output_model,
        family=family,
        path=str(output_dir),
        base_model=job.model,
        task=job_input.task,
        dataset=job_input.dataset,
        metrics=metrics,
        job_id=job.id,
    )
    with session_scope(sessions) as session:
        if not save_trained_model(session, row):
            raise InvalidArgument(f"a model named {job_input.output_model!r} was registered while this job ran")


# ---- evaluate -------------------------------------------------------------------------------


def run_evaluate(
    job: Job, job_input: EvaluateInput, settings: Settings, sessions: SessionFactory, progress: JobProgress
) -> EvaluateOutput:
    from blip2.evaluation import evaluate

    lm = _load(job, settings, sessions)
    records = _records(_open_dataset(job.tenant, job_input.dataset, sessions), job_input.task, job_input.split)
    if job_input.limit is not None:
        records = records[: job_input.limit]

    def on_progress(done: int, total: int) -> None:
        progress.report(done / max(total, 1), {"records_done": done, "records_total": total})
        if progress.should_stop():
            raise JobCanceled("evaluation canceled")

    metrics = evaluate(lm, records, job_input.task, batch_size=job_input.batch_size, on_progress=on_progress)
    return EvaluateOutput(metrics=metrics, records=len(records))


# ---- shared ---------------------------------------------------------------------------------


def _load(job: Job, settings: Settings, sessions: SessionFactory) -> Any:
    from blip2.loading import load_model

    with session_scope(sessions) as session:
        registry = resolve_trained(session, Registry.load(settings.BLIP2_MODELS_FILE), job.model, job.tenant)
    return load_model(job.model, data_dir=settings.BLIP2_DATA_DIR, registry=registry)


def _open_dataset(tenant: str, name: str, sessions: SessionFactory) -> Any:
    from blip2.data.formats import open_dataset

    with session_scope(sessions) as session:
        row = get_dataset(session, tenant, name)
        if row is None:
            raise InvalidArgument(f"no dataset named {name!r}")
        path = Path(row.path)
    return open_dataset(path)


def _records(dataset: Any, task: str, split: str) -> list[Any]:
    from blip2.data.records import Split

    chosen = Split(split)
    if task == "caption_vqa":
        return [*dataset.captions(chosen), *dataset.questions(chosen)]
    return dataset.questions(chosen) if task == "vqa" else dataset.captions(chosen)
