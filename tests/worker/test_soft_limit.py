"""A soft time limit swallowed by library code still fails the job (worker/soft_limit.py).

Celery's pool raises SoftTimeLimitExceeded, an `Exception`, from a signal handler at whatever line the
job's process is on. transformers' `generate` asks `is_torchdynamo_compiling()` at every step, and that
function returns False on any `Exception`: a limit landing there was lost, and the job ran on to
success (seen once in the fault suite, whose frozen job woke to its limit mid-generation). Here the
limit lands in exactly that spot of a real model's `generate`, in a real worker runtime, through the
process's real SIGUSR1 handler, as billiard installs it in a pool's child.
"""

import io
import signal
import sys
import threading
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
from jobs.models import Attempt, Job
from jobs.outputs import EvaluateOutput
from jobs.repository import add_job, succeed_job
from jobs.settings import Settings
from jobs.status import JobStatus
from tests.support.auth import TENANT
from worker import long_jobs, soft_limit
from worker.batches import run_batch_for
from worker.long_jobs import run_long_job
from worker.model_holder import ModelLoadOptions
from worker.progress import JobProgress
from worker.runtime import WorkerRuntime

GREEDY = {"num_beams": 1, "max_new_tokens": 8}


def to_this_thread(signum: int) -> None:
    """Send this (the main) thread a signal: delivered before the call returns, where a signal to the
    process may go to another of its threads (the heartbeat's) and reach Python later, anywhere."""
    signal.pthread_kill(threading.get_ident(), signum)


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
            to_this_thread(signal.SIGUSR1)  # the handler runs at the next line: here
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
        to_this_thread(signal.SIGUSR1)
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
    to_this_thread(signal.SIGUSR1)
    sum(range(10))
    soft_limit.check()  # no limit: nothing raised
    assert not soft_limit.passed()


@pytest.fixture
def long_runtime(worker_settings: Settings) -> WorkerRuntime:
    return WorkerRuntime(settings=worker_settings, preload=None)


def evaluated_as(runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch, handler: Any) -> Job:
    """An evaluate job run by the worker's long-job path, `handler` standing in for the model's scoring."""
    monkeypatch.setitem(long_jobs.LONG_HANDLERS, JobKind.EVALUATE, handler)
    queue = f"test-soft-limit-{uuid4().hex[:8]}"
    with session_scope(runtime.sessions) as session:
        job = add_job(session, tenant=TENANT, kind=JobKind.EVALUATE, model="tiny-opt", queue=queue,
                      input={"dataset": "squares"})  # fmt: skip
    soft_limit.arm()  # as each task does
    ended = run_long_job(runtime, job.id, f"b-{job.id}", queue=queue)  # nothing escapes the task
    assert ended is not None and ended.id == job.id
    return ended


def test_a_long_job_that_swallowed_its_limit_fails_when_it_returns(
    pool_child: None, long_runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def scoring_that_swallows(_: object) -> EvaluateOutput:
        try:
            to_this_thread(signal.SIGUSR1)
            sum(range(10))
        except Exception:
            pass
        return EvaluateOutput(metrics={"exact_match": 1.0}, records=1)

    ended = evaluated_as(long_runtime, monkeypatch, scoring_that_swallows)
    assert (ended.status, ended.error_code) == (JobStatus.FAILED, "time_limit_exceeded"), ended.result


def test_a_limit_during_a_long_jobs_result_write_keeps_the_result(
    pool_child: None, long_runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work was done before the limit: the write is done again, and the job succeeds. (The limit
    used to escape the task, the job left running until its lease ended, then run again.)"""
    writes: list[Any] = []

    def write_interrupted_once(*args: Any) -> Any:
        writes.append(args)
        if len(writes) == 1:
            to_this_thread(signal.SIGUSR1)  # lands in the write's transaction
        return succeed_job(*args)

    monkeypatch.setattr(long_jobs, "succeed_job", write_interrupted_once)
    ended = evaluated_as(long_runtime, monkeypatch, lambda _: EvaluateOutput(metrics={"exact_match": 1.0}, records=1))
    assert len(writes) == 2, "the limit did not land in the first write"
    assert (ended.status, ended.attempts) == (JobStatus.SUCCEEDED, 1), ended.error_message
    assert ended.result == {"metrics": {"exact_match": 1.0}, "records": 1}
