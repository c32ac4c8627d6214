"""Faults in the servers the system stands on, on real processes: Redis restarted with jobs queued,
Redis losing all its data, PostgreSQL restarted while a job runs. Every job must still end
`succeeded`, run once (attempts 1), read straight from Postgres.

The API and a worker run against a private Redis and a private PostgreSQL that this module owns
(tests/support/private_services.py), so stopping them disturbs no other test. The API sweeps every
second and re-sends jobs queued over two seconds; a running job's lease is fifteen seconds, and
Postgres ends a worker's session idle in a transaction after one. To keep messages waiting in
Redis, the worker's job-running child is paused (SIGSTOP) while its main process, which holds the
broker connection, lives through the fault.
"""

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, func, select, text

from jobs.db import SessionFactory, create_session_factory, session_scope
from jobs.models import Job
from jobs.repository import get_job
from jobs.schema_migrations import upgrade
from jobs.settings import Settings
from tests.support.auth import TENANT, bearer, new_key
from tests.support.db import in_a_transaction
from tests.support.fault_tally import tally
from tests.support.images import png_bytes
from tests.support.private_services import PrivatePostgres, PrivateRedis, private_postgres, private_redis
from tests.support.processes import running_worker, wait_for_cpu_work, wait_for_log
from tests.support.services import make_settings
from tests.support.waiting import wait_for_value, wait_terminal, wait_until
from tests.system.conftest import serving

pytestmark = pytest.mark.slow

QUEUE = "infer.tiny-opt"
QUICK = {"num_beams": 1, "max_new_tokens": 3}
# The jobs whose result the test's trigger writes slowly (`slowed_result_writes`), and no others.
SLOWED = {"num_beams": 1, "max_new_tokens": 4}
# The worker's DB_IDLE_IN_TRANSACTION_TIMEOUT_S: far under the lease, so a worker frozen mid-write
# has its session ended long before its job could be taken for lost.
WORKER_IDLE_TIMEOUT_S = 1.0
# About a second of model work on a 2-core CPU: long enough to be caught running and paused.
SLOW = {"num_beams": 16, "max_new_tokens": 120, "min_new_tokens": 120}


@dataclass
class Stack:
    """The private servers, and the API and worker running on them."""

    redis: PrivateRedis
    postgres: PrivatePostgres
    settings: Settings
    sessions: SessionFactory
    http: httpx.Client
    worker: subprocess.Popen[bytes]
    worker_log: Path
    image_id: str


