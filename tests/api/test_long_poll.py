"""api/long_poll.py: the reads of jobs whose waiters woke together go to Postgres as one statement,
and each waiter still gets its own job, or JobNotFound (an unknown job, another tenant's)."""

import asyncio
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from api.long_poll import JobReads
from jobs.db import SessionFactory, create_db_engine, create_session_factory, session_scope
from jobs.errors import JobNotFound
from jobs.kinds import JobKind
from jobs.models import Job
from jobs.repository import add_job
from jobs.settings import Settings
from tests.support.auth import OTHER_TENANT, TENANT

pytestmark = pytest.mark.usefixtures("empty_tables")


def new_job(sessions: SessionFactory, tenant: str = TENANT) -> UUID:
    with session_scope(sessions) as session:
        kwargs: dict[str, Any] = {"kind": JobKind.CAPTION, "model": "tiny-opt", "queue": "infer.tiny-opt"}
        return add_job(session, tenant=tenant, input={"image_id": "x"}, **kwargs).id


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every statement the engine sends while the test runs."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


def test_waiters_woken_together_read_their_jobs_in_one_statement(
    sessions: SessionFactory, statements: list[str]
) -> None:
    ids = [new_job(sessions) for _ in range(12)]
    reads = JobReads(sessions)

    async def run() -> list[Job]:
        return await asyncio.gather(*(reads.read(job_id, TENANT) for job_id in [*ids, ids[0]]))

    statements.clear()
    jobs = asyncio.run(run())
    assert [job.id for job in jobs] == [*ids, ids[0]]
    assert all(job.tenant == TENANT and job.webhook_delivery is None for job in jobs)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1, statements


def test_an_unknown_job_or_another_tenants_is_not_found_by_its_own_waiter_only(sessions: SessionFactory) -> None:
    mine, theirs, unknown = new_job(sessions), new_job(sessions, OTHER_TENANT), uuid4()
    reads = JobReads(sessions)

    async def run() -> list[Job | BaseException]:
        asked = [(mine, TENANT), (theirs, TENANT), (unknown, TENANT), (theirs, OTHER_TENANT), (mine, OTHER_TENANT)]
        return await asyncio.gather(*(reads.read(job_id, tenant) for job_id, tenant in asked), return_exceptions=True)

    found = asyncio.run(run())
    assert [type(outcome) for outcome in found] == [Job, JobNotFound, JobNotFound, Job, JobNotFound]
    assert [outcome.id for outcome in found if isinstance(outcome, Job)] == [mine, theirs]
    assert str(found[1]) == f"no job with id {theirs}"


def test_a_waiter_that_goes_away_leaves_the_others_their_answer(sessions: SessionFactory) -> None:
    ids = [new_job(sessions) for _ in range(3)]
    reads = JobReads(sessions)

    async def run() -> list[UUID]:
        waiters = [asyncio.create_task(reads.read(job_id, TENANT)) for job_id in ids]
        await asyncio.sleep(0)  # all three have asked
        waiters[1].cancel()  # as when its client disconnects
        return [job.id for job in await asyncio.gather(waiters[0], waiters[2])]

    assert asyncio.run(run()) == [ids[0], ids[2]]


def test_when_postgres_cannot_be_reached_every_waiter_hears_why(settings: Settings, sessions: SessionFactory) -> None:
    ids = [new_job(sessions) for _ in range(2)]
    unreachable = settings.model_copy(update={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    reads = JobReads(create_session_factory(create_db_engine(unreachable)))

    async def run() -> list[Job | BaseException]:
        return await asyncio.gather(*(reads.read(job_id, TENANT) for job_id in ids), return_exceptions=True)

    failed = asyncio.run(run())
    assert len(failed) == 2
    assert all(isinstance(outcome, OperationalError) for outcome in failed), failed


def test_a_read_left_behind_by_an_event_loop_that_ended_holds_up_no_later_one(sessions: SessionFactory) -> None:
    job_id = new_job(sessions)
    reads = JobReads(sessions)

    async def abandoned() -> None:  # its loop ends before the read it started could run
        asyncio.get_running_loop().create_task(reads.read(job_id, TENANT))
        await asyncio.sleep(0)  # the waiter has asked, and its read is scheduled

    asyncio.run(abandoned())

    async def later() -> Job:
        return await asyncio.wait_for(reads.read(job_id, TENANT), timeout=60)  # a hang guard, not a deadline

    assert asyncio.run(later()).id == job_id
