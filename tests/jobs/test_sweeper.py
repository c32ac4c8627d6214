"""The outbox sweep: a job whose message was lost is sent again; a healthy one is left alone."""

from datetime import timedelta

import pytest
from sqlalchemy import update

from jobs.broker import Dispatcher
from jobs.db import SessionFactory, session_scope
from jobs.kinds import JobKind
from jobs.models import Job
from jobs.repository import add_job, claim_job, get_job
from jobs.settings import Settings
from jobs.status import JobStatus
from jobs.sweeper import sweep_once
from tests.support.auth import TENANT
from tests.support.broker import drain, waiting_job_ids

pytestmark = pytest.mark.usefixtures("empty_tables")
QUEUE = "infer.tiny-opt"


def unsent_job(sessions: SessionFactory, age: timedelta) -> Job:
    """A job committed `age` ago whose message never reached the broker."""
    with session_scope(sessions) as session:
        job = add_job(session, tenant=TENANT, kind=JobKind.CAPTION, model="tiny-opt", queue=QUEUE, input={})
        sent_long_ago = {"created_at": Job.created_at - age, "dispatched_at": Job.dispatched_at - age}
        session.execute(update(Job).where(Job.id == job.id).values(**sent_long_ago))
        return job


def test_lost_message_is_sent_again(
    sessions: SessionFactory, dispatcher: Dispatcher, settings: Settings, key_prefix: str
) -> None:
    drain(key_prefix, QUEUE)
    lost = unsent_job(sessions, age=timedelta(minutes=10))
    fresh = unsent_job(sessions, age=timedelta(0))
    report = sweep_once(sessions, dispatcher, settings)
    assert report.resent == 1
    assert waiting_job_ids(key_prefix, QUEUE) == [str(lost.id)]
    assert sweep_once(sessions, dispatcher, settings).resent == 0  # just sent: not overdue any more
    with session_scope(sessions) as session:
        assert get_job(session, fresh.id).dispatch_count == 1  # counted as sent when it was committed


def test_job_of_a_dead_worker_is_queued_and_sent_again(
    sessions: SessionFactory, dispatcher: Dispatcher, settings: Settings, key_prefix: str
) -> None:
    drain(key_prefix, QUEUE)
    job = unsent_job(sessions, age=timedelta(0))
    with session_scope(sessions) as session:
        claim_job(session, job.id)
        # Its worker stopped beating longer ago than the lease.
        silent = Job.heartbeat_at - timedelta(seconds=settings.JOB_LEASE_S + 5)
        session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=silent))
    # The API holds recovery back for a lease after Postgres was unreachable: no beat could be written.
    assert sweep_once(sessions, dispatcher, settings, recover_lost=False).recovered == 0
    report = sweep_once(sessions, dispatcher, settings)
    assert (report.recovered, report.resent) == (1, 1)
    with session_scope(sessions) as session:
        assert get_job(session, job.id).status is JobStatus.QUEUED
    assert waiting_job_ids(key_prefix, QUEUE) == [str(job.id)]
