"""Sharing the workers, on real worker processes: tenants take turns (weighted), interactive jobs go
before batch ones (until a batch job has waited too long), each job's model time is recorded once,
a job identical to a finished one is answered without a worker, and a tenant's trained model is
served by workers of its own while they live and by its base model's when they are gone.

Every order is read from Postgres (`started_at`, `finished_at`), never from the clock of this test:
the jobs are queued before their worker starts, so its claims alone decide the order. Each test's
worker serves a model name of its own (a registry file maps each to the tiny-opt checkpoint), on its
own queue, so no other worker takes these jobs.
"""

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import func, select

from blip2.registry import Registry
from jobs.broker import Dispatcher, JobMessage
from jobs.catalog import save_trained_model
from jobs.db import SessionFactory, session_scope
from jobs.errors import JobNotCancelable
from jobs.fair_share import set_tenant_weight
from jobs.image_store import store_image
from jobs.kinds import JobKind
from jobs.models import Job, TrainedModel
from jobs.presence import PresenceCache, is_served
from jobs.queues import queue_for_model, queue_for_trained
from jobs.repository import add_job, cancel_job
from jobs.schemas import JOB_CREATE_ADAPTER
from jobs.settings import Settings
from jobs.status import JobStatus, Priority
from jobs.submission import Submission, submit_job
from jobs.sweeper import sweep_once
from tests.support.auth import TENANT
from tests.support.broker import waiting_job_ids
from tests.support.images import png_bytes
from tests.support.processes import running_worker
from tests.support.waiting import wait_terminal, wait_until

pytestmark = pytest.mark.slow

QUICK = {"num_beams": 1, "max_new_tokens": 2}
MODELS = ("fair-opt", "fair-batched", "fair-weighted", "fair-priority", "fair-aged", "fair-cache", "trained-base")
WORKER_ENV = {"OMP_NUM_THREADS": "1"}  # one torch thread: this 2-core box is shared with the test and others
A, B = "fair-a", "fair-b"


