"""Submitting jobs: the row is committed, then one message carrying only its id is sent."""

import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from blip2.errors import InvalidImage, ModelNotFound
from jobs.db import SessionFactory, create_db_engine, create_session_factory, session_scope
from jobs.errors import BatchTooLarge, IdempotencyKeyReused, TenantQueueFull, UnknownImage
from jobs.image_store import store_image
from jobs.models import Image, Job
from jobs.repository import claim_job, count_unfinished_jobs, succeed_job
from jobs.schemas import JOB_CREATE_ADAPTER, JobCreateBase
from jobs.status import JobStatus
from jobs.submission import Submission, submit_job
from jobs.webhooks import set_default_url
from tests.support.auth import TENANT
from tests.support.broker import drain, waiting_job_ids
from tests.support.db import statements
from tests.support.file_server import serving_files
from tests.support.images import png_base64
from worker.db_retry import retry_transaction

pytestmark = pytest.mark.usefixtures("empty_tables")
QUEUE = "infer.tiny-opt"


def caption_request(**overrides: object):  # type: ignore[no-untyped-def]
    return JOB_CREATE_ADAPTER.validate_python({"kind": "caption", "input": {"image": png_base64()}} | overrides)


def count(sessions: SessionFactory, table: type[Job] | type[Image]) -> int:
    with session_scope(sessions) as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def test_row_committed_and_id_sent(ctx: Submission, key_prefix: str) -> None:
    submitted = submit_job(ctx, TENANT, caption_request())
    job = submitted.job
    assert submitted.created and job.status is JobStatus.QUEUED
    assert (job.model, job.queue, job.dispatch_count) == ("tiny-opt", QUEUE, 1)
    assert "image" not in job.input and job.input["image_id"]  # the inline image was stored
    assert waiting_job_ids(key_prefix, QUEUE) == [str(job.id)]
    with session_scope(ctx.sessions) as session:
        assert session.get_one(Job, job.id).dispatch_count == 1


def test_idempotency_key_returns_the_same_job(ctx: Submission, key_prefix: str) -> None:
    first = submit_job(ctx, TENANT, caption_request(), idempotency_key="k-1")
    again = submit_job(ctx, TENANT, caption_request(), idempotency_key="k-1")
    assert (again.job.id, again.created) == (first.job.id, False)
    assert waiting_job_ids(key_prefix, QUEUE) == [str(first.job.id)]
    with pytest.raises(IdempotencyKeyReused):
        submit_job(ctx, TENANT, caption_request(model="tiny-t5"), idempotency_key="k-1")
    assert count(ctx.sessions, Job) == 1


def test_rejected_requests_leave_no_rows(ctx: Submission) -> None:
    not_png = base64.b64encode(b"not an image").decode()
    with pytest.raises(ModelNotFound):
        submit_job(ctx, TENANT, caption_request(model="no-such-model"))
    with pytest.raises(InvalidImage) as invalid:
        submit_job(ctx, TENANT, caption_request(input={"image": not_png}))
    assert invalid.value.field == "input.image"
    with pytest.raises(UnknownImage):
        submit_job(ctx, TENANT, caption_request(input={"image_id": "00000000-0000-0000-0000-000000000000"}))
    many = JOB_CREATE_ADAPTER.validate_python(
        {"kind": "match", "model": "tiny-itm", "input": {"image": png_base64(), "texts": ["a"] * 1000}}
    )
    with pytest.raises(BatchTooLarge):
        submit_job(ctx, TENANT, many)
    assert count(ctx.sessions, Job) == count(ctx.sessions, Image) == 0


def test_a_replayed_key_with_an_image_url_fetches_nothing(ctx: Submission) -> None:
    """The replay is found before any fetch: the first request fetched the image once, the replay
    gets the first job and the server sees no second request."""
    with serving_files() as server:
        url = server.serve("/cat.png", base64.b64decode(png_base64()))
        request = JOB_CREATE_ADAPTER.validate_python({"kind": "caption", "input": {"image_url": url}})
        first = submit_job(ctx, TENANT, request, idempotency_key="url-1")
        again = submit_job(ctx, TENANT, request, idempotency_key="url-1")
        fetched = [path for path, _ in server.requests]
    assert (again.job.id, again.created) == (first.job.id, False)
    assert fetched == ["/cat.png"], "the replay fetched the URL again"


def test_the_tenant_limit_is_exact_under_concurrent_submissions(ctx: Submission, key_prefix: str) -> None:
    """Sixteen submissions at once against a limit of five: exactly five are accepted, whatever the
    interleaving (the insert's trigger counts in one row per tenant, locked by each insert in turn)."""
    shallow = ctx.settings.model_copy(update={"MAX_UNFINISHED_JOBS_PER_TENANT": 5})
    engine = create_db_engine(shallow)
    limited = Submission(create_session_factory(engine), ctx.dispatcher, ctx.registry, shallow)
    barrier = threading.Barrier(16)

    def submit_one() -> str:
        barrier.wait()
        try:
            submit_job(limited, "concurrent", caption_request())
        except TenantQueueFull:
            return "full"
        return "accepted"

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            outcomes = list(pool.map(lambda _: submit_one(), range(16)))
    finally:
        engine.dispose()
    assert sorted(outcomes).count("accepted") == 5 and outcomes.count("full") == 11
    with session_scope(ctx.sessions) as session:
        rows = session.scalar(select(func.count()).select_from(Job).where(Job.tenant == "concurrent"))
    assert rows == 5
    drain(key_prefix, QUEUE)


