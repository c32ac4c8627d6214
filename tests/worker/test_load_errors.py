"""A model that will not load fails its batch at once (worker/batches.py `_execute`), whatever the error.

An error of blip2's own (ModelNotFound, CheckpointUnavailable) always did. Any other (a torn weights
file, out of memory, a bug) used to escape the task: the batch's jobs stayed running until their lease
ran out, ran again, failed the same way, and after their last attempt ended as `worker_lost`, minutes
late. Here a real trained model's checkpoint is torn on disk, and a real worker runtime runs the batch.
"""

import io
import logging
import shutil
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import torch
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from jobs.catalog import save_trained_model
from jobs.db import SessionFactory, session_scope
from jobs.image_store import store_image
from jobs.inputs import CaptionInput
from jobs.kinds import JobKind, batch_key
from jobs.models import Job, TrainedModel
from jobs.repository import add_job
from jobs.settings import Settings
from jobs.status import JobStatus
from tests.support.auth import TENANT
from worker.batches import Batch, Item, _fail_every_job, run_batch_for
from worker.model_holder import ModelLoadOptions
from worker.runtime import WorkerRuntime

GREEDY = {"num_beams": 1, "max_new_tokens": 8}


@pytest.fixture
def runtime(worker_settings: Settings) -> WorkerRuntime:
    return WorkerRuntime(settings=worker_settings, preload=None, load_options=ModelLoadOptions(device="cpu"))


@pytest.fixture
def torn_model(sessions: SessionFactory, models_dir: Path, tmp_path: Path) -> tuple[str, Path]:
    """A trained model of the tests' tenant whose weights file was cut short (a disk that filled up
    while it was saved); its name and its checkpoint directory."""
    name, checkpoint = f"torn-{uuid4().hex[:8]}", tmp_path / "torn"
    shutil.copytree(models_dir / "models" / "tiny-opt", checkpoint)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    row = TrainedModel(tenant=TENANT, name=name, family="opt", path=str(checkpoint), base_model="tiny-opt",
                       task="caption", dataset="none", metrics={}, job_id=None)  # fmt: skip
    with session_scope(sessions) as session:
        assert save_trained_model(session, row)
    return name, checkpoint


def queued_captions(sessions: SessionFactory, model: str, queue: str, image_id: UUID, count: int) -> list[UUID]:
    """`count` caption jobs that may share one batch, queued on a queue no worker serves."""
    job_input = CaptionInput.model_validate({"image_id": str(image_id), **GREEDY})
    key = batch_key(JobKind.CAPTION, job_input, model, TENANT)
    columns = {"tenant": TENANT, "kind": JobKind.CAPTION, "model": model, "queue": queue, "batch_key": key}
    with session_scope(sessions) as session:
        return [add_job(session, input=job_input.model_dump(mode="json"), **columns).id for _ in range(count)]


def uploaded(sessions: SessionFactory, settings: Settings, picture: Image.Image) -> UUID:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    with session_scope(sessions) as session:
        return store_image(session, TENANT, buffer.getvalue(), settings).id


def test_a_torn_checkpoint_fails_every_job_of_its_batch_at_once_and_the_next_batch_runs(
    runtime: WorkerRuntime,
    torn_model: tuple[str, Path],
    models_dir: Path,
    photos: dict[str, Image.Image],
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, checkpoint = torn_model
    queue = f"test-load-errors-{uuid4().hex[:8]}"
    image_id = uploaded(runtime.sessions, runtime.settings, next(iter(photos.values())))
    ids = queued_captions(runtime.sessions, name, queue, image_id, 3)

    with caplog.at_level(logging.ERROR, logger="worker.batches"):
        ended = run_batch_for(runtime, ids[0], "load-errors-1", queue=queue)  # nothing escapes the task

    assert [job.id for job in ended] == ids, "the batch did not take the three queued jobs"
    assert {(job.status, job.error_code, job.attempts) for job in ended} == {(JobStatus.FAILED, "internal_error", 1)}
    for job in ended:
        assert job.error_message is not None
        assert job.error_message.startswith(f"loading model {name} failed: SafetensorError: "), job.error_message
    [logged] = [r for r in caplog.records if f"loading model {name} failed" in r.getMessage()]
    assert logged.exc_info is not None, "the load's traceback was not logged"

    shutil.copy(models_dir / "models" / "tiny-opt" / "model.safetensors", checkpoint)  # the checkpoint mended
    again = queued_captions(runtime.sessions, name, queue, image_id, 2)
    ran = run_batch_for(runtime, again[0], "load-errors-2", queue=queue)
    assert [(job.id, job.status) for job in ran] == [(job_id, JobStatus.SUCCEEDED) for job_id in again], [
        job.error_message for job in ran
    ]
    assert all(job.result and job.result["captions"] for job in ran), "the next batch ran without captions"


def batch_of(count: int) -> Batch:
    """A batch of `count` claimed jobs, as `_fail_every_job` reads them (their outcomes only)."""
    return Batch("b", [Item(Job(id=uuid4())) for _ in range(count)])


def test_out_of_memory_while_loading_fails_the_batch_as_out_of_memory() -> None:
    batch = batch_of(2)
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    try:
        raise oom
    except torch.OutOfMemoryError as exc:
        _fail_every_job(batch, "loading model big", exc)
    messages = {(i.error.code, i.error.message) for i in batch.items if i.error is not None}
    assert messages == {("out_of_memory", f"loading model big failed: OutOfMemoryError: {oom}")}


def test_a_time_limit_while_loading_is_left_to_the_time_limits_handling() -> None:
    batch = batch_of(1)
    with pytest.raises(SoftTimeLimitExceeded):
        _fail_every_job(batch, "loading model big", SoftTimeLimitExceeded())
    assert batch.items[0].error is None, "a time limit was recorded as the model's failure"


def test_an_image_whose_decoder_breaks_fails_its_own_jobs_only(
    runtime: WorkerRuntime, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not an invalid image but the decoder itself failing (out of host memory, a decoder's bug): the job
    of that image fails, its neighbour in the batch runs. (It used to escape the task, every job with it.)"""
    from worker import batches

    first, second = list(photos.values())[:2]
    broken_id, fine_id = (uploaded(runtime.sessions, runtime.settings, picture) for picture in (first, second))
    buffer = io.BytesIO()
    first.save(buffer, format="PNG")  # the broken image's stored bytes, as `uploaded` stores them
    real_decode = batches.decode_image

    def decode(data: bytes, max_pixels: int) -> Image.Image:
        if data == buffer.getvalue():
            raise MemoryError("cannot allocate the decoded pixels")
        return real_decode(data, max_pixels=max_pixels)

    monkeypatch.setattr(batches, "decode_image", decode)
    queue = f"test-load-errors-{uuid4().hex[:8]}"
    [broken] = queued_captions(runtime.sessions, "tiny-opt", queue, broken_id, 1)
    [fine] = queued_captions(runtime.sessions, "tiny-opt", queue, fine_id, 1)
    ended = {job.id: job for job in run_batch_for(runtime, broken, "decode-errors", queue=queue)}
    assert set(ended) == {broken, fine}, "the two jobs did not run as one batch"
    assert (ended[broken].status, ended[broken].error_code) == (JobStatus.FAILED, "out_of_memory")
    assert ended[fine].status is JobStatus.SUCCEEDED, ended[fine].error_message
