"""Batches through real workers: compatible queued jobs share one forward pass, each still gets the
result it would get alone, and a job that cannot run fails alone, not its batch.

The jobs are queued before their worker starts, so its first claim finds them all waiting. Each
worker serves a model name of its own (a registry file maps it to a tiny checkpoint), on its own
queue, so the session's shared worker never takes these jobs.
"""

import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import torch
from PIL import Image
from sqlalchemy import select

from blip2.caption import caption
from blip2.loading import LoadOptions, load_model
from blip2.registry import Registry
from jobs.broker import Dispatcher
from jobs.db import SessionFactory, session_scope
from jobs.image_store import store_image
from jobs.inputs import CaptionInput
from jobs.kinds import JobKind
from jobs.models import Attempt, Job
from jobs.models import Image as ImageRow
from jobs.outputs import CaptionOutput
from jobs.queues import queue_for_model
from jobs.schemas import JOB_CREATE_ADAPTER
from jobs.settings import Settings
from jobs.status import JobStatus
from jobs.submission import Submission, submit_job
from tests.support.auth import TENANT
from tests.support.processes import running_worker
from tests.support.waiting import wait_terminal, wait_until
from worker import batches
from worker.batches import Batch, Item, _run_isolating
from worker.handlers import HANDLERS, Work

pytestmark = pytest.mark.slow

GREEDY = {"num_beams": 1, "max_new_tokens": 8}
PLAIN, QUANTIZED = "batch-opt", "batch-opt-int4"


