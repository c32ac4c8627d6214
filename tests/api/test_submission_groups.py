"""api/submission_groups.py: a tenant's submissions that reach a process while it records one of theirs
are recorded together next, in one transaction; each request still gets its own job or its own error;
and a tenant held up never holds up another."""

import asyncio
from collections.abc import Callable
from uuid import uuid4

import pytest
from sqlalchemy import Connection, Engine, select, text

from api.submission_groups import SubmissionGroups
from jobs.db import session_scope
from jobs.errors import UnknownImage
from jobs.models import Job
from jobs.schemas import JOB_CREATE_ADAPTER, JobCreateBase
from jobs.submission import Submission
from tests.support.auth import OTHER_TENANT, TENANT
from tests.support.jobs import caption_of, jobs_of, stored_image

pytestmark = pytest.mark.usefixtures("empty_tables")
PATIENCE_S = 60  # for a loaded machine: how long the first submission may take to reach its lock


def waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as connection:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        return bool(connection.scalar(text(query)))


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(PATIENCE_S * 100):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the first submission never waited for its tenant's counter")


def hold_tenant_counter(connection: Connection, tenant: str) -> None:
    """Lock the tenant's queue counter until this transaction ends: the tenant's next job's INSERT
    (its trigger counts in that row) waits for it."""
    upsert = (
        "INSERT INTO tenant_queues AS counted (tenant, unfinished) VALUES (:t, 0)"
        " ON CONFLICT (tenant) DO UPDATE SET unfinished = counted.unfinished"
    )
    connection.execute(text(upsert), {"t": tenant})


def submit_while_one_is_recorded(
    ctx: Submission, engine: Engine, requests: list[JobCreateBase], *, cancel: int | None = None
) -> tuple[Job, list[object]]:
    """Submit `requests` of TENANT while its first submission is held up at its INSERT, then let it go;
    the first job, and what each of the others got (`cancel`: that one's client goes away before then)."""
    first_request = caption_of(stored_image(ctx, TENANT))
    groups = SubmissionGroups(ctx)

    async def run() -> tuple[Job, list[object]]:
        with engine.connect() as blocker:
            hold_tenant_counter(blocker, TENANT)
            first = asyncio.create_task(groups.submit(TENANT, first_request, None))
            await until(lambda: waiting_on_a_lock(engine))
            rest = [asyncio.create_task(groups.submit(TENANT, request, None)) for request in requests]
            await asyncio.sleep(0)  # each joins the waiting submissions
            if cancel is not None:
                rest[cancel].cancel()
            blocker.rollback()
            first_job, _ = await first
            return first_job, await asyncio.gather(*rest, return_exceptions=True)

    return asyncio.run(run())


def test_submissions_arriving_during_one_are_recorded_together_next(ctx: Submission, engine: Engine) -> None:
    image = stored_image(ctx, TENANT)
    first, outcomes = submit_while_one_is_recorded(ctx, engine, [caption_of(image)] * 4, cancel=3)
    assert isinstance(outcomes[3], asyncio.CancelledError), outcomes[3]  # its client went away: its job stands
    answered = outcomes[:3]
    assert all(job.id == public.id and job.tenant == TENANT for job, public in answered)  # type: ignore[attr-defined]
    jobs = [job for job in jobs_of(ctx.sessions, TENANT) if job.id != first.id]
    assert {job.id for job, _ in answered} < {job.id for job in jobs} and len(jobs) == 4  # type: ignore[attr-defined]
    assert len({job.created_at for job in jobs}) == 1, "the four were not recorded in one transaction"
    assert first.created_at not in {job.created_at for job in jobs}, "the first did not go alone"


def test_each_of_a_group_gets_its_own_error_or_its_job(ctx: Submission, engine: Engine) -> None:
    image = stored_image(ctx, TENANT)
    requests = [caption_of(image), caption_of(uuid4()), caption_of(image)]  # the second names no image
    first, outcomes = submit_while_one_is_recorded(ctx, engine, requests)
    assert isinstance(outcomes[1], UnknownImage), outcomes[1]
    created = {job.id for job, _ in (outcomes[0], outcomes[2])}  # type: ignore[misc]
    assert {job.id for job in jobs_of(ctx.sessions, TENANT)} == created | {first.id} and len(created) == 2


def test_a_tenant_held_up_holds_up_no_other(ctx: Submission, engine: Engine) -> None:
    """While TENANT's submission waits for a lock of its own tenant's, another tenant's is recorded."""
    mine, theirs = caption_of(stored_image(ctx, TENANT)), caption_of(stored_image(ctx, OTHER_TENANT))
    groups = SubmissionGroups(ctx)

    async def run() -> tuple[Job, Job]:
        with engine.connect() as blocker:
            hold_tenant_counter(blocker, TENANT)
            held = asyncio.create_task(groups.submit(TENANT, mine, None))
            await until(lambda: waiting_on_a_lock(engine))
            other, _ = await asyncio.wait_for(groups.submit(OTHER_TENANT, theirs, None), PATIENCE_S)
            assert not held.done()
            blocker.rollback()
            return (await held)[0], other

    held_job, other_job = asyncio.run(run())
    assert (held_job.tenant, other_job.tenant) == (TENANT, OTHER_TENANT)


def test_a_submission_that_fetches_goes_alone_and_keeps_its_error(ctx: Submission) -> None:
    """An image_url is fetched before its transaction: never in a group. Its own error reaches its
    request (the address is refused before anything is fetched)."""
    groups = SubmissionGroups(ctx)
    fetched = JOB_CREATE_ADAPTER.validate_python(
        {"kind": "caption", "input": {"image_url": "http://127.0.0.1:9/a.png"}}
    )
    with pytest.raises(Exception) as refused:
        asyncio.run(groups.submit(TENANT, fetched, None))
    assert getattr(refused.value, "code", None), refused.value
    with session_scope(ctx.sessions) as session:
        assert session.scalar(select(Job.id)) is None
