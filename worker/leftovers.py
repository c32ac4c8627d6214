"""Training files no run will read again, removed once their job has ended.

A training job writes two directories of its own, named by its job id (worker/long_jobs.py):

- `training/<job id>/` under BLIP2_DATA_DIR: the checkpoint a later attempt resumes from;
- `tenants/<tenant>/models/.<name>.<job id>/`: the saved model, until registering moves it under `name`.

A job that succeeds removes both. One that ends any other way (failed, canceled, or its worker lost
for the last time) can leave them behind, each as large as the model (and the checkpoint its
optimizer's state too): tens of gigabytes at BLIP-2's real sizes. An ended job never runs again (no
state leads back to queued), so a worker of the training queue removes the directories of every job
that has ended, whichever worker ran it: when its job process starts (what a job lost with a worker
that never came back left), and after each training job. A job still queued or running keeps its
files: a worker that died mid-run left them for the next attempt.
"""

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

from sqlalchemy import select

from jobs.db import SessionFactory, session_scope
from jobs.models import Job
from jobs.status import JobStatus

log = logging.getLogger(__name__)

_ENDED = [status for status in JobStatus if status.is_terminal]


def remove_ended_training_files(data_dir: Path, sessions: SessionFactory) -> list[Path]:
    """Remove the training directories of jobs that have ended; the directories removed."""
    found: dict[UUID, list[Path]] = {}
    for job_id, path in _training_directories(data_dir):
        found.setdefault(job_id, []).append(path)
    if not found:
        return []
    with session_scope(sessions) as session:
        ended = set(session.scalars(select(Job.id).where(Job.id.in_(found), Job.status.in_(_ENDED))))
    removed = []
    for job_id in ended:
        for path in found[job_id]:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
                log.info("removed %s: its training job %s has ended", path, job_id)
    return removed


def sweep_ended_training_files(data_dir: Path, sessions: SessionFactory) -> None:
    """`remove_ended_training_files`, its failure a warning: what it leaves is removed by the next sweep."""
    try:
        remove_ended_training_files(data_dir, sessions)
    except Exception as exc:
        log.warning("training files of ended jobs not removed: %s: %s", type(exc).__name__, exc)


def _training_directories(data_dir: Path) -> Iterator[tuple[UUID, Path]]:
    """Each job's directories: resume checkpoints, and saved models not yet registered."""
    for path in _subdirectories(data_dir / "training"):
        if (job_id := _uuid(path.name)) is not None:
            yield job_id, path
    for models in (data_dir / "tenants").glob("*/models"):
        for path in _subdirectories(models):  # `.NAME.JOB_ID`: no model's name starts with "."
            if path.name.startswith(".") and (job_id := _uuid(path.name.rpartition(".")[2])) is not None:
                yield job_id, path


def _subdirectories(directory: Path) -> list[Path]:
    try:
        return [path for path in directory.iterdir() if path.is_dir() and not path.is_symlink()]
    except FileNotFoundError:
        return []


def _uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None