@pytest.fixture(scope="module")
def batch_settings(worker_settings: Settings, tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Settings:
    checkpoint = models_dir / "models" / "tiny-opt"
    models = tmp_path_factory.mktemp("batch-models") / "models.toml"
    entries = (f'[models.{name}]\ncheckpoint = "{checkpoint}"\nfamily = "opt"\n\n' for name in (PLAIN, QUANTIZED))
    models.write_text("".join(entries))
    return worker_settings.model_copy(update={"BLIP2_MODELS_FILE": models})


@pytest.fixture(scope="module")
def ctx(sessions: SessionFactory, dispatcher: Dispatcher, batch_settings: Settings) -> Submission:
    return Submission(sessions, dispatcher, Registry.load(batch_settings.BLIP2_MODELS_FILE), batch_settings)


@pytest.fixture(scope="module")
def pictures(photos: dict[str, Image.Image]) -> list[Image.Image]:
    """Six different pictures: three photographs and a crop of each."""
    whole = list(photos.values())
    return whole + [p.crop((0, 0, p.width // 2, p.height // 2)) for p in whole]


def upload(ctx: Submission, picture: Image.Image) -> UUID:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    with session_scope(ctx.sessions) as session:
        return store_image(session, TENANT, buffer.getvalue(), ctx.settings).id


def submit(ctx: Submission, model: str, image_id: UUID, **decoding: Any) -> UUID:
    # Not from the result cache: these tests are about what the worker runs.
    body = {
        "kind": "caption",
        "model": model,
        "input": {"image_id": str(image_id), **(decoding or GREEDY)},
        "cache": False,
    }
    return submit_job(ctx, TENANT, JOB_CREATE_ADAPTER.validate_python(body)).job.id


@pytest.fixture
def worker_for(batch_settings: Settings, tmp_path: Path) -> Iterator[Any]:
    """Start a worker for a model name, with more worker options (it is stopped after the test)."""
    from contextlib import ExitStack

    with ExitStack() as stack:

        def start(model: str, *options: str) -> Path:
            log = tmp_path / f"{model}.log"
            stack.enter_context(
                running_worker(batch_settings, log, model=model, queues=[queue_for_model(model)], options=list(options))
            )
            return log

        yield start


def dropped_unread(log: Path, ids: Sequence[UUID]) -> list[UUID]:
    """The jobs whose message the worker's main process dropped, their job having ended in its child's
    batch: not handed to the child at all (worker/ended_here.py)."""
    text = log.read_text()
    line = "MainProcess] message for job {}: nothing queued for it (the job ended here already)"
    return [job_id for job_id in ids if line.format(job_id) in text]


def finished(sessions: SessionFactory, ids: Sequence[UUID]) -> list[Job]:
    jobs = [wait_terminal(sessions, job_id, timeout_s=180) for job_id in ids]
    with sessions() as session:  # read once more, all together, so batch ids are current
        rows = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
    assert all(job.status.is_terminal for job in jobs), [job.status for job in jobs]
    return [rows[job_id] for job_id in ids]


@pytest.mark.parametrize(("model", "quantize"), [(PLAIN, "none"), (QUANTIZED, "int4")])
def test_queued_jobs_run_as_one_batch_each_with_its_result_alone(
    ctx: Submission, worker_for: Any, pictures: list[Image.Image], models_dir: Path, model: str, quantize: str
) -> None:
    ids = [submit(ctx, model, upload(ctx, picture)) for picture in pictures]
    log = worker_for(model, "--batch-size=16", f"--quantize={quantize}")
    jobs = finished(ctx.sessions, ids)
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * len(jobs), [job.error_message for job in jobs]
    assert len({job.batch_id for job in jobs}) == 1, "six compatible queued jobs were not claimed as one batch"
    assert {job.attempts for job in jobs} == {1}
    # One message ran the batch; those behind it were dropped unread by the main process, their jobs having
    # ended in its child (at least five jobs' messages: while the worker starts under load, the sweeper
    # may send all six again).
    wait_until(lambda: len(dropped_unread(log, ids)) >= 5, "five jobs' messages dropped by the main process", 60)
    text = log.read_text()
    found_nothing = [job_id for job_id in ids if f"message for job {job_id}: nothing queued to run" in text]
    assert found_nothing == [], "a message of a job that ended in the worker's batch read Postgres to find nothing"
    in_child = [job_id for job_id in ids if re.search(rf"ForkPoolWorker-\d+\] message for job {job_id}", text)]
    assert in_child == [], "a message of a job that ended in the batch went to the child all the same"

    lm = load_model("tiny-opt", data_dir=models_dir, options=LoadOptions(device="cpu", quantize=quantize))
    alone = [caption(lm, [picture], decoding=GREEDY)[0].captions for picture in pictures]
    assert [job.result["captions"] for job in jobs if job.result] == alone, "a batched result differs from alone"
    assert len({tuple(c) for c in alone}) > 1, "every picture got the same caption: the comparison proves nothing"


def test_jobs_with_other_options_run_in_batches_of_their_own(
    ctx: Submission, worker_for: Any, pictures: list[Image.Image]
) -> None:
    image_id = upload(ctx, pictures[0])
    greedy = [submit(ctx, PLAIN, image_id) for _ in range(3)]
    beams = [submit(ctx, PLAIN, image_id, num_beams=2, max_new_tokens=8) for _ in range(3)]
    worker_for(PLAIN, "--batch-size=16")
    jobs = finished(ctx.sessions, greedy + beams)
    assert all(job.status is JobStatus.SUCCEEDED for job in jobs)
    assert len({job.batch_id for job in jobs[:3]}) == 1 and len({job.batch_id for job in jobs[3:]}) == 1
    assert jobs[0].batch_id != jobs[3].batch_id, "jobs with different decoding shared a pass"


def test_batch_size_counts_beams(ctx: Submission, worker_for: Any, pictures: list[Image.Image]) -> None:
    """A job of 4 beams takes 4 rows: a worker of --batch-size=8 runs them two at a time."""
    image_id = upload(ctx, pictures[1])
    ids = [submit(ctx, PLAIN, image_id, num_beams=4, max_new_tokens=4) for _ in range(4)]
    worker_for(PLAIN, "--batch-size=8")
    jobs = finished(ctx.sessions, ids)
    sizes = sorted(sum(1 for job in jobs if job.batch_id == batch_id) for batch_id in {job.batch_id for job in jobs})
    assert sizes == [2, 2]


def test_an_image_that_will_not_decode_fails_alone(
    ctx: Submission, worker_for: Any, pictures: list[Image.Image]
) -> None:
    good = [upload(ctx, picture) for picture in pictures[:3]]
    broken = upload(ctx, pictures[3].rotate(90, expand=True))  # an image no other test uses
    with session_scope(ctx.sessions) as session:  # its stored bytes damaged after the upload checked them
        image = session.get_one(ImageRow, broken)
        image.data = image.data[:40]
    ids = [submit(ctx, PLAIN, image_id) for image_id in [good[0], broken, *good[1:]]]
    worker_for(PLAIN, "--batch-size=16")
    jobs = finished(ctx.sessions, ids)
    assert (jobs[1].status, jobs[1].error_code) == (JobStatus.FAILED, "invalid_image")
    others = [jobs[0], *jobs[2:]]
    assert all(job.status is JobStatus.SUCCEEDED for job in others), [job.error_message for job in others]
    assert len({job.batch_id for job in jobs}) == 1, "the broken image's job was not in the batch it failed out of"


def test_out_of_memory_halves_the_batch_before_failing_anything(
    monkeypatch: pytest.MonkeyPatch, pictures: list[Image.Image]
) -> None:
    """A GPU running out of memory cannot happen here, so the handler raises CUDA's error itself for any
    batch of more than two: the runner halves until each half fits, and every job gets its result."""
    calls: list[int] = []

    def out_of_memory_above_two(lm: object, batch: Sequence[Work[CaptionInput]]) -> list[CaptionOutput]:
        calls.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [CaptionOutput(captions=[f"image {w.images[0].width}"]) for w in batch]

    monkeypatch.setitem(HANDLERS, JobKind.CAPTION, out_of_memory_above_two)
    monkeypatch.setattr(batches, "_release_memory", lambda: None)
    batch = Batch("b-1")
    for n, picture in enumerate(pictures[:6]):
        item = Item(Job(id=UUID(int=n), attempts=1, kind=JobKind.CAPTION))
        item.work = Work(input=CaptionInput.model_validate({"image_id": str(UUID(int=n))}), images=[picture])
        batch.items.append(item)
    _run_isolating(JobKind.CAPTION, object(), batch.items)
    assert calls == [6, 3, 1, 2, 3, 1, 2]
    assert [item.output.captions[0] if item.output else None for item in batch.items] == [
        f"image {p.width}" for p in pictures[:6]
    ]
    assert all(item.error is None for item in batch.items)
    assert [item.attempt for item in batch.items] == [Attempt(UUID(int=n), 1) for n in range(6)]
