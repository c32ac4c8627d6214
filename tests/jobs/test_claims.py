"""The claim decides which queued jobs run next: tenants in weighted fair share, interactive before
batch priority (until a batch job has waited too long), oldest first within a tenant, batches filled
in the same fair order; claims on one queue at once never take a job twice; and a job a sweep or a
cancel holds for a moment is waited for, not passed over."""

import threading
from datetime import timedelta
from uuid import UUID

import pytest
from sqlalchemy import Engine, text, update

from jobs.claims import BatchRules, claim_batch, claim_more
from jobs.db import SessionFactory, session_scope
from jobs.fair_share import set_tenant_weight
from jobs.kinds import JobKind
from jobs.models import Job
from jobs.repository import NewJob, add_job, add_jobs, cancel_job, take_overdue_queued_jobs
from jobs.status import JobStatus, Priority
from tests.support.waiting import wait_until

QUEUE = "infer.claims-test"
KEY = "same-options"
ONE_AT_A_TIME = BatchRules(batch_size=1, cost=lambda job: 1)


@pytest.fixture(autouse=True)
def empty_queue(engine: Engine, empty_tables: None) -> None:
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE tenants"))


def queue_jobs(
    sessions: SessionFactory, tenant: str, count: int, priority: Priority = Priority.INTERACTIVE
) -> list[UUID]:
    """`count` queued jobs of `tenant` that may share a batch, committed one by one (oldest first)."""
    ids = []
    for _ in range(count):
        with session_scope(sessions) as session:
            job = add_job(session, tenant=tenant, kind=JobKind.CAPTION, model="m", queue=QUEUE, input={},
                          batch_key=KEY, priority=priority)  # fmt: skip
            ids.append(job.id)
    return ids


def claim(sessions: SessionFactory, rules: BatchRules = ONE_AT_A_TIME) -> list[Job]:
    with session_scope(sessions) as session:
        return claim_batch(session, QUEUE, "batch", rules)


def claim_tenants(sessions: SessionFactory, claims: int, rules: BatchRules = ONE_AT_A_TIME) -> list[str]:
    """The tenants of the jobs the next `claims` claims take, in the order taken."""
    return [job.tenant for _ in range(claims) for job in claim(sessions, rules)]


def test_a_tenant_arriving_behind_a_backlog_takes_turns_with_it(sessions: SessionFactory) -> None:
    """One job per claim: the tenant with the oldest head does not always win; the two alternate."""
    queue_jobs(sessions, "a", 30)
    queue_jobs(sessions, "b", 5)
    order = claim_tenants(sessions, 12)
    assert order[:10] == ["a", "b"] * 5, f"tenants did not take turns: {order}"
    assert order[10:] == ["a", "a"], "a was not served alone once b had nothing queued"


def test_an_idle_tenant_earns_no_burst_of_credit(sessions: SessionFactory) -> None:
    queue_jobs(sessions, "a", 40)
    queue_jobs(sessions, "b", 1)
    assert "b" in claim_tenants(sessions, 2)
    assert claim_tenants(sessions, 15) == ["a"] * 15  # b idle meanwhile
    queue_jobs(sessions, "b", 10)
    order = claim_tenants(sessions, 10)
    assert order == ["b", "a"] * 5, f"b, back from idling, was not lifted to the queue's time: {order}"


def test_weights_share_the_queue_in_proportion(sessions: SessionFactory) -> None:
    with session_scope(sessions) as session:
        set_tenant_weight(session, "a", 3)
    queue_jobs(sessions, "a", 40)
    queue_jobs(sessions, "b", 40)
    order = claim_tenants(sessions, 40)
    assert 29 <= order.count("a") <= 31, f"weight 3 against 1 should take 3 of 4 claims: {order}"


def test_a_batch_is_filled_in_fair_order(sessions: SessionFactory) -> None:
    queue_jobs(sessions, "a", 20)
    queue_jobs(sessions, "b", 3)
    batch = claim(sessions, BatchRules(batch_size=8, cost=lambda job: 1))
    assert [job.tenant for job in batch] == ["a", "b", "a", "b", "a", "b", "a", "a"]
    assert {job.status for job in batch} == {JobStatus.RUNNING}


