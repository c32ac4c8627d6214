"""A soft time limit swallowed by library code still fails the job (worker/soft_limit.py).

Celery's pool raises SoftTimeLimitExceeded, an `Exception`, from a signal handler at whatever line the
job's process is on. transformers' `generate` asks `is_torchdynamo_compiling()` at every step, and that
function returns False on any `Exception`: a limit landing there was lost, and the job ran on to
success (seen once in the fault suite, whose frozen job woke to its limit mid-generation). Here the
limit lands in exactly that spot of a real model's `generate`, in a real worker runtime, through the
process's real SIGUSR1 handler, as billiard installs it in a pool's child.
"""

import io
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest
import torch
from billiard.pool import soft_timeout_sighandler
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image
from transformers.utils import import_utils

from jobs.db import SessionFactory, session_scope
from jobs.image_store import store_image
from jobs.inputs import CaptionInput
from jobs.kinds import JobKind, batch_key
from jobs.models import Attempt
from jobs.repository import add_job
from jobs.settings import Settings
from jobs.status import JobStatus
from tests.support.auth import TENANT
from worker import soft_limit
from worker.batches import run_batch_for
from worker.model_holder import ModelLoadOptions
from worker.progress import JobProgress
from worker.runtime import WorkerRuntime

GREEDY = {"num_beams": 1, "max_new_tokens": 8}


@pytest.fixture
def pool_child() -> Iterator[None]:
    """This process's SIGUSR1 as in a prefork pool's child: billiard's soft-limit handler, armed."""
    before = signal.signal(signal.SIGUSR1, soft_timeout_sighandler)
    try:
        soft_limit.arm()
        yield
    finally:
        signal.signal(signal.SIGUSR1, before)
        soft_limit.arm()  # the mark cleared for the next test


@pytest.fixture
def runtime(worker_settings: Settings) -> WorkerRuntime:
    return WorkerRuntime(settings=worker_settings, preload=None, load_options=ModelLoadOptions(device="cpu"))


class LimitInDynamoCheck:
    """`torch.compiler.is_compiling`, which sends this process its soft limit the first time transformers'
    `is_torchdynamo_compiling` asks it: the handler raises there, and that function swallows it."""

    def __init__(self) -> None:
        self.real = torch.compiler.is_compiling
        self.signalled = False
        self.calls_after = 0  # the pass went on past the swallowed limit

    def __call__(self) -> bool:
        if self.signalled:
            self.calls_after += 1
        elif sys._getframe(1).f_code is import_utils.is_torchdynamo_compiling.__code__:
            self.signalled = True
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs at the next line: here
        return self.real()


def uploaded(sessions: SessionFactory, settings: Settings, picture: Image.Image) -> UUID:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    with session_scope(sessions) as session:
        return store_image(session, TENANT, buffer.getvalue(), settings).id


def queued_caption(sessions: SessionFactory, queue: str, image_id: UUID) -> UUID:
    job_input = CaptionInput.model_validate({"image_id": str(image_id), **GREEDY})
    key = batch_key(JobKind.CAPTION, job_input, "tiny-opt", TENANT)
    with session_scope(sessions) as session:
        columns = {"tenant": TENANT, "kind": JobKind.CAPTION, "model": "tiny-opt", "queue": queue, "batch_key": key}
        return add_job(session, input=job_input.model_dump(mode="json"), **columns).id


def test_a_limit_swallowed_mid_generation_fails_the_job_and_the_next_job_runs(
    pool_child: None, runtime: WorkerRuntime, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = f"test-soft-limit-{uuid4().hex[:8]}"
    image_id = uploaded(runtime.sessions, runtime.settings, next(iter(photos.values())))
    warm = queued_caption(runtime.sessions, queue, image_id)
    [ran] = run_batch_for(runtime, warm, "soft-limit-0", queue=queue)  # the model loaded, the pass known good
    assert ran.status is JobStatus.SUCCEEDED, ran.error_message

    check = LimitInDynamoCheck()
    monkeypatch.setattr(torch.compiler, "is_compiling", check)
    soft_limit.arm()  # as each task does
    limited = queued_caption(runtime.sessions, queue, image_id)
    [ended] = run_batch_for(runtime, limited, "soft-limit-1", queue=queue)
    assert check.signalled and check.calls_after > 0, "the limit did not land where transformers swallows it"
    assert (ended.status, ended.error_code) == (JobStatus.FAILED, "time_limit_exceeded"), ended.result
    assert ended.error_message == "the job ran past the soft time limit"

    soft_limit.arm()  # the next task: the mark is the last task's alone
    following = queued_caption(runtime.sessions, queue, image_id)
    [after] = run_batch_for(runtime, following, "soft-limit-2", queue=queue)
    assert after.status is JobStatus.SUCCEEDED, after.error_message
    assert after.result == ran.result, "the job after the limit got another caption for the same image"


def test_a_training_step_after_a_swallowed_limit_stops_at_its_next_check(
    pool_child: None, sessions: SessionFactory
) -> None:
    progress = JobProgress(Attempt(job_id=uuid4(), number=1), sessions)
    progress.should_stop()  # no limit yet: it answers (True: no such job runs), raising nothing

    swallowed: list[Any] = []
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        sum(range(10))  # the handler has run by here
    except Exception as exc:  # what library code does to it
        swallowed.append(exc)
    assert [type(exc) for exc in swallowed] == [SoftTimeLimitExceeded]
    with pytest.raises(SoftTimeLimitExceeded):
        progress.should_stop()


def test_arming_leaves_a_handler_other_than_the_pools_alone(pool_child: None) -> None:
    def cry(signum: int, frame: object) -> None:
        """The solo pool's SIGUSR1: the worker logs every thread's stack."""

    signal.signal(signal.SIGUSR1, cry)
    soft_limit.arm()
    assert signal.getsignal(signal.SIGUSR1) is cry
    os.kill(os.getpid(), signal.SIGUSR1)
    sum(range(10))
    soft_limit.check()  # no limit: nothing raised
    assert not soft_limit.passed()
