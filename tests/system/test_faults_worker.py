"""Worker faults on real processes: a worker SIGKILLed mid-job (its job-running child, or all of it),
a message delivered twice, a job that kills its worker every time, jobs over their soft and hard time
limits, a worker shut down mid-job, and 500 failing jobs in a row. Each job's outcome is read from
Postgres: its status, its attempts (one per run), its one result.

Every job here runs on workers this module starts, on queues of their own (model names from a
registry file, all the tiny-t5 checkpoint), so the session's shared worker never takes one, and
killing these workers disturbs no other test. A sweeper thread stands in for the API's: it re-queues
a running job whose heartbeat is older than JOB_LEASE_S (5 s here), as the API does in production.
Faults are injected from outside, as an OOM killer or an orchestrator would: signals to the
processes, duplicate messages sent to Redis; nothing in the production code knows it is tested.
"""

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
import pytest
from sqlalchemy import select

from blip2.registry import Registry
from jobs.broker import Dispatcher, JobMessage
from jobs.db import SessionFactory, create_db_engine, create_session_factory, session_scope
from jobs.image_store import store_image
from jobs.kinds import JobKind
from jobs.models import Job
from jobs.queues import queue_for_model
from jobs.repository import add_job
from jobs.schema_migrations import upgrade
from jobs.schemas import JOB_CREATE_ADAPTER
from jobs.settings import Settings
from jobs.status import JobStatus
from jobs.submission import Submission, submit_job
from jobs.sweeper import sweep_once
from tests.support.auth import TENANT
from tests.support.db import in_a_transaction
from tests.support.fault_tally import tally
from tests.support.images import png_bytes
from tests.support.processes import running_worker, wait_for_cpu_work
from tests.support.services import temporary_database

pytestmark = pytest.mark.slow

# Every model name maps to the tiny-t5 checkpoint; each is its own queue, `infer.<name>`.
SHARED = "faults-t5"  # the module's long-lived worker: duplicates, a killed child, poison, 500 failures
KILLED = "faults-killed"  # a worker killed outright, then another started
TIMED = "faults-timed"  # a worker with time limits of its own (SOFT_LIMIT_S, HARD_LIMIT_S)
STOPPED = "faults-stopped"  # a worker shut down with SIGTERM mid-job
FROZEN = "faults-frozen"  # a worker frozen (SIGSTOP) past its lease, then thawed
MODELS = (SHARED, KILLED, TIMED, STOPPED, FROZEN)
POISONED = "faults-nan"  # a retrieval checkpoint whose image embeddings come out NaN

QUICK = {"num_beams": 1, "max_new_tokens": 3}
# About 2 s here (16 beams, 512 forced tokens, the library's most): long enough to be caught
# running, short enough to be run again after the fault.
SLOW = {"num_beams": 16, "max_new_tokens": 512, "min_new_tokens": 512}
# TIMED's limits: far above an ordinary job (a quick caption of the 3000x3000 image, at most a
# few seconds on a loaded 2-core machine), since every job there runs under them; the jobs meant
# to pass them are frozen, so they pass them whatever the machine's speed.
SOFT_LIMIT_S = 10
# Past the soft limit, a job that heeds it fails within a fraction of a second.
HARD_LIMIT_S = SOFT_LIMIT_S + 5
# CPU time a SLOW job's process spends past its claim before it is surely in its model work: its
# database reads take milliseconds of CPU; decoding the 3000x3000 image and the generation, seconds.
MODEL_WORK_CPU_S = 0.3


