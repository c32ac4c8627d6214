"""A job whose message ran other jobs first gets a message again (worker/batches.py `_claim`).

A message runs the next batch in fair order, not necessarily its own job: here a batch-priority job's
message runs an interactive job that came later. The interactive job's own message is then dropped
unread once it ends here, so the batch job had no message left and waited queued until the sweeper
sent one, QUEUED_TOO_LONG_S later (seen in `test_sharing`, whose worker took its messages in the order
they were sent: four batch jobs stranded). Real Postgres, Redis, Celery messages and tiny model.
"""

import io
from collections.abc import Iterator
from uuid import UUID, uuid4

import pytest
from PIL import Image

from jobs.broker import Dispatcher
from jobs.db import SessionFactory, session_scope
from jobs.image_store import store_image
from jobs.inputs import CaptionInput
from jobs.kinds import JobKind, batch_key
from jobs.models import Job
from jobs.repository import add_job, get_job
from jobs.settings import Settings
from jobs.status import JobStatus, Priority
from tests.support.auth import TENANT
from tests.support.broker import drain, waiting_job_ids
from worker.batches import run_batch_for
from worker.model_holder import ModelLoadOptions
from worker.runtime import BatchOptions, WorkerRuntime

GREEDY = {"num_beams": 1, "max_new_tokens": 4}


@pytest.fixture
def runtime(worker_settings: Settings, dispatcher: Dispatcher) -> WorkerRuntime:
    """One job per batch: the order jobs run in is the order of the claims."""
    return WorkerRuntime(settings=worker_settings, preload=None, load_options=ModelLoadOptions(device="cpu"),
                         batch=BatchOptions(size=1, wait_ms=0), dispatcher=dispatcher)  # fmt: skip


@pytest.fixture
def queue(key_prefix: str) -> Iterator[str]:
    name = f"test-passed-over-{uuid4().hex[:8]}"
    yield name
    drain(key_prefix, name)


def uploaded(sessions: SessionFactory, settings: Settings, picture: Image.Image) -> UUID:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    with session_scope(sessions) as session:
        return store_image(session, TENANT, buffer.getvalue(), settings).id


def queued_caption(sessions: SessionFactory, queue: str, image_id: UUID, priority: Priority) -> Job:
    job_input = CaptionInput.model_validate({"image_id": str(image_id), **GREEDY})
    key = batch_key(JobKind.CAPTION, job_input, "tiny-opt", TENANT)
    with session_scope(sessions) as session:
        return add_job(session, tenant=TENANT, kind=JobKind.CAPTION, model="tiny-opt", queue=queue, batch_key=key,
                       priority=priority, input=job_input.model_dump(mode="json"))  # fmt: skip


def test_a_passed_over_job_is_sent_again_and_runs_on_that_message(
    runtime: WorkerRuntime, queue: str, key_prefix: str, photos: dict[str, Image.Image]
) -> None:
    image_id = uploaded(runtime.sessions, runtime.settings, next(iter(photos.values())))
    bulk = queued_caption(runtime.sessions, queue, image_id, Priority.BATCH)
    urgent = queued_caption(runtime.sessions, queue, image_id, Priority.INTERACTIVE)

    # The bulk job's message comes first (it was sent first) and runs the interactive job.
    [ran] = run_batch_for(runtime, bulk.id, "passed-over-1", queue=queue)
    assert ran.id == urgent.id and ran.status is JobStatus.SUCCEEDED, ran.error_message
    assert waiting_job_ids(key_prefix, queue) == [str(bulk.id)], "the passed-over job was not sent a message again"
    with session_scope(runtime.sessions) as session:
        marked = get_job(session, bulk.id)
    assert marked.dispatched_at is not None and bulk.dispatched_at is not None
    assert marked.dispatched_at > bulk.dispatched_at, "the sweeper was not told of the message sent again"
    assert marked.dispatch_count == bulk.dispatch_count, "one message spent, one sent: no duplicate to back off from"

    # The interactive job's own message: it ended here, and the message is dropped unread.
    assert run_batch_for(runtime, urgent.id, "passed-over-2", queue=queue) == []
    # The message sent again runs the bulk job.
    [last] = run_batch_for(runtime, bulk.id, "passed-over-3", queue=queue)
    assert last.id == bulk.id and last.status is JobStatus.SUCCEEDED, last.error_message
    # (Run here directly, the message sent again stays in Redis: it is still the only one.)
    assert waiting_job_ids(key_prefix, queue) == [str(bulk.id)], "a message was sent for a job that ran on its own"


def test_a_message_that_runs_its_own_job_or_nothing_sends_none(
    runtime: WorkerRuntime, queue: str, key_prefix: str, photos: dict[str, Image.Image]
) -> None:
    image_id = uploaded(runtime.sessions, runtime.settings, next(iter(photos.values())))
    first = queued_caption(runtime.sessions, queue, image_id, Priority.INTERACTIVE)
    [ran] = run_batch_for(runtime, first.id, "own-1", queue=queue)
    assert ran.id == first.id
    assert run_batch_for(runtime, uuid4(), "own-2", queue=queue) == []  # nothing queued: nothing runs, no message
    assert waiting_job_ids(key_prefix, queue) == []
