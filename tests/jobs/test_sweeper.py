"""The outbox sweep: a job whose message was lost is sent again; a healthy one is left alone."""

from datetime import timedelta
from uuid import UUID

import pytest
from sqlalchemy import select, update

from jobs.broker import Dispatcher, JobMessage
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


class _Watching(Dispatcher):
    """Sends as the real one does, first noting whether a worker's claim could take the job now (its
    row not locked), and failing the sends of `failing`."""

    def __init__(self, real: Dispatcher, sessions: SessionFactory, failing: set[UUID]) -> None:
        self._real, self._sessions, self._failing = real, sessions, failing
        self.claimable: dict[UUID, bool] = {}

    def send(self, message: JobMessage) -> None:
        with session_scope(self._sessions) as session:
            unlocked = select(Job.id).where(Job.id == message.job_id).with_for_update(skip_locked=True)
            self.claimable[message.job_id] = session.scalar(unlocked) is not None
        if message.job_id in self._failing:
            raise ConnectionError("the broker is away")
        self._real.send(message)


def test_a_sweep_sends_with_no_row_locked_and_a_failed_send_stays_overdue(
    sessions: SessionFactory, dispatcher: Dispatcher, settings: Settings, key_prefix: str
) -> None:
    """While a sweep sends, no job row is locked (a claim would wait for it); a job whose send failed
    is as overdue as before and is sent by the next sweep."""
    drain(key_prefix, QUEUE)
    sent, failed = (unsent_job(sessions, age=timedelta(minutes=10)) for _ in range(2))
    watching = _Watching(dispatcher, sessions, failing={failed.id})
    assert sweep_once(sessions, watching, settings).resent == 1
    assert watching.claimable == {sent.id: True, failed.id: True}, "a job's row was locked while it was sent"
    assert waiting_job_ids(key_prefix, QUEUE) == [str(sent.id)]
    with session_scope(sessions) as session:
        assert get_job(session, failed.id).dispatch_count == 1, "a failed send was counted"
    assert sweep_once(sessions, dispatcher, settings).resent == 1
    assert waiting_job_ids(key_prefix, QUEUE) == [str(sent.id), str(failed.id)]
