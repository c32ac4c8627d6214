"""Job state transitions and listing, against a real Postgres."""

from datetime import timedelta
from uuid import uuid4

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from jobs.db import SessionFactory, session_scope
from jobs.errors import InvalidCursor, JobNotCancelable, JobNotFound
from jobs.kinds import JobKind
from jobs.models import Attempt, Job
from jobs.repository import (
    NewJob,
    Outcome,
    add_job,
    add_jobs,
    cancel_job,
    claim_job,
    claim_jobs,
    fail_job,
    get_job,
    heartbeat,
    list_jobs,
    mark_dispatched,
    report_progress,
    requeue_lost_jobs,
    succeed_job,
    succeed_jobs,
    take_overdue_queued_jobs,
    unmark_dispatched,
)
from jobs.status import JobStatus
from jobs.webhooks import set_default_url
from tests.support.auth import OTHER_TENANT, TENANT
from tests.support.db import statements

pytestmark = pytest.mark.usefixtures("empty_tables")


def new_job(sessions: SessionFactory, kind: JobKind = JobKind.CAPTION) -> Job:
    with session_scope(sessions) as session:
        return add_job(
            session, tenant=TENANT, kind=kind, model="tiny-opt", queue="infer.tiny-opt", input={"image_id": "x"}
        )


def claimed(session: Session, job: Job) -> Attempt:
    """Claim the job for its next run; that run's attempt."""
    run = claim_job(session, job.id)
    assert run is not None, "the job was not queued"
    return run.attempt


def test_a_job_is_claimed_once(sessions: SessionFactory) -> None:
    job = new_job(sessions)
    with session_scope(sessions) as session:
        claimed = claim_job(session, job.id)
        assert claimed is not None and claimed.status is JobStatus.RUNNING and claimed.attempts == 1
    with session_scope(sessions) as session:
        assert claim_job(session, job.id) is None  # a second delivery finds it running


def test_a_finished_job_is_never_run_or_overwritten(sessions: SessionFactory) -> None:
    job = new_job(sessions)
    with session_scope(sessions) as session:
        run = claimed(session, job)
        assert succeed_job(session, run, {"captions": ["first"]}) is not None
    with session_scope(sessions) as session:
        assert claim_job(session, job.id) is None
        assert succeed_job(session, run, {"captions": ["second"]}) is None
        assert fail_job(session, run, "boom", "late failure") is None
        assert get_job(session, job.id).result == {"captions": ["first"]}


def test_a_run_that_lost_its_job_cannot_write_over_the_next_run(sessions: SessionFactory) -> None:
    """The attempt token: a worker frozen past its lease finds its job re-run, and its late writes match nothing."""
    job = new_job(sessions)
    with session_scope(sessions) as session:
        first = claimed(session, job)
        session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=Job.heartbeat_at - timedelta(hours=1)))
        assert [j.id for j in requeue_lost_jobs(session, lease=timedelta(minutes=1), max_attempts=3)] == [job.id]
        second = claimed(session, job)
        assert second.number == first.number + 1
    with session_scope(sessions) as session:
        assert heartbeat(session, [first]) == []
        assert not report_progress(session, first, 0.9, {"step": 9})
        assert succeed_job(session, first, {"captions": ["stale"]}, worker_seconds=9.0) is None
        assert fail_job(session, first, "late", "a late failure", worker_seconds=9.0) is None
        assert succeed_job(session, second, {"captions": ["fresh"]}, worker_seconds=2.0) is not None
        assert succeed_job(session, second, {"captions": ["again"]}, worker_seconds=2.0) is None
        done = get_job(session, job.id)
        assert done.result == {"captions": ["fresh"]}
        assert done.worker_seconds == 2.0, "usage was counted for a run that lost its job, or twice"