@pytest.fixture(scope="module")
def sharing_settings(worker_settings: Settings, tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Settings:
    checkpoint = models_dir / "models" / "tiny-opt"
    models = tmp_path_factory.mktemp("sharing-models") / "models.toml"
    models.write_text("".join(f'[models.{name}]\ncheckpoint = "{checkpoint}"\nfamily = "opt"\n\n' for name in MODELS))
    return worker_settings.model_copy(update={"BLIP2_MODELS_FILE": models})


@pytest.fixture(scope="module")
def ctx(sessions: SessionFactory, dispatcher: Dispatcher, sharing_settings: Settings) -> Submission:
    # Presence read afresh on every submission (the API remembers it for two seconds).
    registry = Registry.load(sharing_settings.BLIP2_MODELS_FILE)
    return Submission(sessions, dispatcher, registry, sharing_settings, presence=PresenceCache(ttl_s=0))


@pytest.fixture(scope="module")
def images(sessions: SessionFactory, sharing_settings: Settings) -> dict[str, UUID]:
    """One stored image per tenant."""
    with session_scope(sessions) as session:
        return {t: store_image(session, t, png_bytes(), sharing_settings).id for t in (A, B, TENANT)}


@pytest.fixture
def worker_for(sharing_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start a worker for a model name (on its own queue unless `queue` is given), stopped after the test."""
    with ExitStack() as stack:

        def start(model: str, *options: str, queue: str | None = None, settings: Settings | None = None) -> Any:
            log = tmp_path / f"{model}-{time.monotonic_ns()}.log"
            queues = [queue or queue_for_model(model)]
            worker = running_worker(settings or sharing_settings, log, model=model, queues=queues,
                                    env=WORKER_ENV, options=list(options))  # fmt: skip
            return stack.enter_context(worker)

        yield start


def submit(ctx: Submission, tenant: str, model: str, image_id: UUID, **fields: Any) -> Job:
    body = {"kind": "caption", "model": model, "input": {"image_id": str(image_id), **QUICK}, "cache": False}
    return submit_job(ctx, tenant, JOB_CREATE_ADAPTER.validate_python(body | fields)).job


def finished_order(sessions: SessionFactory, ids: list[UUID]) -> list[Job]:
    """The jobs that finished, in the order their worker finished them (a batch's jobs in claim order)."""
    with sessions() as session:
        query = select(Job).where(Job.id.in_(ids), Job.status == JobStatus.SUCCEEDED)
        return list(session.scalars(query.order_by(Job.finished_at, Job.started_at, Job.id)))


def at(moment: datetime | None) -> datetime:
    """A moment a job that ran has (started_at, finished_at)."""
    assert moment is not None, "a job that ran has no start or finish"
    return moment


def cancel_the_rest(sessions: SessionFactory, ids: list[UUID]) -> None:
    """Cancel what is still queued: the test has what it needs, the worker need not run the rest."""
    with session_scope(sessions) as session:
        queued = session.scalars(select(Job).where(Job.id.in_(ids), Job.status == JobStatus.QUEUED))
        for job in list(queued):
            with contextlib.suppress(JobNotCancelable):  # the worker ran it since the read: nothing to cancel
                cancel_job(session, job.id, job.tenant)


# ---- fair share -----------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "batch_size"), [("fair-opt", 1), ("fair-batched", 8)])
def test_a_small_tenant_is_not_stuck_behind_a_big_backlog(
    ctx: Submission, worker_for: Any, images: dict[str, UUID], model: str, batch_size: int
) -> None:
    """A queues 200 jobs, then B queues 10: every one of B's jobs finishes before A's 40th."""
    a_jobs = [submit(ctx, A, model, images[A]).id for _ in range(200)]
    b_jobs = [submit(ctx, B, model, images[B]).id for _ in range(10)]
    worker_for(model, f"--batch-size={batch_size}")

    def enough() -> bool:
        done = finished_order(ctx.sessions, a_jobs + b_jobs)
        return sum(job.tenant == A for job in done) >= 40 and sum(job.tenant == B for job in done) == 10

    wait_until(enough, "40 of A's jobs and all of B's finished", timeout_s=600, interval_s=0.5)
    cancel_the_rest(ctx.sessions, a_jobs)
    done = finished_order(ctx.sessions, a_jobs + b_jobs)
    a_40th = [at(job.finished_at) for job in done if job.tenant == A][39]
    last_b = max(at(job.finished_at) for job in done if job.tenant == B)
    a_before = sum(job.tenant == A and at(job.finished_at) < last_b for job in done)
    print(f"\nbatch size {batch_size}: B's last job finished after {a_before} of A's; first 30 finished:",
          "".join(job.tenant[-1] for job in done[:30]))  # fmt: skip
    assert last_b < a_40th, f"B's last job finished after A's 40th ({a_before} of A's before it)"


def test_a_tenants_weight_sets_its_share(ctx: Submission, worker_for: Any, images: dict[str, UUID]) -> None:
    """Weight 3 against 1, both with a backlog: of the first 40 jobs run, A's are 3 in 4."""
    with session_scope(ctx.sessions) as session:
        set_tenant_weight(session, A, 3)
    try:
        a_jobs = [submit(ctx, A, "fair-weighted", images[A]).id for _ in range(60)]
        b_jobs = [submit(ctx, B, "fair-weighted", images[B]).id for _ in range(60)]
        worker_for("fair-weighted", "--batch-size=1")
        wait_until(lambda: len(finished_order(ctx.sessions, a_jobs + b_jobs)) >= 40, "40 jobs run", timeout_s=600,
                   interval_s=0.5)  # fmt: skip
        cancel_the_rest(ctx.sessions, a_jobs + b_jobs)
    finally:
        with session_scope(ctx.sessions) as session:
            set_tenant_weight(session, A, 1)
    first = [job.tenant for job in finished_order(ctx.sessions, a_jobs + b_jobs)][:40]
    print(f"\nweight 3 against 1: A ran {first.count(A)} of the first 40:", "".join(t[-1] for t in first))
    assert 29 <= first.count(A) <= 31, f"weight 3 should take 30 of the first 40, took {first.count(A)}: {first}"


def test_long_jobs_take_turns_too(ctx: Submission, worker_for: Any, dispatcher: Dispatcher) -> None:
    """B queues a batch-priority download, A 6 downloads, then B 2: the first four to run are A's and
    B's in turns, not A's backlog first (the order their messages came in), and the batch job runs
    last. Each download names a host the worker may not fetch, so it fails at once, reaching no
    network; what counts is the order the claims took them. The jobs and the worker use a queue of
    their own, so no other long worker takes them."""
    forbidden = {"url": "http://localhost:9/data.tar.gz", "sha256": "0" * 64, "name": "turns", "format": "jsonl"}
    queue, queued = (
        "fair-long",
        [(B, Priority.BATCH)] + [(A, Priority.INTERACTIVE)] * 6 + [(B, Priority.INTERACTIVE)] * 2,
    )
    with session_scope(ctx.sessions) as session:
        jobs = [add_job(session, tenant=tenant, kind=JobKind.DOWNLOAD, model="", queue=queue, input=forbidden,
                        priority=priority) for tenant, priority in queued]  # fmt: skip
    for job in jobs:
        dispatcher.send(JobMessage.of(job))
    worker_for("fair-opt", queue=queue)
    ended = [wait_terminal(ctx.sessions, job.id, timeout_s=300) for job in jobs]
    assert {(job.status, job.error_code) for job in ended} == {(JobStatus.FAILED, "forbidden_url")}
    by_start = sorted(ended, key=lambda job: at(job.started_at))
    order = "".join(job.tenant[-1] for job in by_start)
    print(f"\nlong jobs, B's batch job, A's 6, then B's 2 queued, ran in the order {order}")
    assert order[:4].count("b") == 2, f"B's jobs waited behind A's backlog: {order}"
    assert by_start[-1].id == jobs[0].id, f"the batch-priority job ran before interactive ones: {order}"


def test_a_long_job_whose_stored_input_no_longer_parses_fails_alone(
    ctx: Submission, worker_for: Any, dispatcher: Dispatcher
) -> None:
    """A row written by an older version (or by hand) fails with `invalid_input` at once, rather than
    running until its lease ends and again after each; the job queued after it still runs."""
    queue = "broken-long"
    forbidden = {"url": "http://localhost:9/data.tar.gz", "sha256": "0" * 64, "name": "after", "format": "jsonl"}
    with session_scope(ctx.sessions) as session:
        jobs = [add_job(session, tenant=A, kind=JobKind.DOWNLOAD, model="", queue=queue, input=job_input)
                for job_input in ({"url": 5, "format": "tarball"}, forbidden)]  # fmt: skip
    for job in jobs:
        dispatcher.send(JobMessage.of(job))
    worker_for("fair-opt", queue=queue)
    broken, after = (wait_terminal(ctx.sessions, job.id, timeout_s=300) for job in jobs)
    assert (broken.status, broken.error_code, broken.attempts) == (JobStatus.FAILED, "invalid_input", 1)
    assert "not a download input" in (broken.error_message or "")
    assert (after.status, after.error_code) == (JobStatus.FAILED, "forbidden_url")


# ---- priorities -----------------------------------------------------------------------------


def test_interactive_jobs_run_before_batch_jobs(ctx: Submission, worker_for: Any, images: dict[str, UUID]) -> None:
    bulk = [submit(ctx, A, "fair-priority", images[A], priority="batch").id for _ in range(6)]
    urgent = [submit(ctx, tenant, "fair-priority", images[tenant]).id for tenant in (A, B, A, B)]
    worker_for("fair-priority", "--batch-size=1")
    jobs = {job_id: wait_terminal(ctx.sessions, job_id, timeout_s=300) for job_id in bulk + urgent}
    assert {job.status for job in jobs.values()} == {JobStatus.SUCCEEDED}
    last_urgent = max(at(jobs[i].started_at) for i in urgent)
    first_bulk = min(at(jobs[i].started_at) for i in bulk)
    assert last_urgent < first_bulk, "a batch job started while interactive jobs were waiting"


def test_a_batch_job_that_waited_too_long_is_not_starved(
    ctx: Submission, worker_for: Any, images: dict[str, UUID], sharing_settings: Settings
) -> None:
    patient = submit(ctx, A, "fair-aged", images[A], priority="batch")

    def waited_past_the_bound() -> bool:  # by the database's clock, the one the claim reads
        waited = select(func.now() - Job.created_at > timedelta(seconds=2)).where(Job.id == patient.id)
        with ctx.sessions() as session:
            return bool(session.scalar(waited))

    wait_until(waited_past_the_bound, "the batch job waited past its bound", timeout_s=60, interval_s=0.2)
    urgent = [submit(ctx, A, "fair-aged", images[A]).id for _ in range(3)]
    impatient = sharing_settings.model_copy(update={"BATCH_PRIORITY_MAX_WAIT_S": 1.0})
    worker_for("fair-aged", "--batch-size=1", settings=impatient)
    jobs = {job_id: wait_terminal(ctx.sessions, job_id, timeout_s=300) for job_id in [patient.id, *urgent]}
    first = min(jobs.values(), key=lambda job: at(job.started_at))
    assert first.id == patient.id, "a batch job past its wait still waited behind newer interactive jobs"


# ---- usage and the result cache -------------------------------------------------------------


def test_worker_seconds_are_shared_across_a_batch_and_identical_jobs_are_answered_cached(
    ctx: Submission, worker_for: Any, images: dict[str, UUID], key_prefix: str
) -> None:
    queue = queue_for_model("fair-cache")
    jobs = [submit(ctx, TENANT, "fair-cache", images[TENANT], cache=True).id for _ in range(4)]
    worker_for("fair-cache", "--batch-size=8")
    ran = [wait_terminal(ctx.sessions, job_id, timeout_s=300) for job_id in jobs]
    assert [job.status for job in ran] == [JobStatus.SUCCEEDED] * 4
    assert len({job.batch_id for job in ran}) == 1, "four identical queued jobs were not one batch"
    shares = {job.worker_seconds for job in ran}
    assert len(shares) == 1, f"equal jobs of one batch got unequal shares of its time: {shares}"
    assert (shares.pop() or 0) > 0, "no model time recorded"

    again = submit(ctx, TENANT, "fair-cache", images[TENANT], cache=True)
    assert (again.status, again.cached, again.result) == (JobStatus.SUCCEEDED, True, ran[0].result)
    assert str(again.id) not in waiting_job_ids(key_prefix, queue), "a message was sent for a cached job"
    fresh = submit(ctx, TENANT, "fair-cache", images[TENANT], cache=False)
    assert wait_terminal(ctx.sessions, fresh.id, timeout_s=300).cached is False


# ---- workers of a trained model -------------------------------------------------------------


@pytest.fixture
def trained(sessions: SessionFactory, models_dir: Path) -> str:
    """A trained model of the test tenant (the tiny-opt checkpoint), whose base is `trained-base`."""
    name = f"own-{time.monotonic_ns()}"
    row = TrainedModel(tenant=TENANT, name=name, family="opt", path=str(models_dir / "models" / "tiny-opt"),
                       base_model="trained-base", task="caption", dataset="shapes", metrics={})  # fmt: skip
    with session_scope(sessions) as session:
        save_trained_model(session, row)
    return name


def served(sessions: SessionFactory, queue: str) -> bool:
    with sessions() as session:
        return is_served(session, queue)


def test_a_trained_model_has_workers_of_its_own_while_they_live(
    ctx: Submission, worker_for: Any, images: dict[str, UUID], trained: str
) -> None:
    own = queue_for_trained(TENANT, trained)
    worker = worker_for(trained, "--tenant=test", queue=own)
    wait_until(lambda: served(ctx.sessions, own), "the worker announced its queue", timeout_s=60)
    job = submit(ctx, TENANT, trained, images[TENANT])
    assert job.queue == own
    done = wait_terminal(ctx.sessions, job.id, timeout_s=300)  # no worker of the base model is running
    assert done.status is JobStatus.SUCCEEDED and (done.worker_seconds or 0) > 0
    worker.terminate()  # a warm shutdown withdraws the queue at once
    wait_until(lambda: not served(ctx.sessions, own), "the stopped worker withdrew its queue", timeout_s=60)
    assert submit(ctx, TENANT, trained, images[TENANT]).queue == queue_for_model("trained-base")


def test_jobs_left_on_the_queue_of_a_dead_worker_still_run(
    ctx: Submission, worker_for: Any, images: dict[str, UUID], trained: str, dispatcher: Dispatcher
) -> None:
    own = queue_for_trained(TENANT, trained)
    worker = worker_for(trained, "--tenant=test", queue=own)
    wait_until(lambda: served(ctx.sessions, own), "the worker announced its queue", timeout_s=60)
    worker.kill()  # SIGKILL: no withdrawal; its row outlives it by up to a lease
    worker.wait()
    stranded = []
    for _ in range(3):  # routed to it before anyone knew it was dead
        with session_scope(ctx.sessions) as session:
            job = add_job(session, tenant=TENANT, kind=JobKind.CAPTION, model=trained, queue=own,
                          input={"image_id": str(images[TENANT]), "decoding": QUICK})  # fmt: skip
        dispatcher.send(JobMessage.of(job))
        stranded.append(job.id)
    worker_for("trained-base")
    wait_until(lambda: not served(ctx.sessions, own), "the dead worker's presence expired", timeout_s=60)
    wait_until(lambda: sweep_moved(ctx, dispatcher, stranded, own), "the sweeper moved the jobs", timeout_s=60)
    jobs = [wait_terminal(ctx.sessions, job_id, timeout_s=300) for job_id in stranded]
    assert [(job.status, job.queue, job.attempts) for job in jobs] == [
        (JobStatus.SUCCEEDED, queue_for_model("trained-base"), 1)
    ] * 3


def sweep_moved(ctx: Submission, dispatcher: Dispatcher, ids: list[UUID], queue: str) -> bool:
    """Sweep once, as the API does every SWEEP_INTERVAL_S; True once none of the jobs is left on `queue`."""
    sweep_once(ctx.sessions, dispatcher, ctx.settings)
    with ctx.sessions() as session:
        return not session.scalar(select(func.count()).where(Job.id.in_(ids), Job.queue == queue))
