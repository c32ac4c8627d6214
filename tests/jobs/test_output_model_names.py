"""A training job's `output_model` is taken from its submission on: while a training job of that name
is queued or running, another of its tenant's is refused with model_name_taken however it arrives
(alone, in a batch, in a group commit, at the same moment as the first), and the name is free again
once the first ends without registering it.

Before, only a registered name was refused: both jobs were accepted, and the second's model replaced
the first's files."""

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import delete, text

from jobs.db import SessionFactory, session_scope
from jobs.errors import ModelNameTaken
from jobs.kinds import JobKind
from jobs.models import Dataset
from jobs.repository import cancel_job
from jobs.schemas import JOB_CREATE_ADAPTER, JobCreateBase
from jobs.settings import Settings
from jobs.status import JobStatus
from jobs.submission import BatchItem, Refused, Submission, Submitted, submit_batch, submit_job, submit_together
from tests.jobs.test_migrations import upgraded_with_rows
from tests.support.auth import OTHER_TENANT, TENANT
from tests.support.broker import drain
from tests.support.jobs import caption_of, jobs_of, stored_image
from tests.support.services import temporary_database

DATASET = "names-shapes"


@pytest.fixture(autouse=True)
def dataset(sessions: SessionFactory, key_prefix: str, empty_tables: None) -> Iterator[None]:
    """A dataset of each tenant to train on (only its row: no worker runs here), added once the tables
    are emptied (that truncates datasets too); the queues emptied after."""
    with session_scope(sessions) as session:
        for tenant in (TENANT, OTHER_TENANT):
            session.merge(Dataset(tenant=tenant, name=DATASET, format="shapes", path="/nowhere", tasks=["caption"],
                                  splits={"train": 1}, source="test"))  # fmt: skip
    yield
    with session_scope(sessions) as session:
        session.execute(delete(Dataset).where(Dataset.name == DATASET))
    for queue in ("train", "infer.tiny-opt"):
        drain(key_prefix, queue)


def train(output_model: str, **extra: Any) -> JobCreateBase:
    body = {"kind": "train", "model": "tiny-opt", "input": {"dataset": DATASET, "output_model": output_model} | extra}
    return JOB_CREATE_ADAPTER.validate_python(body)


def assert_taken(error: object, name: str) -> None:
    """The refusal a name being trained gets: 409 model_name_taken on input.output_model, naming it."""
    assert isinstance(error, ModelNameTaken), f"a second training job of {name!r} was not refused: {error!r}"
    assert error.field == "input.output_model" and repr(name) in str(error), (error.field, str(error))


def unfinished_names(sessions: SessionFactory, tenant: str) -> list[str]:
    """The output_model of each of the tenant's queued or running training jobs."""
    jobs = jobs_of(sessions, tenant)
    return sorted(job.input["output_model"] for job in jobs if job.kind is JobKind.TRAIN and not job.status.is_terminal)


def test_a_name_being_trained_is_refused_until_its_job_ends(ctx: Submission) -> None:
    first = submit_job(ctx, TENANT, train("mine")).job
    with pytest.raises(ModelNameTaken) as refused:
        submit_job(ctx, TENANT, train("mine", max_steps=5, seed=7))  # other settings: the name is what counts
    assert_taken(refused.value, "mine")
    assert unfinished_names(ctx.sessions, TENANT) == ["mine"], "the refused job left a row"
    # Another name, or another tenant's job of the same name, is no conflict.
    assert submit_job(ctx, TENANT, train("yours")).created
    assert submit_job(ctx, OTHER_TENANT, train("mine")).created
    # Once the first job has ended (canceled here) without registering the name, it is free again.
    with session_scope(ctx.sessions) as session:
        assert cancel_job(session, first.id, TENANT).status is JobStatus.CANCELED
    assert submit_job(ctx, TENANT, train("mine")).created


