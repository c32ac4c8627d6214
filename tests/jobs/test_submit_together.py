"""Single submissions that arrive together share one transaction (`submit_together`), and each still
gets exactly the outcome it would have had alone: its job, or its own error."""

import base64
from uuid import uuid4

import pytest
from sqlalchemy import func, select

from jobs.db import create_db_engine, create_session_factory, session_scope
from jobs.errors import IdempotencyKeyReused, TenantQueueFull, UnknownImage
from jobs.models import Job
from jobs.schemas import JOB_CREATE_ADAPTER
from jobs.submission import BatchItem, Submission, Submitted, can_go_together, submit_together
from tests.support.auth import OTHER_TENANT, TENANT
from tests.support.broker import waiting_job_ids
from tests.support.db import statements
from tests.support.images import png_bytes
from tests.support.jobs import caption_of, jobs_of, stored_image

pytestmark = pytest.mark.usefixtures("empty_tables")
QUEUE = "infer.tiny-opt"


def together(ctx: Submission, items: list[tuple[str, BatchItem]]) -> list[Submitted | Exception]:
    """The outcomes, their jobs read while the session is open (a job submitted before one that failed
    was expired by that one's rollback: it is read again)."""
    with ctx.sessions() as session:
        outcomes = submit_together(ctx, items, session=session)
        jobs = {id(o.job): o.job for o in outcomes if isinstance(o, Submitted)}  # a replay's is its first's
        for job in jobs.values():
            session.refresh(job)
            session.expunge(job)
        return outcomes


def test_jobs_submitted_together_share_one_transaction_and_each_is_sent(ctx: Submission, key_prefix: str) -> None:
    mine, theirs = stored_image(ctx, TENANT), stored_image(ctx, OTHER_TENANT)
    items = [(TENANT, BatchItem(caption_of(mine))), (OTHER_TENANT, BatchItem(caption_of(theirs))),
             (TENANT, BatchItem(caption_of(mine, priority="batch")))]  # fmt: skip
    outcomes = together(ctx, items)
    assert all(isinstance(o, Submitted) and o.created for o in outcomes), outcomes
    jobs = [o.job for o in outcomes if isinstance(o, Submitted)]
    assert [job.tenant for job in jobs] == [TENANT, OTHER_TENANT, TENANT]
    assert len({job.created_at for job in jobs}) == 1, "not one transaction: their now() differs"
    assert sorted(waiting_job_ids(key_prefix, QUEUE)) == sorted(str(job.id) for job in jobs)


def test_a_group_writes_its_rows_in_one_insert_but_for_a_key_used_again(ctx: Submission) -> None:
    image_id = stored_image(ctx, TENANT)
    plain = [(TENANT, BatchItem(caption_of(image_id))) for _ in range(5)]
    with ctx.sessions() as session, statements(session) as sent:
        outcomes = submit_together(ctx, plain, session=session)
    assert all(isinstance(o, Submitted) and o.created for o in outcomes), outcomes
    assert sum(s.startswith("INSERT INTO jobs") for s in sent) == 1, sent
    keyed = [
        plain[0],
        (TENANT, BatchItem(caption_of(image_id), "k-2")),
        plain[1],
        (TENANT, BatchItem(caption_of(image_id), "k-2")),
    ]
    with ctx.sessions() as session, statements(session) as sent:
        first, once, second, again = submit_together(ctx, keyed, session=session)
    assert all(isinstance(o, Submitted) for o in (first, once, second, again)), (first, once, second, again)
    assert (first.created, once.created, second.created, again.created) == (True, True, True, False)
    assert again.job.id == once.job.id
    # the job before the key is written before the key is looked up: the key's second use finds its job
    assert sum(s.startswith("INSERT INTO jobs") for s in sent) == 3, sent
    assert len(jobs_of(ctx.sessions, TENANT)) == 5 + 3


def test_a_refused_job_gets_its_own_error_and_the_others_are_kept(ctx: Submission, key_prefix: str) -> None:
    image_id = stored_image(ctx, TENANT)
    unknown = caption_of(uuid4())
    outcomes = together(ctx, [(TENANT, BatchItem(caption_of(image_id))), (TENANT, BatchItem(unknown)),
                              (TENANT, BatchItem(caption_of(image_id)))])  # fmt: skip
    assert isinstance(outcomes[0], Submitted) and isinstance(outcomes[2], Submitted)
    assert isinstance(outcomes[1], UnknownImage), outcomes[1]
    kept = {job.id for job in jobs_of(ctx.sessions, TENANT)}
    assert kept == {outcomes[0].job.id, outcomes[2].job.id}
    assert sorted(waiting_job_ids(key_prefix, QUEUE)) == sorted(str(job_id) for job_id in kept)


def test_the_tenant_limit_refuses_only_the_jobs_over_it(ctx: Submission, key_prefix: str) -> None:
    shallow = ctx.settings.model_copy(update={"MAX_UNFINISHED_JOBS_PER_TENANT": 2})
    engine = create_db_engine(shallow)
    try:
        limited = Submission(create_session_factory(engine), ctx.dispatcher, ctx.registry, shallow)
        image_id = stored_image(ctx, TENANT)
        outcomes = together(limited, [(TENANT, BatchItem(caption_of(image_id))) for _ in range(4)])
    finally:
        engine.dispose()
    assert [type(o) for o in outcomes] == [Submitted, Submitted, TenantQueueFull, TenantQueueFull], outcomes
    assert len(jobs_of(ctx.sessions, TENANT)) == 2
    assert len(waiting_job_ids(key_prefix, QUEUE)) == 2


def test_one_idempotency_key_twice_in_a_group_is_one_job(ctx: Submission, key_prefix: str) -> None:
    image_id = stored_image(ctx, TENANT)
    same = caption_of(image_id)
    outcomes = together(ctx, [(TENANT, BatchItem(same, "k-1")), (TENANT, BatchItem(same, "k-1")),
                              (TENANT, BatchItem(caption_of(image_id, priority="batch"), "k-1"))])  # fmt: skip
    first, again, reused = outcomes
    assert isinstance(first, Submitted) and isinstance(again, Submitted), outcomes
    assert (first.created, again.created, again.job.id) == (True, False, first.job.id)
    assert isinstance(reused, IdempotencyKeyReused), reused
    assert [job.id for job in jobs_of(ctx.sessions, TENANT)] == [first.job.id]
    assert waiting_job_ids(key_prefix, QUEUE) == [str(first.job.id)]


def test_one_job_alone_is_submitted_as_submit_job_does(ctx: Submission, key_prefix: str) -> None:
    (outcome,) = together(ctx, [(TENANT, BatchItem(caption_of(stored_image(ctx, TENANT))))])
    assert isinstance(outcome, Submitted) and outcome.created
    assert waiting_job_ids(key_prefix, QUEUE) == [str(outcome.job.id)]
    with session_scope(ctx.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_what_fetches_resolves_or_decodes_first_goes_alone() -> None:
    image_id = uuid4()
    inline = base64.b64encode(png_bytes()).decode()
    assert can_go_together(caption_of(image_id))
    assert can_go_together(caption_of(image_id, priority="batch"))
    assert not can_go_together(caption_of(image_id, webhook_url="https://example.com/hook"))
    assert not can_go_together(JOB_CREATE_ADAPTER.validate_python({"kind": "caption", "input": {"image": inline}}))
    fetched = {"kind": "caption", "input": {"image_url": "https://example.com/a.png"}}
    assert not can_go_together(JOB_CREATE_ADAPTER.validate_python(fetched))