@dataclass
class Worker:
    """A `blip2-jobs worker` subprocess and its log."""

    process: subprocess.Popen[bytes]
    log: Path

    def child(self, timeout_s: float = 60) -> psutil.Process:
        """The one prefork child that runs jobs (concurrency 1), waiting while it is being replaced."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            children = psutil.Process(self.process.pid).children()
            if len(children) == 1:
                return children[0]
            time.sleep(0.05)
        raise AssertionError(f"worker {self.process.pid} has no single child")


@contextmanager
def started_worker(settings: Settings, model: str, log: Path) -> Iterator[Worker]:
    """A worker holding `model` and consuming only its queue, ready for jobs."""
    with running_worker(settings, log, model=model, queues=[queue_for_model(model)]) as process:
        yield Worker(process, log)


@pytest.fixture(scope="module")
def models_file(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    checkpoint = models_dir / "models" / "tiny-t5"
    directory = tmp_path_factory.mktemp("fault-models")
    poisoned = poisoned_checkpoint(models_dir / "models" / "tiny-itm", directory / POISONED)
    path = directory / "models.toml"
    entries = [f'[models.{name}]\ncheckpoint = "{checkpoint}"\nfamily = "t5"\n\n' for name in MODELS]
    path.write_text("".join(entries) + f'[models.{POISONED}]\ncheckpoint = "{poisoned}"\nfamily = "itm"\n')
    return path


@pytest.fixture(scope="module")
def fault_settings(worker_settings: Settings, models_file: Path) -> Iterator[Settings]:
    """The session's settings with the module's models and a database of its own: the session's API
    sweeps the shared one with a 5 s lease, and would take a job these tests freeze for lost."""
    with temporary_database() as url:
        made = worker_settings.model_copy(update={"BLIP2_MODELS_FILE": models_file, "DATABASE_URL": url})
        upgrade(made)
        yield made


@pytest.fixture(scope="module")
def sessions(fault_settings: Settings) -> Iterator[SessionFactory]:
    """Sessions on the module's own database (in place of the session-wide fixture of this name)."""
    engine = create_db_engine(fault_settings)
    yield create_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def ctx(sessions: SessionFactory, dispatcher: Dispatcher, fault_settings: Settings, models_file: Path) -> Submission:
    return Submission(sessions, dispatcher, Registry.load(models_file), fault_settings)


def poisoned_checkpoint(source: Path, target: Path) -> Path:
    """A copy of a retrieval checkpoint with a NaN in its image projection, as a diverged fine-tune leaves one."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    weights["vision_projection.weight"][0, 0] = torch.nan
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def stored_image(sessions: SessionFactory, settings: Settings, side: int) -> UUID:
    with session_scope(sessions) as session:
        return store_image(session, TENANT, png_bytes(side, side), settings).id


@pytest.fixture(scope="module")
def image_id(sessions: SessionFactory, fault_settings: Settings) -> UUID:
    """A 512x512 image: 0.75 MB decoded, so images left behind by many jobs would show in RSS."""
    return stored_image(sessions, fault_settings, 512)


@pytest.fixture(scope="module")
def large_image_id(sessions: SessionFactory, fault_settings: Settings) -> UUID:
    """A 3000x3000 image: 27 MB decoded, so a timed-out job left in memory with its image would show in RSS."""
    return stored_image(sessions, fault_settings, 3000)


@dataclass
class Sweeper:
    """The sweeper's settings, which a test may give a longer lease (`with sweeper.lease(...)`)."""

    settings: Settings

    @contextmanager
    def lease(self, seconds: float) -> Iterator[None]:
        usual = self.settings
        self.settings = usual.model_copy(update={"JOB_LEASE_S": seconds})
        try:
            yield
        finally:
            self.settings = usual


@pytest.fixture(scope="module", autouse=True)
def sweeper(sessions: SessionFactory, dispatcher: Dispatcher, fault_settings: Settings) -> Iterator[Sweeper]:
    """Sweeps twice a second, as the API does every SWEEP_INTERVAL_S."""
    done, state = threading.Event(), Sweeper(fault_settings)

    def sweep() -> None:
        while not done.wait(0.5):
            sweep_once(sessions, dispatcher, state.settings)

    thread = threading.Thread(target=sweep, name="sweeper", daemon=True)
    thread.start()
    yield state
    done.set()
    thread.join()