def test_rows_are_charged_not_jobs(sessions: SessionFactory) -> None:
    """A tenant whose jobs take 4 rows each (4 beams) gets a quarter as many jobs as one whose jobs take one."""
    wide = queue_jobs(sessions, "wide", 10)
    queue_jobs(sessions, "narrow", 20)
    rules = BatchRules(batch_size=1, cost=lambda job: 4 if job.id in wide else 1)
    order = claim_tenants(sessions, 10, rules)
    assert order.count("wide") == 2, f"4-row jobs should get 2 of 10 claims: {order}"


def test_batch_priority_waits_while_interactive_jobs_wait(sessions: SessionFactory) -> None:
    bulk = queue_jobs(sessions, "a", 4, Priority.BATCH)
    urgent = queue_jobs(sessions, "a", 2) + queue_jobs(sessions, "b", 2)
    first = [job.id for _ in range(4) for job in claim(sessions)]
    assert set(first) == set(urgent), "a batch job ran while interactive jobs waited"
    rest = [job.id for _ in range(4) for job in claim(sessions)]
    assert rest == bulk


def test_a_batch_is_one_priority_class(sessions: SessionFactory) -> None:
    queue_jobs(sessions, "a", 3, Priority.BATCH)
    urgent = queue_jobs(sessions, "a", 2)
    batch = claim(sessions, BatchRules(batch_size=8, cost=lambda job: 1))
    assert [job.id for job in batch] == urgent


def test_a_batch_job_past_its_wait_counts_as_interactive(sessions: SessionFactory) -> None:
    [old] = queue_jobs(sessions, "a", 1, Priority.BATCH)
    with session_scope(sessions) as session:
        session.execute(update(Job).where(Job.id == old).values(created_at=Job.created_at - timedelta(minutes=2)))
    queue_jobs(sessions, "a", 3)
    rules = BatchRules(batch_size=1, cost=lambda job: 1, batch_max_wait=timedelta(minutes=1))
    assert [job.id for job in claim(sessions, rules)] == [old], "a batch job past its wait was starved"


def test_a_job_run_again_runs_alone(sessions: SessionFactory) -> None:
    ids = queue_jobs(sessions, "a", 4)
    with session_scope(sessions) as session:
        session.execute(update(Job).where(Job.id == ids[0]).values(attempts=1))
    assert [job.id for job in claim(sessions, BatchRules(batch_size=8, cost=lambda job: 1))] == [ids[0]]


def test_jobs_written_together_run_in_the_order_given(sessions: SessionFactory) -> None:
    """One INSERT (a group of submissions, a `:batch`): one created_at, and still oldest first."""
    with session_scope(sessions) as session:
        jobs = [NewJob(tenant="a", kind=JobKind.CAPTION, model="m", queue=QUEUE, input={"n": n}, batch_key=KEY)
                for n in range(16)]  # fmt: skip
        written = [job.id for job in add_jobs(session, jobs)]
    assert [job.id for _ in range(10) for job in claim(sessions)] == written[:10]
    assert [job.id for job in claim(sessions, BatchRules(batch_size=4, cost=lambda job: 1))] == written[10:14]


def test_claiming_more_keeps_the_fair_order(sessions: SessionFactory) -> None:
    queue_jobs(sessions, "a", 10)
    rules = BatchRules(batch_size=2, cost=lambda job: 1)
    assert [job.tenant for job in claim(sessions, rules)] == ["a", "a"]
    queue_jobs(sessions, "b", 3)
    with session_scope(sessions) as session:
        more = claim_more(session, QUEUE, KEY, "batch", 4, rules)
    assert [job.tenant for job in more] == ["b", "a", "b", "a"]