def test_a_write_frozen_in_its_transaction_holds_up_the_tenant_only_until_postgres_ends_it(
    ctx: Submission, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker frozen (a paused VM, SIGSTOP) between recording a result and committing it holds the
    tenant's counter row, which every submission of that tenant locks. Postgres ends the frozen
    session after DB_IDLE_IN_TRANSACTION_TIMEOUT_S, so the submission goes on while the writer is
    still frozen; the writer's commit, once it thaws, fails as a lost connection and is retried."""
    tenant = "frozen-mid-write"
    frozen = ctx.settings.model_copy(update={"DB_IDLE_IN_TRANSACTION_TIMEOUT_S": 1.0})
    engine = create_db_engine(frozen)
    job = submit_job(ctx, tenant, caption_request(cache=False)).job
    with session_scope(ctx.sessions) as session:
        claimed = claim_job(session, job.id)
    assert claimed is not None
    recorded, submitted = threading.Event(), threading.Event()
    tries = []

    def record_the_result(session: Session) -> Job | None:
        tries.append(len(tries) + 1)
        finished = succeed_job(session, claimed.attempt, {"captions": ["a red square"]})
        if len(tries) == 1:
            recorded.set()
            submitted.wait(timeout=120)  # frozen until the submission it holds up gets through
        return finished

    def submit_another() -> Job:
        assert recorded.wait(timeout=120)
        another = submit_job(ctx, tenant, caption_request(cache=False)).job
        submitted.set()
        return another

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            writing = pool.submit(
                retry_transaction, create_session_factory(engine), record_the_result, what="recording", limit_s=60
            )
            another = pool.submit(submit_another).result(timeout=180)
            finished = writing.result(timeout=180)
    finally:
        engine.dispose()
    assert tries == [1, 2], "the frozen write was not retried on a new connection"
    assert finished is not None and finished.status is JobStatus.SUCCEEDED
    assert "recording: database unreachable" in caplog.text
    with session_scope(ctx.sessions) as session:
        assert session.get_one(Job, job.id).result == {"captions": ["a red square"]}
        assert session.get_one(Job, another.id).status is JobStatus.QUEUED
        assert count_unfinished_jobs(session, tenant) == 1
    drain(key_prefix, QUEUE)


def test_a_job_takes_the_tenant_default_webhook_in_its_insert(ctx: Submission, key_prefix: str) -> None:
    """A job that names no webhook gets its tenant's default as the default is when it is inserted,
    read by the INSERT itself; one that names its own keeps it. A submission by `image_id` of a known
    image is one statement and its commit."""
    with session_scope(ctx.sessions) as session:
        image_id = store_image(session, TENANT, base64.b64decode(png_base64()), ctx.settings).id
    by_id = caption_request(input={"image_id": str(image_id)}, cache=False)
    assert submit_job(ctx, TENANT, by_id).job.webhook_url is None
    try:
        _the_default_as_each_job_is_inserted(ctx, by_id)
    finally:  # the tenant is every test's: later ones must not find a default
        with session_scope(ctx.sessions) as session:
            set_default_url(session, TENANT, None)
    drain(key_prefix, QUEUE)


def _the_default_as_each_job_is_inserted(ctx: Submission, by_id: JobCreateBase) -> None:
    with session_scope(ctx.sessions) as session:
        set_default_url(session, TENANT, "https://hooks.example/first")
    with ctx.sessions() as session, statements(session) as sent:
        job = submit_job(ctx, TENANT, by_id, session=session).job
    assert job.webhook_url == "https://hooks.example/first"
    assert [s.split()[0] for s in sent] == ["INSERT"], sent
    with session_scope(ctx.sessions) as session:
        set_default_url(session, TENANT, "https://hooks.example/second")
    own = by_id.model_copy(update={"webhook_url": "http://127.0.0.1:9/own"})
    allowed = ctx.settings.model_copy(update={"FETCH_ALLOWED_HOSTS": "127.0.0.1"})
    own_job = submit_job(replace(ctx, settings=allowed), TENANT, own).job
    later = submit_job(ctx, TENANT, by_id).job
    with session_scope(ctx.sessions) as session:
        ids = [job.id, own_job.id, later.id]
        stored = {j.id: j.webhook_url for j in session.scalars(select(Job).where(Job.id.in_(ids)))}
    assert stored == {
        job.id: "https://hooks.example/first",
        own_job.id: "http://127.0.0.1:9/own",
        later.id: "https://hooks.example/second",
    }
    assert (own_job.webhook_url, later.webhook_url) == ("http://127.0.0.1:9/own", "https://hooks.example/second")


@pytest.mark.parametrize(
    ("kind", "job_input", "model"),
    [
        ("caption", {}, "tiny-opt"),
        ("embed", {"mode": "image"}, "tiny-opt"),
        ("embed", {"mode": "text", "text": "a red circle"}, "tiny-itm"),
        ("embed", {"mode": "multimodal", "text": "a red circle"}, "tiny-itm"),
        ("match", {"texts": ["a red circle", "a blue square"]}, "tiny-itm"),
    ],
)
def test_a_job_naming_no_model_gets_one_that_can_run_it(
    ctx: Submission, key_prefix: str, kind: str, job_input: dict[str, object], model: str
) -> None:
    """BLIP2_DEFAULT_MODEL generates; what only a retrieval model can run takes BLIP2_DEFAULT_MATCH_MODEL
    (before, a match job naming no model was refused: the default could not match)."""
    settings = ctx.settings.model_copy(update={"BLIP2_DEFAULT_MATCH_MODEL": "tiny-itm"})
    assert settings.BLIP2_DEFAULT_MODEL == "tiny-opt"
    image = {} if job_input.get("mode") == "text" else {"image": png_base64()}
    request = JOB_CREATE_ADAPTER.validate_python({"kind": kind, "input": image | job_input})
    job = submit_job(replace(ctx, settings=settings), TENANT, request).job
    assert (job.model, job.queue) == (model, f"infer.{model}")
    drain(key_prefix, job.queue)