def test_cancel_queued_then_not_again(sessions: SessionFactory) -> None:
    job = new_job(sessions)
    with session_scope(sessions) as session:
        assert cancel_job(session, job.id, TENANT).status is JobStatus.CANCELED
    with session_scope(sessions) as session:
        assert claim_job(session, job.id) is None
        with pytest.raises(JobNotCancelable):
            cancel_job(session, job.id, TENANT)
        with pytest.raises(JobNotFound):
            cancel_job(session, uuid4(), TENANT)


def test_a_canceled_running_job_keeps_no_result(sessions: SessionFactory) -> None:
    job = new_job(sessions)
    with session_scope(sessions) as session:
        run = claimed(session, job)
        cancel_job(session, job.id, TENANT)
        assert succeed_job(session, run, {"captions": ["late"]}) is None


def test_list_newest_first_with_cursor_and_filters(sessions: SessionFactory) -> None:
    made = [new_job(sessions, kind=JobKind.VQA if i % 2 else JobKind.CAPTION) for i in range(5)]
    with session_scope(sessions) as session:
        first = list_jobs(session, tenant=TENANT, limit=2)
        second = list_jobs(session, tenant=TENANT, limit=2, cursor=first.next_cursor)
        third = list_jobs(session, tenant=TENANT, limit=2, cursor=second.next_cursor)
        vqa = list_jobs(session, tenant=TENANT, limit=10, kind=JobKind.VQA)
        queued = list_jobs(session, tenant=TENANT, limit=10, status=JobStatus.SUCCEEDED)
    seen = [j.id for page in (first, second, third) for j in page.jobs]
    assert seen == [j.id for j in reversed(made)]
    assert third.next_cursor is None
    assert {j.id for j in vqa.jobs} == {made[1].id, made[3].id}
    assert queued.jobs == []


def test_bad_cursor(sessions: SessionFactory) -> None:
    with session_scope(sessions) as session, pytest.raises(InvalidCursor):
        list_jobs(session, tenant=TENANT, limit=2, cursor="not-a-cursor")


def test_overdue_queued_jobs_back_off(sessions: SessionFactory) -> None:
    job = new_job(sessions)
    with session_scope(sessions) as session:
        session.execute(
            update(Job).where(Job.id == job.id).values(dispatched_at=Job.dispatched_at - timedelta(minutes=5))
        )
        [taken] = take_overdue_queued_jobs(session, after=timedelta(minutes=1), limit=10)
        assert (taken.message.job_id, taken.message.queue, taken.dispatch_count) == (job.id, job.queue, 1)
    with session_scope(sessions) as session:
        assert take_overdue_queued_jobs(session, after=timedelta(minutes=1), limit=10) == []
        assert session.get_one(Job, job.id).dispatch_count == 2


def test_a_job_whose_resend_failed_is_overdue_again_and_a_taken_one_is_not_locked(sessions: SessionFactory) -> None:
    """Taking overdue jobs marks them sent and leaves no lock once committed (a claim need not wait
    for them); a failed send gives the job its marks back, so the next sweep takes it again."""
    job = new_job(sessions)
    with session_scope(sessions) as session:
        session.execute(
            update(Job).where(Job.id == job.id).values(dispatched_at=Job.dispatched_at - timedelta(minutes=5))
        )
        before = session.get_one(Job, job.id).dispatched_at
    with session_scope(sessions) as session:
        [taken] = take_overdue_queued_jobs(session, after=timedelta(minutes=1), limit=10)
    with session_scope(sessions) as session:
        unlocked = select(Job.id).where(Job.id == job.id).with_for_update(skip_locked=True)
        assert session.scalars(unlocked).all() == [job.id], "a taken job stayed locked"
        unmark_dispatched(session, taken)
    with session_scope(sessions) as session:
        row = session.get_one(Job, job.id)
        assert (row.dispatched_at, row.dispatch_count) == (before, 1)
        [again] = take_overdue_queued_jobs(session, after=timedelta(minutes=1), limit=10)
        assert again.message.job_id == job.id


