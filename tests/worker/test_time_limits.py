"""A batch killed at the hard time limit has its jobs failed by the worker's main process, on Celery's signal."""

import os
import threading

import pytest
from celery.exceptions import TimeLimitExceeded
from celery.signals import celeryd_after_setup, task_failure

from jobs.broker import create_celery
from jobs.db import SessionFactory, session_scope
from jobs.kinds import JobKind
from jobs.models import Job
from jobs.queues import queue_for_model
from jobs.repository import add_job, claim_job, get_job
from jobs.settings import Settings
from jobs.status import JobStatus
from tests.support.auth import TENANT
from tests.support.waiting import wait_terminal
from worker import time_limits
from worker.time_limits import claim_id, record_hard_time_limits

# As long as node names come: a GPU worker of a tenant's model on a host with a long name (the claim once
# was 64 characters at most, and a long name failed every claim).
NODE = "infer.tenant.acme-research.my-captioner-v2-gpu0@" + "gpu-node-a.cluster.example.internal"


def noop(job_id: str) -> None:
    """Stands in for run_job: only its app and name matter to the signal."""


def running_job(sessions: SessionFactory, batch_id: str) -> Job:
    """A job claimed into the batch of the task `batch_id`."""
    with session_scope(sessions) as session:
        job = add_job(
            session, tenant=TENANT, kind=JobKind.CAPTION, model="tiny-opt", queue=queue_for_model("tiny-opt"), input={}
        )
        claimed = claim_job(session, job.id, batch_id)
    assert claimed is not None
    return claimed


def test_a_hard_timeout_fails_the_job_once(sessions: SessionFactory, settings: Settings) -> None:
    app = create_celery(settings)
    task = app.task(name="test.time_limits")(noop)
    record_hard_time_limits(app, settings)
    celeryd_after_setup.send(sender=NODE, instance=None, conf=app.conf)
    batch = [running_job(sessions, claim_id(NODE, "t-1")) for _ in range(2)]
    bystander = running_job(sessions, claim_id(NODE, "t-other"))
    # The same message sent again (the sweeper) or redelivered (Redis), its run's claim on another worker.
    twin = running_job(sessions, claim_id("celery@node-b", "t-1"))
    for _ in range(2):  # Celery signals a hard timeout twice
        task_failure.send(sender=task, task_id="t-1", exception=TimeLimitExceeded(2), args=[str(batch[0].id)])
    for job in batch:
        failed = wait_terminal(sessions, job.id)
        assert (failed.status, failed.error_code, failed.attempts) == (JobStatus.FAILED, "time_limit_exceeded", 1)
        assert failed.error_message == "the job ran past the hard time limit (2 s)"
        assert failed.worker_seconds is not None and failed.worker_seconds >= 0, "the killed batch's time was lost"
    with session_scope(sessions) as session:
        assert get_job(session, bystander.id).status is JobStatus.RUNNING  # another batch's job is left alone
        assert get_job(session, twin.id).status is JobStatus.RUNNING, "a run of the same message elsewhere was failed"


def test_other_failures_and_other_apps_are_left_alone(sessions: SessionFactory, settings: Settings) -> None:
    app, other = create_celery(settings), create_celery(settings)
    task = app.task(name="test.time_limits")(noop)
    other_task = other.task(name="test.time_limits")(noop)
    record_hard_time_limits(app, settings)
    celeryd_after_setup.send(sender=NODE, instance=None, conf=app.conf)
    job = running_job(sessions, claim_id(NODE, "t-2"))
    task_failure.send(sender=task, task_id="t-2", exception=RuntimeError("boom"), args=[str(job.id)])
    task_failure.send(sender=other_task, task_id="t-2", exception=TimeLimitExceeded(2), args=[str(job.id)])
    # Whatever the handler started to fail the batch has finished (however slow the machine), and
    # it started nothing: the job is still running.
    for thread in threading.enumerate():
        if thread.name == "time-limit-t-2":
            thread.join()
    assert wait_terminal(sessions, job.id, timeout_s=0).status is JobStatus.RUNNING
    with session_scope(sessions) as session:
        assert get_job(session, job.id).error_code is None


def test_a_fork_waits_for_a_hard_limit_write_in_progress(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool's fork of a new child never copies a lock the write holds (the child would hang on it)."""
    writing, finish = threading.Event(), threading.Event()

    def slow_write(*_: object) -> None:
        writing.set()
        finish.wait(60)

    monkeypatch.setattr(time_limits, "_write_failure", slow_write)
    writer = threading.Thread(target=time_limits._fail, args=(settings, None, "batch", 15))
    writer.start()
    assert writing.wait(60)
    forked = threading.Event()

    def fork() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        forked.set()
        os.waitpid(pid, 0)

    forker = threading.Thread(target=fork)
    forker.start()
    assert not forked.wait(0.5)  # it cannot fork while the write holds the lock, however fast the machine
    finish.set()
    assert forked.wait(60)
    forker.join(60)
    writer.join(60)