def test_concurrent_claims_take_each_job_once(sessions: SessionFactory) -> None:
    """Four claimers on one queue at once: every job claimed exactly once, none left, none deadlocked."""
    queued = set(queue_jobs(sessions, "a", 40) + queue_jobs(sessions, "b", 40) + queue_jobs(sessions, "c", 20))
    claimed: list[list[UUID]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def claimer(mine: list[UUID]) -> None:
        try:
            while batch := claim(sessions, BatchRules(batch_size=3, cost=lambda job: 1)):
                mine.extend(job.id for job in batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(mine,)) for mine in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    every = [job_id for mine in claimed for job_id in mine]
    assert len(every) == len(set(every)), "a job was claimed twice"
    assert set(every) == queued, "a queued job was never claimed"


def claim_in_the_background(sessions: SessionFactory) -> tuple[threading.Thread, list[list[Job]]]:
    """A claim running in a thread of its own, and where its claimed jobs will be."""
    result: list[list[Job]] = []
    thread = threading.Thread(target=lambda: result.append(claim(sessions)))
    thread.start()
    return thread, result


def waits_for_a_row(engine: Engine) -> bool:
    """Whether a claim's UPDATE is waiting for a row lock (by Postgres's own account, not a clock)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE 'UPDATE jobs%'"
    )
    with engine.connect() as connection:
        return bool(connection.scalar(query))


def test_a_job_a_sweep_holds_is_waited_for_not_skipped(sessions: SessionFactory, engine: Engine) -> None:
    """A sweep re-sending a's oldest job holds its row for a moment. The claim then waits for it: it
    used to pass over locked rows, so b took a's turn (and a, looking idle, lost its place)."""
    a = queue_jobs(sessions, "a", 2)
    queue_jobs(sessions, "b", 2)
    with session_scope(sessions) as sweep:
        taken = take_overdue_queued_jobs(sweep, after=timedelta(0), limit=1)
        assert [job.message.job_id for job in taken] == [a[0]]
        thread, result = claim_in_the_background(sessions)
        wait_until(lambda: waits_for_a_row(engine) or not thread.is_alive(), "the claim waits or ends")
    thread.join(timeout=60)
    assert [job.id for job in result[0]] == [a[0]], "the claim passed over the job the sweep held"


def test_a_job_canceled_while_the_claim_waited_is_left_out_and_not_charged(
    sessions: SessionFactory, engine: Engine
) -> None:
    """The claim chose a's job and waited for its row; the cancel holding it committed. The claim
    takes nothing, charges nobody, and the next claims keep the fair order (a, then b)."""
    a = queue_jobs(sessions, "a", 2)
    b = queue_jobs(sessions, "b", 2)
    with session_scope(sessions) as cancel:
        cancel_job(cancel, a[0], "a")
        thread, result = claim_in_the_background(sessions)
        wait_until(lambda: waits_for_a_row(engine) or not thread.is_alive(), "the claim waits or ends")
    thread.join(timeout=60)
    assert result == [[]], "a job canceled before its claim committed was claimed"
    assert [job.id for _ in range(3) for job in claim(sessions)] == [a[1], b[0], b[1]]


def test_claims_keep_the_weighted_order_while_sweeps_run_without_pause(sessions: SessionFactory) -> None:
    """A sweep re-sending overdue jobs over and over (a long backlog) locks the oldest rows again and
    again: every claim still takes a job, and the weighted order is exact (it used to be 11 of 28)."""
    with session_scope(sessions) as session:
        set_tenant_weight(session, "a", 3)
    queue_jobs(sessions, "a", 60)
    queue_jobs(sessions, "b", 60)
    stop = threading.Event()
    sweeps: list[int] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            while not stop.is_set():
                with session_scope(sessions) as session:
                    sweeps.append(len(take_overdue_queued_jobs(session, after=timedelta(0), limit=100)))
        except BaseException as exc:
            errors.append(exc)

    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    try:
        order = claim_tenants(sessions, 40)
    finally:
        stop.set()
        sweeper.join(timeout=60)
    assert not errors, errors
    assert any(sweeps), "the sweep took no job: it could not have held any"
    assert len(order) == 40, f"{40 - len(order)} of 40 claims took nothing with 120 jobs queued"
    assert order == ["a", "b", "a", "a"] * 10, f"weight 3 against 1 lost its order: {order}"