def test_a_sweeps_marks_never_wait_for_a_row_another_transaction_holds(sessions: SessionFactory) -> None:
    """While a claim holds a job's row, a sweep marking it sent (or giving its marks back) leaves it
    alone instead of waiting: a sweep waiting there, holding other rows the claim waits for, would
    deadlock with it. The job the claim does not hold is marked."""
    held, free = new_job(sessions), new_job(sessions)
    with session_scope(sessions) as claim:
        claim.execute(select(Job.id).where(Job.id == held.id).with_for_update())
        with session_scope(sessions) as sweep:
            sweep.execute(text("SET LOCAL lock_timeout = '1ms'"))  # any wait at all fails the statement
            mark_dispatched(sweep, [held.id, free.id])
    with sessions() as session:
        counts = {job_id: session.get_one(Job, job_id).dispatch_count for job_id in (held.id, free.id)}
    assert counts == {held.id: 1, free.id: 2}
    with session_scope(sessions) as session:
        session.execute(update(Job).values(dispatched_at=Job.dispatched_at - timedelta(minutes=5)))
        taken = take_overdue_queued_jobs(session, after=timedelta(minutes=1), limit=10)
    with session_scope(sessions) as claim:
        claim.execute(select(Job.id).where(Job.id == held.id).with_for_update())
        with session_scope(sessions) as sweep:
            sweep.execute(text("SET LOCAL lock_timeout = '1ms'"))
            for overdue in taken:
                unmark_dispatched(sweep, overdue)
    with sessions() as session:
        counts = {job_id: session.get_one(Job, job_id).dispatch_count for job_id in (held.id, free.id)}
    assert counts == {held.id: 2, free.id: 2}, "the held job's marks were given back, or the free one's were not"


def test_claiming_leaves_out_a_job_moved_to_another_queue(sessions: SessionFactory) -> None:
    """A sweep may move a job off a dead trained model's queue between a claim's read and its UPDATE."""
    stays, moves = new_job(sessions), new_job(sessions)
    with session_scope(sessions) as session:
        session.execute(update(Job).where(Job.id == moves.id).values(queue="infer.elsewhere"))
        taken = claim_jobs(session, "infer.tiny-opt", [stays.id, moves.id], "batch")
    assert [job.id for job in taken] == [stays.id]


def test_a_job_with_a_fresh_heartbeat_is_not_lost(sessions: SessionFactory) -> None:
    job = new_job(sessions)
    with session_scope(sessions) as session:
        run = claimed(session, job)
        # Started long ago (a long training run), but its worker keeps beating.
        session.execute(update(Job).where(Job.id == job.id).values(started_at=Job.started_at - timedelta(hours=5)))
        assert heartbeat(session, [run]) == [run]
        assert requeue_lost_jobs(session, lease=timedelta(minutes=1), max_attempts=2) == []
        assert report_progress(session, run, 0.5, {"step": 5})
        assert get_job(session, job.id).progress_detail == {"step": 5}
        cancel_job(session, job.id, TENANT)
        assert heartbeat(session, [run]) == []  # a canceled job's worker learns it must stop
        assert not report_progress(session, run, 0.6, {"step": 6})


def test_lost_running_jobs_are_queued_again_then_failed(sessions: SessionFactory) -> None:
    job = new_job(sessions)
    for attempt in (1, 2):
        with session_scope(sessions) as session:
            claim_job(session, job.id)
            silent = Job.heartbeat_at - timedelta(minutes=5)  # no heartbeat for five minutes
            session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=silent))
            requeued = requeue_lost_jobs(session, lease=timedelta(minutes=1), max_attempts=2)
            assert len(requeued) == (1 if attempt == 1 else 0)
            assert get_job(session, job.id).status is (JobStatus.QUEUED if attempt == 1 else JobStatus.FAILED)
    with session_scope(sessions) as session:
        assert get_job(session, job.id).error_code == "worker_lost"


