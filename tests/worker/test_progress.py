"""A running job's heartbeats and progress live through a database outage (sessions that first fail
to connect, then a real Postgres): a missed beat must not stop the beating, a missed progress write
must not fail the job."""

from collections.abc import Iterator

import pytest

from jobs.db import SessionFactory, session_scope
from jobs.kinds import JobKind
from jobs.models import Job
from jobs.outputs import EvaluateProgressDetail
from jobs.repository import add_job, claim_job, get_job
from tests.support.auth import TENANT
from tests.support.flaky_sessions import FlakySessions
from tests.support.waiting import wait_until
from worker.progress import JobProgress, heartbeating


@pytest.fixture
def flaky(sessions: SessionFactory) -> Iterator[FlakySessions]:
    made = FlakySessions(sessions, failures=3)
    yield made
    made.close()


@pytest.fixture
def running_job(sessions: SessionFactory) -> Job:
    """A claimed job with a fresh heartbeat (a later beat is a later transaction, so a later time).

    Not backdated: a session-wide API's sweeper would take a job with an old heartbeat for lost and
    a session-wide worker would claim it, beating for it, which made these tests pass or fail by timing.
    """
    with session_scope(sessions) as session:
        job = add_job(session, tenant=TENANT, kind=JobKind.TRAIN, model="tiny-opt", queue="train", input={})
        claimed = claim_job(session, job.id)
    assert claimed is not None
    return claimed


def last_beat(sessions: SessionFactory, job: Job) -> float:
    with sessions() as session:
        return get_job(session, job.id).heartbeat_at.timestamp()


def test_heartbeats_go_on_after_failed_ones(flaky: FlakySessions, sessions: SessionFactory, running_job: Job) -> None:
    before = last_beat(sessions, running_job)
    with heartbeating([running_job.attempt], flaky, interval_s=0.05):
        wait_until(lambda: last_beat(sessions, running_job) > before, "a heartbeat after three failed ones", 60)
    assert flaky.calls > flaky.failures


def test_progress_is_skipped_while_the_database_is_unreachable(
    flaky: FlakySessions, sessions: SessionFactory, running_job: Job
) -> None:
    progress = JobProgress(running_job.attempt, flaky, min_interval_s=0)
    for step in range(flaky.failures):
        progress.report(step / 10, evaluated(step))  # nothing written, and the job goes on
    assert not progress.should_stop()
    progress.report(0.5, evaluated(5))
    with sessions() as session:
        assert get_job(session, running_job.id).progress_detail == {"records_done": 5, "records_total": 10}


def evaluated(done: int) -> EvaluateProgressDetail:
    return EvaluateProgressDetail(records_done=done, records_total=10)