def test_a_batch_refuses_its_second_job_of_a_name_and_keeps_the_others(ctx: Submission) -> None:
    submit_job(ctx, TENANT, train("queued-before"))
    image_id = stored_image(ctx, TENANT)
    items = [train("twice"), caption_of(image_id), train("twice"), train("queued-before"), train("once")]
    with ctx.sessions() as session:
        outcomes = submit_batch(ctx, TENANT, [BatchItem(request) for request in items], session=session)
    accepted = [isinstance(outcome, Submitted) for outcome in outcomes]
    assert accepted == [True, True, False, False, True], outcomes
    for outcome, name in ((outcomes[2], "twice"), (outcomes[3], "queued-before")):
        assert isinstance(outcome, Refused)
        assert_taken(outcome.error, name)
    assert unfinished_names(ctx.sessions, TENANT) == ["once", "queued-before", "twice"]


def test_a_group_commit_refuses_its_second_job_of_a_name_and_keeps_the_others(ctx: Submission) -> None:
    image_id = stored_image(ctx, TENANT)
    items = [(TENANT, BatchItem(train("grouped"))), (TENANT, BatchItem(caption_of(image_id))),
             (TENANT, BatchItem(train("grouped"))), (OTHER_TENANT, BatchItem(train("grouped")))]  # fmt: skip
    with ctx.sessions() as session:
        outcomes = submit_together(ctx, items, session=session)
    assert [isinstance(outcome, Submitted) for outcome in outcomes] == [True, True, False, True], outcomes
    assert_taken(outcomes[2], "grouped")
    assert unfinished_names(ctx.sessions, TENANT) == ["grouped"]
    assert unfinished_names(ctx.sessions, OTHER_TENANT) == ["grouped"]


def test_of_submissions_at_the_same_moment_exactly_one_takes_the_name(ctx: Submission) -> None:
    """Eight submissions of one name at once, each in a transaction of its own: whatever the
    interleaving, one is accepted and seven refused (a read before the insert would let several through)."""
    barrier = threading.Barrier(8)

    def submit_one(_: int) -> Submitted | Exception:
        barrier.wait()
        try:
            return submit_job(ctx, TENANT, train("raced"))
        except ModelNameTaken as exc:
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(submit_one, range(8)))
    assert sum(isinstance(outcome, Submitted) for outcome in outcomes) == 1, outcomes
    for outcome in outcomes:
        if not isinstance(outcome, Submitted):
            assert_taken(outcome, "raced")
    assert unfinished_names(ctx.sessions, TENANT) == ["raced"]


def test_jobs_that_shared_a_name_before_the_migration_keep_one() -> None:
    """Rows the old code accepted: per tenant and name, the running job (else the oldest queued one)
    stays; the others fail model_name_taken, and the index then holds."""
    insert = (
        "INSERT INTO jobs (id, tenant, kind, model, queue, status, input, attempts, dispatch_count, priority, cached,"
        " created_at) VALUES (gen_random_uuid(), '{tenant}', 'train', 'tiny-opt', 'train', '{status}',"
        " '{{\"output_model\": \"{name}\"}}', 0, 1, 'interactive', false, now() + interval '{order} seconds')"
    )
    rows = [("t", "queued", "a", 0), ("t", "running", "a", 1), ("t", "queued", "a", 2),  # the running one stays
            ("t", "queued", "b", 0), ("t", "queued", "b", 1),  # the oldest stays
            ("t", "succeeded", "c", 0), ("t", "queued", "c", 1),  # a finished job takes no name
            ("u", "queued", "a", 0)]  # another tenant's  # fmt: skip
    statements = [insert.format(tenant=t, status=s, name=n, order=o) for t, s, n, o in rows]
    with temporary_database() as url:
        database = Settings(_env_file=None, DATABASE_URL=url)  # type: ignore[call-arg]
        with upgraded_with_rows(database, "0008", *statements) as connection:
            query = "SELECT tenant, input ->> 'output_model', status, error_code FROM jobs ORDER BY 1, 2, created_at"
            found = connection.execute(text(query)).all()
            assert found == [
                ("t", "a", "failed", "model_name_taken"),
                ("t", "a", "running", None),
                ("t", "a", "failed", "model_name_taken"),
                ("t", "b", "queued", None),
                ("t", "b", "failed", "model_name_taken"),
                ("t", "c", "succeeded", None),
                ("t", "c", "queued", None),
                ("u", "a", "queued", None),
            ]
            with pytest.raises(Exception, match="uq_jobs_training_output_model"):
                connection.execute(text(statements[-1]))  # a second unfinished "a" of tenant u