@pytest.fixture(scope="module")
def shared_worker(fault_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with started_worker(fault_settings, SHARED, tmp_path_factory.mktemp("shared") / "worker.log") as worker:
        yield worker


def message(job_id: UUID, model: str) -> JobMessage:
    """The message of a caption job of `model`, to send again as a broker re-delivering it would."""
    return JobMessage(job_id, queue_for_model(model), JobKind.CAPTION, model)


def submit_unchecked(ctx: Submission, model: str, kind: JobKind, job_input: dict[str, Any]) -> UUID:
    """A job written straight into its table and sent, past submission's checks (a row an older API wrote)."""
    with session_scope(ctx.sessions) as session:
        job = add_job(session, tenant=TENANT, kind=kind, model=model, queue=queue_for_model(model), input=job_input)
    ctx.dispatcher.send(JobMessage.of(job))
    return job.id


def submit(ctx: Submission, model: str, image_id: UUID, kind: str = "caption", **job_input: Any) -> UUID:
    if kind == "caption":
        job_input.setdefault("decoding", QUICK)
    # Not from the result cache: every job must be run by a worker through the fault.
    body = {"kind": kind, "model": model, "input": {"image_id": str(image_id)} | job_input, "cache": False}
    return submit_job(ctx, TENANT, JOB_CREATE_ADAPTER.validate_python(body)).job.id


def read(sessions: SessionFactory, ids: list[UUID]) -> list[Job]:
    with sessions() as session:
        rows = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
    return [rows[job_id] for job_id in ids]


def wait_until(sessions: SessionFactory, job_id: UUID, ready: Any, timeout_s: float = 60) -> Job:
    deadline = time.monotonic() + timeout_s
    while True:
        [job] = read(sessions, [job_id])
        if ready(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stayed {job.status} (attempt {job.attempts})")
        time.sleep(0.02)


def wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def wait_all_terminal(sessions: SessionFactory, ids: list[UUID], timeout_s: float) -> list[Job]:
    """The jobs once all are terminal, or as they are at the deadline."""
    deadline = time.monotonic() + timeout_s
    jobs = read(sessions, ids)
    while not all(job.status.is_terminal for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.1)
        jobs = read(sessions, ids)
    return jobs


def wait_running(sessions: SessionFactory, job_id: UUID, attempt: int = 1) -> Job:
    """The job once a worker has claimed it for run number `attempt`."""
    return wait_until(sessions, job_id, lambda job: job.status is JobStatus.RUNNING and job.attempts >= attempt)


def settle(
    sessions: SessionFactory,
    ids: list[UUID],
    *,
    attempts: int = 1,
    status: JobStatus = JobStatus.SUCCEEDED,
    code: str | None = None,
    timeout_s: float = 180,
) -> list[Job]:
    """Every job once terminal, tallied (lost: not in the expected end state; duplicated: run more
    often than the faults explain), then checked."""
    jobs = wait_all_terminal(sessions, ids, timeout_s)
    tally.jobs(len(jobs))
    tally.lost(sum((job.status, job.error_code) != (status, code) for job in jobs))
    tally.duplicated(sum(job.attempts > attempts for job in jobs))
    for job in jobs:
        assert (job.status, job.error_code, job.attempts) == (status, code, attempts), job.error_message
        assert (job.result is not None) == (status is JobStatus.SUCCEEDED) and job.finished_at
    return jobs


def rss_mb(process: psutil.Process) -> float:
    return float(process.memory_info().rss) / 2**20


def megabytes(values: list[float]) -> str:
    return ", ".join(f"{value:.0f}" for value in values) + " MB"


def test_duplicate_messages_never_run_a_job_twice(
    ctx: Submission, dispatcher: Dispatcher, shared_worker: Worker, image_id: UUID
) -> None:
    no_ops_before = shared_worker.log.read_text().count(": nothing queued")
    job_id = submit(ctx, SHARED, image_id)
    dispatcher.send(message(job_id, SHARED))  # the broker delivers the same message twice more
    dispatcher.send(message(job_id, SHARED))
    tally.fault("duplicate_message", 2)
    [done] = settle(ctx.sessions, [job_id])
    dispatcher.send(message(job_id, SHARED))  # and once more after the job finished
    tally.fault("duplicate_message")
    marker = submit(ctx, SHARED, image_id)  # behind the duplicates on the one queue: once it ran, they did
    settle(ctx.sessions, [marker])
    [again] = read(ctx.sessions, [job_id])
    tally.duplicated((again.attempts, again.finished_at) != (1, done.finished_at))
    assert (again.status, again.attempts) == (JobStatus.SUCCEEDED, 1)
    assert (again.result, again.finished_at) == (done.result, done.finished_at)

    # Five messages, two jobs: each job was claimed by one message, and the three others find nothing queued
    # (the marker may be claimed by the last duplicate, its own message then coming last).
    def no_ops() -> int:
        return shared_worker.log.read_text().count(": nothing queued") - no_ops_before

    assert wait_for(lambda: no_ops() >= 3, timeout_s=30) and no_ops() == 3


def test_a_child_killed_mid_job_runs_it_again_once(ctx: Submission, shared_worker: Worker, image_id: UUID) -> None:
    job_id = submit(ctx, SHARED, image_id, decoding=SLOW)
    wait_running(ctx.sessions, job_id)
    child = shared_worker.child()
    child.send_signal(signal.SIGKILL)  # as the OOM killer would
    tally.fault("sigkill_child")
    # Celery puts the message back (reject_on_worker_lost) and the sweeper re-queues the job once its
    # heartbeat is a lease old, sending a message too: the new child claims the job with whichever
    # comes first after the re-queue, and the other finds it claimed and is dropped.
    [done] = settle(ctx.sessions, [job_id], attempts=2)
    assert done.result and done.result["captions"]
    assert shared_worker.child().pid != child.pid and shared_worker.process.poll() is None
    # The new child is forked with torch and transformers already imported: the main process imports
    # them once it is ready, and a fork waits for that import to end (worker/app.py), so a replacement
    # loads only its model.
    assert "libtorch_cpu" in Path(f"/proc/{shared_worker.process.pid}/maps").read_text()


def test_a_worker_killed_outright_mid_job_is_run_by_the_next_one(
    ctx: Submission, fault_settings: Settings, image_id: UUID, tmp_path: Path
) -> None:
    with started_worker(fault_settings, KILLED, tmp_path / "first.log") as first:
        job_id = submit(ctx, KILLED, image_id, decoding=SLOW)
        wait_running(ctx.sessions, job_id)
        child = first.child()
        first.process.send_signal(signal.SIGKILL)  # the worker's main process, as `docker kill` does
        tally.fault("sigkill_worker")
        first.process.wait(timeout=60)
        # Its child dies with it (billiard's parent-death signal): no orphan goes on running the job.
        assert wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE)
    with started_worker(fault_settings, KILLED, tmp_path / "second.log"):
        [done] = settle(ctx.sessions, [job_id], attempts=2)
    assert done.result and done.result["captions"]


@contextmanager
def killing_each_run(sessions: SessionFactory, worker: Worker, job_id: UUID) -> Iterator[list[int]]:
    """SIGKILL the worker's child whenever `job_id` starts a run: a job that kills its worker every
    time, injected from outside. Yields the pids killed so far."""
    killed: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            [job] = read(sessions, [job_id])
            if job.status.is_terminal:
                return
            if job.status is JobStatus.RUNNING and job.attempts > len(killed):
                child = worker.child()  # concurrency 1: the child running it
                child.send_signal(signal.SIGKILL)
                killed.append(child.pid)
                tally.fault("sigkill_poison")

    thread = threading.Thread(target=watch, name="poison", daemon=True)
    thread.start()
    try:
        yield killed
    finally:
        done.set()
        thread.join()


def test_a_job_that_kills_its_worker_every_time_fails_after_max_attempts(
    ctx: Submission, dispatcher: Dispatcher, shared_worker: Worker, image_id: UUID
) -> None:
    poison = submit(ctx, SHARED, image_id, decoding=SLOW)
    max_attempts = ctx.settings.MAX_ATTEMPTS
    with killing_each_run(ctx.sessions, shared_worker, poison) as killed:
        others = [submit(ctx, SHARED, image_id) for _ in range(3)]  # queued behind it meanwhile
        settle(ctx.sessions, [poison], status=JobStatus.FAILED, code="worker_lost", attempts=max_attempts)
        settle(ctx.sessions, others)
    assert len(killed) == max_attempts
    # No loop: each run was a claim of a queued job, and only the sweeper queues a lost job again,
    # until MAX_ATTEMPTS; Celery's own re-deliveries of the killed runs' messages claimed nothing
    # more, and a message arriving now finds the job failed.
    dispatcher.send(message(poison, SHARED))
    settle(ctx.sessions, [submit(ctx, SHARED, image_id)])
    [after] = read(ctx.sessions, [poison])
    assert (after.status, after.attempts) == (JobStatus.FAILED, max_attempts)
    assert shared_worker.process.poll() is None


def frozen_mid_job(ctx: Submission, worker: Worker, image_id: UUID) -> tuple[UUID, psutil.Process]:
    """A job caught in its model work, its process frozen (SIGSTOP) until the test lets it go: a job
    that runs past any time limit, however fast or loaded the machine. Returns the job and its process.

    It is frozen only once past its database reads: a soft time limit that lands in the middle of a
    query is, for now, taken for a lost connection and retried (worker/db_retry.py), and the job
    would run on to the hard limit.
    """
    for _ in range(3):
        job_id = submit(ctx, TIMED, image_id, decoding=SLOW)
        wait_running(ctx.sessions, job_id)
        process = worker.child()
        wait_for_cpu_work(process, MODEL_WORK_CPU_S)
        process.send_signal(signal.SIGSTOP)
        running = read(ctx.sessions, [job_id])[0].status is JobStatus.RUNNING
        if running and not in_a_transaction(process, ctx.sessions):  # mid-write, it would hold locks
            return job_id, process
        process.send_signal(signal.SIGCONT)  # it finished, or was mid-write, when frozen: try another
    raise AssertionError("three slow jobs in a row were finished or mid-write when frozen")


def soft_limit_signalled(process: psutil.Process) -> bool:
    """Whether the soft time limit's signal (SIGUSR1, from the worker's main process) waits in `process`."""
    pending = 0
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            pending |= int(line.split()[1], 16)
    return bool(pending & 1 << (signal.SIGUSR1 - 1))


def test_jobs_over_their_time_limits_fail_and_the_worker_recovers(
    ctx: Submission, fault_settings: Settings, large_image_id: UUID, sweeper: Sweeper, tmp_path: Path
) -> None:
    image_id = large_image_id
    # Limits far above what an ordinary job takes, even on a loaded machine: the jobs meant to run
    # past them are frozen (SIGSTOP), so they run for ever. A frozen job beats no heartbeat either,
    # so meanwhile the sweeper's lease outlasts the hard limit (else it would take the job for lost).
    limits = fault_settings.model_copy(
        update={"TASK_SOFT_TIME_LIMIT_S": SOFT_LIMIT_S, "TASK_HARD_TIME_LIMIT_S": HARD_LIMIT_S}
    )
    with sweeper.lease(10 * HARD_LIMIT_S), started_worker(limits, TIMED, tmp_path / "worker.log") as worker:
        settle(ctx.sessions, [submit(ctx, TIMED, image_id) for _ in range(3)])  # warm-up: the image's memory
        child = worker.child()
        baseline, after_timeout, after_next = rss_mb(child), [], []

        # Soft limit: the job's own process stops it, records the failure and takes the next job.
        for _ in range(3):
            soft, frozen = frozen_mid_job(ctx, worker, image_id)
            tally.fault("soft_time_limit")
            assert wait_for(partial(soft_limit_signalled, frozen), timeout_s=10 * SOFT_LIMIT_S)
            frozen.send_signal(signal.SIGCONT)  # it wakes to the signal, in the middle of its model work
            [failed] = settle(ctx.sessions, [soft], status=JobStatus.FAILED, code="time_limit_exceeded")
            assert "soft time limit" in str(failed.error_message)
            after_timeout.append(rss_mb(child))
            settle(ctx.sessions, [submit(ctx, TIMED, image_id)])
            after_next.append(rss_mb(child))
        assert worker.child().pid == child.pid

        # Hard limit: a job deaf to the soft limit (here its process stays frozen, as in a native call
        # that never returns) is killed by the worker's main process, which records the failure.
        hard, _ = frozen_mid_job(ctx, worker, image_id)
        tally.fault("hard_time_limit")
        [failed] = settle(ctx.sessions, [hard], status=JobStatus.FAILED, code="time_limit_exceeded")
        assert "hard time limit" in str(failed.error_message)
        settle(ctx.sessions, [submit(ctx, TIMED, image_id)])
        assert worker.child().pid != child.pid
    tally.note(
        f"time limits: job process RSS {baseline:.0f} MB; after each of 3 soft timeouts {megabytes(after_timeout)}, "
        f"after the job that followed each {megabytes(after_next)}"
    )
    # A timed-out job kept alive (its frames, its image: 3000x3000 decodes to 69 MB here) would add
    # at least that with every timeout; across three, RSS stayed within 6 MB. The allocator keeps
    # freed image memory as slack, so one sample may sit up to +81 MB over the warm baseline (seen
    # once); a job's whole working set is +126 MB at its peak.
    assert after_next[-1] - after_next[0] < 32
    assert after_next[0] - baseline < 120


def test_a_worker_shut_down_mid_job_finishes_it_and_hands_back_the_rest(
    ctx: Submission, fault_settings: Settings, image_id: UUID, tmp_path: Path
) -> None:
    with started_worker(fault_settings, STOPPED, tmp_path / "first.log") as first:
        running = submit(ctx, STOPPED, image_id, decoding=SLOW)
        waiting = submit(ctx, STOPPED, image_id)
        wait_running(ctx.sessions, running)
        first.process.send_signal(signal.SIGTERM)  # as `docker stop` or a deploy does
        tally.fault("sigterm_worker")
        assert first.process.wait(timeout=180) == 0
    # Warm shutdown: the running job was finished; the next one was left queued in Redis, unclaimed.
    finished, handed_back = read(ctx.sessions, [running, waiting])
    assert (finished.status, finished.attempts) == (JobStatus.SUCCEEDED, 1)
    assert (handed_back.status, handed_back.attempts) == (JobStatus.QUEUED, 0)
    with started_worker(fault_settings, STOPPED, tmp_path / "second.log"):
        settle(ctx.sessions, [running, waiting])


def test_500_failing_jobs_leave_the_worker_memory_where_it_was(
    ctx: Submission, shared_worker: Worker, image_id: UUID
) -> None:
    def run_failing(count: int) -> None:
        # Matching needs a retrieval model: each job fails in the worker with a typed error. (Submission
        # refuses such jobs; these rows are written past it, as an older API would have.)
        match = {"image_id": str(image_id), "texts": ["a red square", "a dog"]}
        ids = [submit_unchecked(ctx, SHARED, JobKind.MATCH, match) for _ in range(count)]
        settle(ctx.sessions, ids, status=JobStatus.FAILED, code="unsupported_operation")

    run_failing(20)  # warm-up: allocator arenas, caches, the first decodes
    child, main = shared_worker.child(), psutil.Process(shared_worker.process.pid)
    before = rss_mb(child), rss_mb(main)
    started = time.monotonic()
    for _ in range(10):  # in batches, so no backlog builds up for a sweeper to re-send
        run_failing(50)
    tally.fault("500_failing_jobs")
    after = rss_mb(child), rss_mb(main)
    tally.note(
        f"500 failing jobs in {time.monotonic() - started:.0f} s: RSS of the job process {before[0]:.0f} -> "
        f"{after[0]:.0f} MB, of the worker's main process {before[1]:.0f} -> {after[1]:.0f} MB"
    )
    assert shared_worker.child().pid == child.pid
    # 16 MB over 500 jobs is 32 KB a job: about what one kept traceback with its frames, session or
    # thread costs, and far below one kept image (1 MB: Pillow holds RGB in 4 bytes a pixel). Once
    # warmed up, the allocator's own slack stayed within 1-2 MB in our runs.
    assert after[0] - before[0] < 16 and after[1] - before[1] < 16


def test_a_result_postgres_refuses_fails_its_job_at_once(
    ctx: Submission, fault_settings: Settings, image_id: UUID, tmp_path: Path
) -> None:
    """A NaN embedding is not JSON Postgres takes: the job fails `result_not_storable` on its first
    attempt (it used to stay running until its lease ran out, then run again and fail the same way),
    and the worker goes on to the next job."""
    embed = {"image_id": str(image_id), "mode": "image"}
    with started_worker(fault_settings, POISONED, tmp_path / "worker.log"):
        bad = submit_unchecked(ctx, POISONED, JobKind.EMBED, embed)
        tally.fault("unstorable_result")
        [failed] = settle(ctx.sessions, [bad], status=JobStatus.FAILED, code="result_not_storable")
        assert "could not be stored" in str(failed.error_message)
        text = {"mode": "text", "text": "a red square"}  # the text tower has no NaN in it
        [after] = settle(ctx.sessions, [submit_unchecked(ctx, POISONED, JobKind.EMBED, text)])
        assert after.result and after.result["dim"] > 0


def test_a_worker_frozen_past_its_lease_cannot_overwrite_the_next_run(
    ctx: Submission, fault_settings: Settings, image_id: UUID, tmp_path: Path
) -> None:
    """The attempt token: the frozen run's job is run again by another worker; when the frozen one
    thaws and finishes, its result and its heartbeats name an attempt that is over, and change nothing."""
    with started_worker(fault_settings, FROZEN, tmp_path / "frozen.log") as frozen:
        job_id = submit(ctx, FROZEN, image_id, decoding=SLOW)
        wait_running(ctx.sessions, job_id)
        frozen_processes = [psutil.Process(frozen.process.pid), frozen.child()]
        for process in frozen_processes:
            process.send_signal(signal.SIGSTOP)  # as a VM paused, or a process swapped out for minutes
        tally.fault("frozen_worker")
        try:
            wait_until(ctx.sessions, job_id, lambda job: job.status is JobStatus.QUEUED)  # its lease ran out
            with started_worker(fault_settings, FROZEN, tmp_path / "second.log"):
                [done] = settle(ctx.sessions, [job_id], attempts=2)
        finally:
            for process in frozen_processes:
                process.send_signal(signal.SIGCONT)
        wait_for_log_line(frozen.log, f"job {job_id}: outcome dropped: it no longer runs as attempt 1")
    [after] = read(ctx.sessions, [job_id])
    assert (after.status, after.attempts, after.result, after.finished_at) == (
        JobStatus.SUCCEEDED, 2, done.result, done.finished_at,
    )  # fmt: skip


def wait_for_log_line(log: Path, needle: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {needle!r} in {log}"
        time.sleep(0.1)