@pytest.fixture(scope="module")
def stack(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("private-services")
    with private_redis(directory) as broker, private_postgres() as database:
        overrides = {"REDIS_URL": broker.url, "SWEEP_INTERVAL_S": 1.0, "QUEUED_TOO_LONG_S": 2.0, "JOB_LEASE_S": 15.0}
        settings = make_settings(database.url(), "", models_dir, **overrides)
        worker_settings = settings.model_copy(update={"DB_IDLE_IN_TRANSACTION_TIMEOUT_S": WORKER_IDLE_TIMEOUT_S})
        upgrade(settings)
        # The test's own reader pings before each use, so a restart costs it nothing (the API and the
        # worker don't ping: their first statement after a restart fails and empties their pools).
        engine = create_engine(settings.sqlalchemy_url, pool_pre_ping=True)
        sessions = create_session_factory(engine)
        worker_log = directory / "worker.log"
        with (
            serving("api", settings, tmp_path_factory) as api_url,
            running_worker(worker_settings, worker_log) as worker,
            httpx.Client(base_url=api_url, timeout=30, headers=bearer(new_key(sessions, TENANT))) as http,
        ):
            uploaded = http.post("/v1/images", files={"file": ("x.png", png_bytes())})
            assert uploaded.status_code == 201, uploaded.text
            yield Stack(broker, database, settings, sessions, http, worker, worker_log, uploaded.json()["id"])
        engine.dispose()


def job_body(stack: Stack, decoding: dict[str, int]) -> dict[str, Any]:
    # Not answered from the result cache: every job must be run by the worker through the fault.
    job_input = {"image_id": stack.image_id, "decoding": decoding}
    return {"kind": "caption", "model": "tiny-opt", "input": job_input, "cache": False}


def submit(stack: Stack, count: int, decoding: dict[str, int] = QUICK) -> list[UUID]:
    """`count` caption jobs, each accepted (202)."""
    ids = []
    for _ in range(count):
        response = stack.http.post("/v1/jobs", json=job_body(stack, decoding))
        assert response.status_code == 202, response.text
        ids.append(UUID(response.json()["id"]))
    return ids


def outcomes(stack: Stack, ids: list[UUID]) -> list[Job]:
    """Every job once terminal (or at the deadline), tallied: lost unless succeeded, duplicated if run twice."""
    jobs = [wait_terminal(stack.sessions, job_id, timeout_s=180) for job_id in ids]
    tally.jobs(len(jobs))
    tally.lost(sum(job.status != "succeeded" for job in jobs))
    tally.duplicated(sum(job.attempts > 1 for job in jobs))
    return jobs


def assert_each_succeeded_once(jobs: list[Job]) -> None:
    for job in jobs:
        assert (job.status, job.attempts) == ("succeeded", 1), (job.id, job.status, job.attempts, job.error_code)
        assert job.result and job.result["captions"], job.result


def status_of(stack: Stack, job_id: UUID) -> str:
    with stack.sessions() as session:
        return get_job(session, job_id).status.value


def job_count(stack: Stack) -> int:
    with stack.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def waiting_in_redis(stack: Stack) -> int:
    client = stack.redis.client()
    try:
        return int(client.llen(QUEUE))
    finally:
        client.close()


@contextmanager
def paused_pool(worker: subprocess.Popen[bytes]) -> Iterator[None]:
    """The worker's job-running child stopped (SIGSTOP) for the block, then resumed (SIGCONT)."""
    children = psutil.Process(worker.pid).children(recursive=True)
    assert children, "the worker has no pool process"
    for child in children:
        os.kill(child.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for child in children:
            os.kill(child.pid, signal.SIGCONT)


def test_redis_restarted_with_jobs_queued(stack: Stack) -> None:
    with paused_pool(stack.worker):
        queued = submit(stack, 4)
        assert waiting_in_redis(stack) >= 3  # one message may already be with the paused worker
        stack.redis.stop()
        tally.fault("redis_restart")
        during = submit(stack, 2)  # accepted meanwhile: the row is committed, the sweeper sends it later
        stack.redis.start()  # empty: it kept nothing on disk
    jobs = outcomes(stack, queued + during)
    assert_each_succeeded_once(jobs)
    assert stack.worker.poll() is None, "the worker died with the broker"
    assert_each_succeeded_once(outcomes(stack, submit(stack, 1)))  # and the worker takes new messages


def test_redis_losing_all_its_data(stack: Stack) -> None:
    with paused_pool(stack.worker):
        queued = submit(stack, 4)
        assert waiting_in_redis(stack) >= 3
        client = stack.redis.client()
        client.flushall()
        client.close()
        tally.fault("redis_flushall")
    jobs = outcomes(stack, queued + submit(stack, 2))  # messages sent after the wipe are delivered too
    assert_each_succeeded_once(jobs)


def test_postgres_restarted_while_a_job_runs(stack: Stack) -> None:
    """The API answers 503 meanwhile and recovers by itself; the job that finished its model work
    while Postgres was down keeps its result, and the outage outlasting a lease runs nothing twice."""
    jobs_before = job_count(stack)
    with caught_running(stack) as (running, earlier):
        queued = submit(stack, 2)
        stack.postgres.stop()
        down_since = time.monotonic()
        tally.fault("postgres_restart")
        assert_database_unavailable(stack, running)
    # The model work finishes while Postgres is down; the worker keeps trying to record the result.
    wait_for_log(stack.worker_log, f"recording job {running}'s result: database unreachable", stack.worker, 600)
    # Down for longer than a lease, so every heartbeat is stale when it is back.
    time.sleep(max(0.0, stack.settings.JOB_LEASE_S + 1 - (time.monotonic() - down_since)))
    stack.postgres.start()
    wait_until(lambda: stack.http.get("/readyz").status_code == 200, "the API ready again", timeout_s=120)
    jobs = outcomes(stack, [running, *queued, *submit(stack, 1), *earlier])
    assert_each_succeeded_once(jobs)
    with stack.sessions() as session:
        restarted_at = session.scalar(select(func.pg_postmaster_start_time()))
    assert jobs[0].finished_at > restarted_at  # its result was written by the worker's retries
    assert job_count(stack) == jobs_before + 4 + len(earlier)  # the submission refused with 503 left no row
    assert stack.worker.poll() is None


@contextmanager
def caught_running(stack: Stack) -> Iterator[tuple[UUID, list[UUID]]]:
    """A slow job caught in its model work with the worker's pool paused (SIGSTOP) for the block.

    However loaded the machine, a slow job can finish between being seen running and the pause, so
    a job that did is let go and another is tried; so is one paused inside a transaction (recording
    its result, or a heartbeat), whose locks would hold up the API's writes. Yields the job held,
    and those that got away (they are ordinary finished jobs, for the caller to count).
    """
    earlier: list[UUID] = []
    for _ in range(3):
        job_id = slow_job_in_its_model_work(stack)
        with paused_pool(stack.worker):
            [pool] = psutil.Process(stack.worker.pid).children()
            if status_of(stack, job_id) == "running" and not in_a_transaction(pool, stack.sessions):
                yield job_id, earlier
                return
        earlier.append(job_id)  # it finished, or was mid-write, when paused: try another
    raise AssertionError("three slow jobs in a row were finished or mid-write when the worker was paused")


def slow_job_in_its_model_work(stack: Stack) -> UUID:
    """A slow job submitted, seen claimed, and past reading its image (or already done with it)."""
    [job_id] = submit(stack, 1, SLOW)
    wait_until(lambda: status_of(stack, job_id) != "queued", "the slow job claimed", interval_s=0.02)
    [pool] = psutil.Process(stack.worker.pid).children()
    wait_for_cpu_work(pool, 0.1, unless=lambda: status_of(stack, job_id) != "running")
    return job_id


def assert_database_unavailable(stack: Stack, job_id: UUID) -> None:
    """Reads, submissions and the readiness check, over real HTTP, while Postgres is down."""
    assert stack.http.get("/readyz").status_code == 503
    for response in (
        stack.http.get(f"/v1/jobs/{job_id}"),
        stack.http.post("/v1/jobs", json=job_body(stack, QUICK)),
    ):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "database_unavailable"
        assert int(response.headers["Retry-After"]) > 0


def test_a_worker_frozen_mid_write_holds_its_tenant_up_only_until_postgres_ends_its_session(stack: Stack) -> None:
    """A worker frozen (SIGSTOP, as a paused VM) between writing a result and committing it holds the
    job's row and its tenant's counter, which every submission of the tenant takes. Postgres ends the
    frozen session after the worker's DB_IDLE_IN_TRANSACTION_TIMEOUT_S, while it is still frozen; a
    submission sent meanwhile is accepted; thawed, the worker writes its result again, on a new
    connection, and the job succeeds once."""
    with slowed_result_writes(stack), ThreadPoolExecutor(max_workers=1) as pool:
        job_id, backend, child = frozen_in_its_result_write(stack)
        tally.fault("frozen_mid_write")
        try:
            submitting = pool.submit(submit, stack, 1)
            wait_until(lambda: not backend_alive(stack, backend), "Postgres ending the frozen session", timeout_s=60)
        finally:
            os.kill(child.pid, signal.SIGCONT)
        queued = submitting.result(timeout=60)
    jobs = outcomes(stack, [job_id, *queued])
    assert_each_succeeded_once(jobs)
    wait_for_log(stack.worker_log, f"recording job {job_id}'s result: database unreachable", stack.worker, 60)
    assert stack.worker.poll() is None


@contextmanager
def slowed_result_writes(stack: Stack) -> Iterator[None]:
    """Each write of a SLOWED job's result sleeps 0.3 s inside its transaction, a trigger in this
    module's own database: long enough to catch the worker there, however fast the machine."""
    with session_scope(stack.sessions) as session:
        session.execute(text(_SLOW_RESULT_FUNCTION))
        session.execute(text(_SLOW_RESULT_TRIGGER))
    try:
        yield
    finally:
        with session_scope(stack.sessions) as session:
            session.execute(text("DROP TRIGGER test_slow_result ON jobs"))
            session.execute(text("DROP FUNCTION test_slow_result()"))


_SLOW_RESULT_FUNCTION = f"""
CREATE FUNCTION test_slow_result() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'succeeded' AND NEW.input -> 'decoding' ->> 'max_new_tokens' = '{SLOWED["max_new_tokens"]}' THEN
        PERFORM pg_sleep(0.3);
    END IF;
    RETURN NEW;
END $$
"""
_SLOW_RESULT_TRIGGER = (
    "CREATE TRIGGER test_slow_result BEFORE UPDATE OF status ON jobs FOR EACH ROW EXECUTE FUNCTION test_slow_result()"
)


def frozen_in_its_result_write(stack: Stack) -> tuple[UUID, int, psutil.Process]:
    """A SLOWED job whose worker's child is frozen (SIGSTOP) inside the transaction that writes its
    result; returns the job, the Postgres backend of that transaction, and the frozen process.

    The child is frozen once its backend is seen sleeping in the trigger; one that committed before
    the signal landed (a loaded machine may delay the test that long) is let go and another tried."""
    for _ in range(3):
        [job_id] = submit(stack, 1, SLOWED)
        [child] = psutil.Process(stack.worker.pid).children()
        backend = wait_for_value(partial(sleeping_backend, stack, child), "the result write", timeout_s=120)
        os.kill(child.pid, signal.SIGSTOP)
        if in_a_transaction(child, stack.sessions) and status_of(stack, job_id) == "running":
            return job_id, backend, child
        os.kill(child.pid, signal.SIGCONT)
    raise AssertionError("three result writes in a row committed before the worker could be frozen")


def sleeping_backend(stack: Stack, process: psutil.Process) -> int | None:
    """The Postgres backend of `process` that is sleeping in a statement (the trigger's pg_sleep)."""
    ports = [c.laddr.port for c in process.net_connections(kind="tcp") if c.raddr]
    with stack.sessions() as session:
        query = text("SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND client_port = ANY(:ports)")
        return session.scalar(query, {"ports": ports}) if ports else None


def backend_alive(stack: Stack, backend: int) -> bool:
    with stack.sessions() as session:
        return bool(session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": backend}))