def test_a_batch_records_every_result_that_is_still_its_own_in_one_statement(sessions: SessionFactory) -> None:
    jobs = [new_job(sessions) for _ in range(4)]
    with session_scope(sessions) as session:
        attempts = [claimed(session, job) for job in jobs]
    with session_scope(sessions) as session:
        cancel_job(session, jobs[1].id, TENANT)  # canceled while it ran
    lost = Attempt(jobs[2].id, attempts[2].number + 1)  # a run that no longer holds its job
    outcomes = {
        attempts[0]: Outcome({"captions": ["a cat — «naïve» 🐈"], "scores": [[0.5, -1e-9]]}, 0.25),
        attempts[1]: Outcome({"captions": ["canceled"]}, 0.25),
        lost: Outcome({"captions": ["stale"]}, 0.25),
        attempts[3]: Outcome({"captions": []}, None),
    }
    with session_scope(sessions) as session:
        written = succeed_jobs(session, outcomes)
    assert sorted(job.id for job in written) == sorted([jobs[0].id, jobs[3].id])
    with session_scope(sessions) as session:
        first, canceled, running, last = (get_job(session, job.id, TENANT) for job in jobs)
        assert (first.status, first.result, first.worker_seconds, first.progress) == (
            JobStatus.SUCCEEDED, {"captions": ["a cat — «naïve» 🐈"], "scores": [[0.5, -1e-9]]}, 0.25, 1.0
        )  # fmt: skip
        assert (last.status, last.result, last.worker_seconds) == (JobStatus.SUCCEEDED, {"captions": []}, None)
        assert (canceled.status, canceled.result) == (JobStatus.CANCELED, None)
        assert (running.status, running.result) == (JobStatus.RUNNING, None)


def test_jobs_are_added_in_the_order_given_by_one_insert_per_shape(sessions: SessionFactory) -> None:
    with session_scope(sessions) as session:
        set_default_url(session, TENANT, "https://example.com/default")
    try:
        _jobs_of_every_shape_added_in_order(sessions)
    finally:  # the tenant is every test's: later ones must not find a default
        with session_scope(sessions) as session:
            set_default_url(session, TENANT, None)


def _jobs_of_every_shape_added_in_order(sessions: SessionFactory) -> None:
    queued = {"kind": JobKind.CAPTION, "model": "tiny-opt", "queue": "infer.tiny-opt", "input": {"image_id": "x"}}
    new = [
        NewJob(TENANT, **queued, tenants_webhook=True),
        NewJob(TENANT, **queued, cached_result={"captions": ["kept"]}, cache_key="k"),
        NewJob(OTHER_TENANT, **queued, tenants_webhook=True),  # no default of its own
        NewJob(TENANT, **queued, webhook_url="https://example.com/own"),
        NewJob(TENANT, **queued, tenants_webhook=True),
        NewJob(TENANT, **queued),
    ]
    with session_scope(sessions) as session, statements(session) as sent:
        added = add_jobs(session, new)
    inserts = [s for s in sent if s.startswith("INSERT INTO jobs")]
    assert len(inserts) == 5, sent  # the two of the first shape together
    assert [job.tenant for job in added] == [n.tenant for n in new]
    assert [job.webhook_url for job in added] == [
        "https://example.com/default", None, None, "https://example.com/own", "https://example.com/default", None
    ]  # fmt: skip
    assert len({job.id for job in added}) == len(new)
    with session_scope(sessions) as session:
        stored = [get_job(session, job.id) for job in added]
    answered = stored.pop(1)
    assert (answered.status, answered.result, answered.cached, answered.dispatched_at) == (
        JobStatus.SUCCEEDED, {"captions": ["kept"]}, True, None
    )  # fmt: skip
    assert answered.started_at == answered.finished_at == answered.created_at
    assert all(job.status is JobStatus.QUEUED and job.dispatched_at == job.created_at for job in stored)
    assert all(job.dispatch_count == 1 and job.started_at is None for job in stored)
